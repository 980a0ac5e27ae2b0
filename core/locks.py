"""Per-process OS file locks that say who holds them: one run of a run id, one index build per work folder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from casereview.errors import CaseReviewError


class LockBusyError(CaseReviewError):
    """Another process holds the lock; the message says what the user can do instead."""


_HELD: dict[Path, IO[str]] = {}  # locks this process holds (a process may take its own lock again)


def hold_lock(path: Path, busy: str) -> Path:
    """Hold the lock file ``path`` for the rest of this process, or raise :class:`LockBusyError` with the
    message ``busy`` (``{holder}`` filled in with the holder, e.g. ``process 4242``).

    An OS file lock (``flock``): released when the holding process ends, even by ``kill -9``, so a
    crashed holder never blocks the next one."""
    path = Path(path)
    if path in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise LockBusyError(busy.format(holder=holder)) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"process {os.getpid()}")
    fh.flush()
    _HELD[path] = fh
    return path
