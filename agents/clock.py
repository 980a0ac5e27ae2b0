"""The wall time of one graph run, for the record's ``provenance.graph_total_s``."""

from __future__ import annotations

import time
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig


class GraphClock(BaseCallbackHandler):
    """Starts with the graph run it is a callback of (its outermost chain); the node that saves the
    record reads it (:meth:`of`), so the record holds the run's time up to its save."""

    def __init__(self) -> None:
        self.start: float | None = None

    def on_chain_start(self, serialized: Any, inputs: Any, *, parent_run_id: Any = None, **kwargs: Any) -> None:
        if parent_run_id is None and self.start is None:
            self.start = time.perf_counter()

    def elapsed(self) -> float | None:
        return None if self.start is None else round(time.perf_counter() - self.start, 4)

    @staticmethod
    def of(config: RunnableConfig) -> "GraphClock | None":
        """The clock among a node's callbacks (None: the caller runs none, e.g. LangGraph's server)."""
        callbacks = config.get("callbacks")
        handlers = getattr(callbacks, "handlers", callbacks) or []
        return next((h for h in handlers if isinstance(h, GraphClock)), None)
