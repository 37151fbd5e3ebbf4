r"""The host, in one place: the CPUs of this job, atomic file writes and the terminal's progress bar.

No torch or numpy import, so command lines can use it before they set thread variables.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_json(d / "a.json", {"x": 1}).read_text()
'{\n  "x": 1\n}\n'
>>> cpu_allocation() >= 1
True
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

#: Marker in the names of temporary files of :func:`atomic_write_bytes` (stale ones, left by a
#: killed process, are recognised by it and removed).
TMP_MARK = ".l2s-tmp-"


def cpu_allocation() -> int:
    """CPUs allotted to this job: ``SLURM_CPUS_PER_TASK`` if set, else the affinity mask (at
    least 1)."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def temp_path(dest: Path) -> Path:
    """A new empty temporary file beside ``dest`` (``.<name>.l2s-tmp-`` and a random suffix)."""
    fd, name = tempfile.mkstemp(prefix=f".{Path(dest).name}{TMP_MARK}", dir=Path(dest).parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(dest, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``dest`` through a temporary file in the same folder and
    ``os.replace`` (readers see the old file or the new one, never a part); the folder is
    created. ``fsync``: flush to disk before the rename (files that must survive a crash)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def atomic_write_text(dest, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(dest, text.encode("utf-8"))


def write_json(dest, obj, *, allow_nan: bool = True) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy scalars as floats); ``allow_nan=False``
    refuses NaN and infinities (strict JSON)."""
    return atomic_write_text(dest, json.dumps(obj, indent=2, allow_nan=allow_nan, default=float) + "\n")


def terminal_bar(total: int, *, stream=None, **tqdm_kwargs):
    """A tqdm progress bar of ``total`` steps on ``stream`` (default stderr), for a terminal.

    It follows the terminal's size. A terminal that reports no size (0 x 0: some
    pseudo-terminals, e.g. ``script`` or a container's tty before its first resize) would get an
    invisible bar from tqdm (it hides bars below the last of 0 rows); it gets ``$COLUMNS`` x
    ``$LINES``, else 80 x 24, instead.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = terminal_bar(3, stream=out, desc="demo")
    >>> bar.update(3); bar.close()
    >>> "demo: 100%" in out.getvalue() and "3/3" in out.getvalue()
    True
    """
    import sys

    from tqdm import tqdm

    stream = stream or sys.stderr
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    if size.columns > 0 and size.lines > 0:
        return tqdm(total=total, file=stream, dynamic_ncols=True, **tqdm_kwargs)
    return tqdm(total=total, file=stream, ncols=_positive_env("COLUMNS", 80), nrows=_positive_env("LINES", 24),
                **tqdm_kwargs)


def _positive_env(name: str, default: int) -> int:
    """The positive integer in environment variable ``name``, else ``default``."""
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default
