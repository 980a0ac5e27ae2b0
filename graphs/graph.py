"""The case-review graph, one for every front end:

    load_case -> (input refused: end) -> classify -> check_input -> (blank: triage) -> retrieve
    -> compose_prompt -> report -> verify -> (contradiction and attempts left: compose_prompt with the
    stricter variant) -> triage -> finalize -> save_record -> (waits for a reviewer: sign_off -> save_record)

``graph`` is the compiled graph: ``langgraph.json`` names it for LangGraph's server (which brings its
own checkpointer), and the CLI, batch and notebook run it with a checkpointer of theirs
(:func:`with_checkpointer`, the same compiled nodes and edges). Every caller passes a
:class:`RunContext` of serialisable values (a served caller: at most a run id and a reviewer); the
nodes take the models from the process's cache. The input schema takes a case and nothing else; the
output is the record, or why the input was refused.
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from casereview.agents import nodes
from casereview.graphs.checkpoints import SERDE, make_checkpointer, sqlite_checkpointer  # noqa: F401 (where callers take them)
from casereview.schemas import CaseState, ReviewInput, ReviewOutput
from casereview.tools.context import RunContext

NODE_ORDER = ("load_case", "classify", "check_input", "retrieve", "compose_prompt", "report", "verify", "triage",
              "finalize", "save_record", "sign_off")


def build_graph(checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    """The review graph; pause it per call with ``invoke(..., interrupt_before=[...])`` (needs a checkpointer)."""
    g = StateGraph(CaseState, context_schema=RunContext, input_schema=ReviewInput, output_schema=ReviewOutput)
    for name in NODE_ORDER:
        g.add_node(name, getattr(nodes, name))
    g.add_edge(START, "load_case")
    g.add_conditional_edges("load_case", nodes.route_after_load, ["classify", END])
    g.add_edge("classify", "check_input")
    g.add_conditional_edges("check_input", nodes.route_after_check, ["retrieve", "triage"])
    for a, b in zip(NODE_ORDER[3:6], NODE_ORDER[4:7]):  # retrieve -> compose_prompt -> report -> verify
        g.add_edge(a, b)
    g.add_conditional_edges("verify", nodes.route_after_verify, ["compose_prompt", "triage"])
    g.add_edge("triage", "finalize")
    g.add_edge("finalize", "save_record")
    g.add_conditional_edges("save_record", nodes.route_after_save, ["sign_off", END])
    g.add_edge("sign_off", "save_record")
    return g.compile(checkpointer=checkpointer)


def thread_config(run_id: str, case_ref: str) -> dict[str, Any]:
    """One checkpoint thread per (run, case): a run can be resumed case by case."""
    return {"configurable": {"thread_id": f"{run_id}/{case_ref}"}}


graph = build_graph()


def reopen_for_sign_off(graph: CompiledStateGraph, config: dict[str, Any]) -> None:
    """Make a finished case wait for a reviewer again (its next decision gives ``amended`` or
    ``entered-in-error``): the next ``invoke(None, config, ...)`` pauses in sign_off. Over HTTP:
    ``threads.update_state(thread, {"awaiting_sign_off": True}, as_node="save_record")``."""
    graph.update_state(config, {"awaiting_sign_off": True}, as_node="save_record")


def with_checkpointer(checkpointer: BaseCheckpointSaver | None) -> CompiledStateGraph:
    """``graph`` with this checkpointer (a copy of the compiled graph sharing its nodes and edges)."""
    return graph.copy(update={"checkpointer": checkpointer})
