"""An exclusive lock between processes (several cluster jobs writing into one output folder)
that leaves no lock file behind.

``locked(path)`` holds ``fcntl.flock`` on ``path`` and removes the file before releasing it. A
process that waited on the old file finds, once it holds the lock, that the path no longer
names the file it locked (or names another one) and starts again, so two holders never overlap.

Example
-------
>>> with locked("/tmp/out/.dataset_description.json.lock"):  # doctest: +SKIP
...     ...  # read, merge and rewrite dataset_description.json
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from l2s_pipelines.errors import InputError

POLL_S = 0.05


@contextmanager
def locked(path, timeout: float = 120.0):
    """Hold an exclusive lock named by ``path`` (created, then removed on release). Raises
    :class:`InputError` naming the path when it cannot be had within ``timeout`` seconds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise InputError(f"{path}: still locked by another l2s-bids process after "
                                         f"{timeout:.0f} s") from exc
                    time.sleep(POLL_S)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed (or replaced) the file: lock the current one
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)
