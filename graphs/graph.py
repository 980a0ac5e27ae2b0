"""The case-review graph: load -> check_input -> (blank: finalize) -> classify -> retrieve -> compose_prompt
-> report -> verify -> (contradiction and attempts left: compose_prompt with the stricter variant) -> finalize.

``graph`` is the compiled graph that ``langgraph.json`` names (LangGraph's server brings its own
checkpointer, and the nodes then use the server process's context); the CLI, batch and notebook
compile the same wiring with their checkpointer and pass their own context.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from casereview.agents import nodes
from casereview.errors import CaseReviewError
from casereview.schemas import STATE_TYPES, CaseState
from casereview.tools.context import RunContext

NODE_ORDER = ("load_case", "check_input", "classify", "retrieve", "compose_prompt", "report", "verify", "finalize")


def build_graph(checkpointer: BaseCheckpointSaver | None = None, context_schema: type | None = RunContext) -> CompiledStateGraph:
    """The graph; pause it per call with ``invoke(..., interrupt_before=[...])`` (needs a checkpointer)."""
    g = StateGraph(CaseState, context_schema=context_schema)
    for name in NODE_ORDER:
        g.add_node(name, getattr(nodes, name))
    g.add_edge(START, "load_case")
    g.add_edge("load_case", "check_input")
    g.add_conditional_edges("check_input", nodes.route_after_check, ["classify", "finalize"])
    for a, b in zip(NODE_ORDER[2:6], NODE_ORDER[3:7]):  # classify -> retrieve -> ... -> verify
        g.add_edge(a, b)
    g.add_conditional_edges("verify", nodes.route_after_verify, ["compose_prompt", "finalize"])
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer)


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


def thread_config(run_id: str, case_ref: str) -> dict[str, Any]:
    """One checkpoint thread per (run, case): a run can be resumed case by case."""
    return {"configurable": {"thread_id": f"{run_id}/{case_ref}"}}


# For LangGraph's server: it passes a dict of the caller's values as the context (which cannot hold
# models), so this graph declares none and its nodes use the server process's own resources.
graph = build_graph(context_schema=None)
