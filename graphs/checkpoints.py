"""Checkpointers of review runs: the serializer that restores the state's records, SQLite on disk or memory.

Apart from the graph module so that reading paused cases (``sign-off list``) needs langgraph's
checkpoint package and the record types only, not the nodes and what they import.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from casereview.errors import CaseReviewError
from casereview.schemas import STATE_TYPES

# The state's records are restored from checkpoints by module and class name: these and no others.
SERDE = JsonPlusSerializer(allowed_msgpack_modules=[(t.__module__, t.__name__) for t in STATE_TYPES])


def sqlite_checkpointer(path: Path) -> BaseCheckpointSaver:
    """A SQLite checkpointer (runs can be inspected and resumed after the process ends)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # opened and set up here, before any case starts: a full or failing disk is one clear error
        connection = sqlite3.connect(str(path), check_same_thread=False)
        # Write-ahead log without an fsync per commit: a committed checkpoint survives the process being
        # killed (what resuming relies on), only an OS crash can lose the last ones; commits cost a
        # fraction of the rollback journal's, and a review commits one checkpoint per node.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        saver = SqliteSaver(connection, serde=SERDE)
        saver.setup()
    except sqlite3.Error as exc:  # SQLite says "disk I/O error" when a nearly full disk cannot take its files
        free = shutil.disk_usage(path.parent).free
        raise CaseReviewError(
            f"cannot open the run's checkpoints at {path} ({exc}; {free // 1024:,} KiB free on that disk): "
            "free space, or give a --workdir on another disk") from None
    return saver


def make_checkpointer(kind: str, path: Path | None = None) -> BaseCheckpointSaver | None:
    """``sqlite`` (at ``path``), ``memory`` or ``none``, each restoring the state's records (``SERDE``)."""
    return {"sqlite": lambda: sqlite_checkpointer(path), "memory": lambda: InMemorySaver(serde=SERDE),
            "none": lambda: None}[kind]()
