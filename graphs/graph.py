"""The case-review graph: load -> classify -> retrieve -> compose_prompt -> report -> verify
-> (contradiction and attempts left: compose_prompt with the stricter variant) -> finalize."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Sequence

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from casereview.agents import nodes
from casereview.graphs.context import ReviewContext
from casereview.graphs.state import CaseState

NODE_ORDER = ("load_case", "classify", "retrieve", "compose_prompt", "report", "verify", "finalize")


def build_graph(
    checkpointer: BaseCheckpointSaver | None = None, interrupt_before: Sequence[str] | None = None
) -> CompiledStateGraph:
    g = StateGraph(CaseState, context_schema=ReviewContext)
    g.add_node("load_case", nodes.load_case)
    g.add_node("classify", nodes.classify)
    g.add_node("retrieve", nodes.retrieve)
    g.add_node("compose_prompt", nodes.compose_prompt)
    g.add_node("report", nodes.report)
    g.add_node("verify", nodes.verify)
    g.add_node("finalize", nodes.finalize)
    g.add_edge(START, "load_case")
    g.add_edge("load_case", "classify")
    g.add_edge("classify", "retrieve")
    g.add_edge("retrieve", "compose_prompt")
    g.add_edge("compose_prompt", "report")
    g.add_edge("report", "verify")
    g.add_conditional_edges("verify", nodes.route_after_verify, ["compose_prompt", "finalize"])
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer, interrupt_before=list(interrupt_before or []))


def sqlite_checkpointer(path: Path) -> BaseCheckpointSaver:
    """A SQLite checkpointer (runs can be inspected and resumed after the process ends)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))


def make_checkpointer(kind: str, path: Path) -> BaseCheckpointSaver | None:
    return {"sqlite": lambda: sqlite_checkpointer(path), "memory": InMemorySaver, "none": lambda: None}[kind]()


def thread_config(run_id: str, case_ref: str) -> dict[str, Any]:
    """One checkpoint thread per (run, case): a run can be resumed case by case."""
    return {"configurable": {"thread_id": f"{run_id}/{case_ref}"}}
