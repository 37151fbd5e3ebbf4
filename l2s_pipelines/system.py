r"""The host, in one place: the CPUs of this job and atomic file writes.

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
