"""OS file locks that say who holds them: one process per run id (held until the process ends), one index
build per work folder (held while it builds)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def holding(path: Path, busy: str) -> Iterator[Path]:
    """:func:`hold_lock` for the duration of a block (a lock this process already holds stays held)."""
    path = Path(path)
    already = path in _HELD
    hold_lock(path, busy)
    try:
        yield path
    finally:
        if not already:
            fh = _HELD.pop(path)
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
