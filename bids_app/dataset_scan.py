"""A safe first pass over a dataset before pybids indexes it.

pybids follows symlinked folders (a symlink loop makes it walk forever), and a file name that is
not UTF-8 makes its index fail for the whole dataset. :func:`safe_indexer` walks the dataset
first, never following a symlink into a folder already on the way or seen, and returns a pybids
``BIDSLayoutIndexer`` that skips, with one warning each naming them:

- symlinks that close a loop (to a folder that contains them, or one already walked) and
  broken symlinks;
- special files (FIFOs, sockets, devices), which would block or make no sense when read;
- names that are not valid UTF-8 (named in the warning with their bytes escaped).

The indexer never reads JSON sidecars (``index_metadata=False``: the app uses only the
entities in file names), so neither their number nor their size costs time or memory; the one
JSON file pybids reads, ``dataset_description.json``, is bounded by :data:`MAX_DESCRIPTION_BYTES`.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

from l2s_pipelines.errors import InputError

LOG = logging.getLogger("l2s.queries")
#: Largest accepted ``dataset_description.json`` (bytes).
MAX_DESCRIPTION_BYTES = 1 << 20
#: Folders pybids never indexes at the top of a raw dataset (walked no further here either).
_PYBIDS_SKIPPED_TOP = ("code", "models", "sourcedata", "stimuli", "derivatives")


def printable(path: str | os.PathLike) -> str:
    """``path`` for a message: bytes that are not UTF-8 shown as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes arrive as surrogate escapes
        return False


def unsafe_entries(root: str | os.PathLike, *, skip_top=_PYBIDS_SKIPPED_TOP) -> list[tuple[Path, str]]:
    """``(path, reason)`` of every entry under ``root`` pybids must not index (see the module
    docstring). Hidden entries and the top-level folders ``skip_top`` are not walked (pybids
    skips them too). Symlinked folders are walked once, by their real path."""
    root = Path(root)
    found: list[tuple[Path, str]] = []
    seen = {os.path.realpath(root)}
    stack = [(root, (os.path.realpath(root),))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            found.append((folder, f"cannot be listed ({exc.strerror})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if not _utf8(entry.name):
                found.append((path, "name is not valid UTF-8"))
                continue
            if entry.name.startswith(".") or (folder == root and entry.name in skip_top):
                continue
            try:
                st = os.stat(path)  # follows symlinks
            except OSError:
                found.append((path, "broken symlink or unreadable entry"))
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(path)
                if entry.is_symlink() and (real in ancestors or real in seen):
                    found.append((path, "symlink loop (leads back to a folder already walked)"))
                    continue
                seen.add(real)
                stack.append((path, (*ancestors, real)))
            elif not stat.S_ISREG(st.st_mode):
                found.append((path, "special file (FIFO, socket or device), not a regular file"))
    return found


def safe_indexer(root: str | os.PathLike, *, validate: bool = True):
    """A pybids ``BIDSLayoutIndexer`` for ``root``: no sidecar metadata read, and the entries
    of :func:`unsafe_entries` ignored, each logged as a warning naming it. Raises
    :class:`InputError` for an oversized or irregular ``dataset_description.json``.
    ``validate``: pybids' BIDS validation of file names (off for derivative datasets)."""
    from bids.layout import BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    root = Path(root)
    desc = root / "dataset_description.json"
    if desc.exists() and (not desc.is_file() or desc.stat().st_size > MAX_DESCRIPTION_BYTES):
        raise InputError(f"{desc}: not a regular file of at most {MAX_DESCRIPTION_BYTES >> 20} MiB")
    ignore = list(DEFAULT_LOCATIONS_TO_IGNORE)
    for path, reason in unsafe_entries(root):
        LOG.warning("%s: skipped, %s", printable(path), reason)
        rel = "/" + path.relative_to(root).as_posix()
        ignore.append(re.compile("^" + re.escape(rel) + "(/|$)"))
    return BIDSLayoutIndexer(validate=validate, ignore=ignore, index_metadata=False)
