"""Graph nodes: each takes the state (and the run context) and returns a partial update.

Capabilities are called through the context's langchain-core tools; the decisions in
between (which variant, how many neighbours, what the verdict is) are plain functions.
"""

from __future__ import annotations

import time
from functools import wraps
from typing import Any, Callable

import numpy as np
from langgraph.runtime import Runtime

from casereview.agents.verify import verify_report
from casereview import data as cases
from casereview.graphs.context import ReviewContext
from casereview.graphs.state import CaseState
from casereview.provenance import package_versions, utc_now
from casereview.schemas import ClassifierOpinion, Neighbour
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.gather import neighbour_images
from casereview.tools.reporter.prompts import render_prompt

Node = Callable[[CaseState, Runtime[ReviewContext]], dict[str, Any]]


def timed(fn: Node) -> Node:
    """Record the node's wall time under ``timings[<node name>]`` (the last run on a retry)."""

    @wraps(fn)
    def wrapper(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
        start = time.perf_counter()
        update = fn(state, runtime)
        return update | {"timings": {fn.__name__: round(time.perf_counter() - start, 4)}}

    return wrapper


@timed
def load_case(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
    data = runtime.context.settings.data
    case = cases.load_case(state["case_ref"], data.root, data.download)
    return {"case_id": case.case_id, "image": case.image.tolist(), "ground_truth": case.label_name,
            "notes": list(case.notes), "attempts": 0}


@timed
def classify(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
    result = runtime.context.tool("classify_case").invoke({"case_ref": state["case_ref"]})
    return {"classifier": result, "needs_review": bool(result["uncertain"])}


@timed
def retrieve(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
    g = runtime.context.settings.graph
    k = g.k_uncertain if state["classifier"]["uncertain"] else g.k
    hits = runtime.context.tool("search_similar_cases").invoke(
        {"case_ref": state["case_ref"], "k": k, "case_base": g.case_base})
    return {"neighbours": hits}


def next_variant(state: CaseState, ctx: ReviewContext) -> str:
    """The configured variant first; the stricter one after a contradiction."""
    return ctx.settings.graph.strict_variant if state.get("attempts", 0) > 0 else ctx.settings.reporter.variant


def _evidence(state: CaseState, ctx: ReviewContext) -> Evidence:
    neighbours = tuple(Neighbour(**n) for n in state["neighbours"])
    opinion = ClassifierOpinion(**{k: v for k, v in state["classifier"].items() if k in ClassifierOpinion.model_fields})
    return Evidence(state["case_id"], np.asarray(state["image"], dtype=np.uint8), opinion, neighbours,
                    neighbour_images(neighbours, ctx.settings.data.root))


@timed
def compose_prompt(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
    # Rendered here so the prompt can be inspected before the model runs (--step, the notebook);
    # the write_report tool renders the same deterministic template again from the same evidence.
    variant = next_variant(state, runtime.context)
    prompt = render_prompt(variant, _evidence(state, runtime.context))
    return {"variant": variant, "prompt": {"variant": variant, "template_sha256": prompt.template_sha256,
                                           "system": prompt.system, "text": prompt.text}}


@timed
def report(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
    result = runtime.context.tool("write_report").invoke({
        "case_ref": state["case_ref"], "variant": state["variant"],
        "opinion": {k: v for k, v in state["classifier"].items() if k in ClassifierOpinion.model_fields},
        "neighbours": state["neighbours"],
    })
    return {"report": result, "attempts": state.get("attempts", 0) + 1}


@timed
def verify(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
    g = runtime.context.settings.graph
    parsed = state["report"]["parsed"]
    verdict = verify_report(parsed["impression"], state["classifier"], state["neighbours"], g.neighbour_majority)
    entry = {"attempt": state["attempts"], "variant": state["variant"], "impression": parsed["impression"],
             "verdict": verdict["verdict"], "reasons": verdict["reasons"]}
    return {"verification": verdict, "attempt_log": [entry]}


def route_after_verify(state: CaseState, runtime: Runtime[ReviewContext]) -> str:
    """Back to compose_prompt (stricter variant) after a contradiction while attempts are left."""
    contradiction = state["verification"]["verdict"].startswith("contradicts")
    return "compose_prompt" if contradiction and state["attempts"] < runtime.context.settings.graph.max_attempts else "finalize"


@timed
def finalize(state: CaseState, runtime: Runtime[ReviewContext]) -> dict[str, Any]:
    ctx = runtime.context
    verdict = state["verification"]
    needs_review = bool(state.get("needs_review")) or verdict["verdict"] != "agree" \
        or verdict["report_impression"] == "indeterminate"
    rep = state["report"]
    record = {
        "case_id": state["case_id"],
        "ground_truth": state["ground_truth"],
        "classifier": state["classifier"],
        "neighbours": state["neighbours"],
        "report": {"raw": rep["raw"], "impression": rep["parsed"]["impression"], "status": rep["parsed"]["status"],
                   "findings": rep["parsed"]["findings"], "hedging": rep["parsed"]["hedging"],
                   "variant": rep["variant"], "backend": rep["backend"], "model_id": rep["model_id"]},
        "verification": verdict,
        "attempts": state["attempts"],
        "attempt_log": state["attempt_log"],
        "retried_with_strict_variant": state["attempts"] > 1,
        "needs_review": needs_review,
        "notes": state.get("notes", []),
        "errors": state.get("errors", []),
        "provenance": {
            "run_id": ctx.run_id,
            "created": utc_now(),
            "classifier_checkpoint_sha256": state["classifier"]["checkpoint_sha256"],
            "classifier_arch": state["classifier"]["arch"],
            "embedder": ctx.settings.index.embedder,
            "case_base": ctx.settings.graph.case_base,
            "prompt_variant": rep["variant"],
            "template_sha256": rep["provenance"].get("template_sha256"),
            "reporter": rep["provenance"],
            "seed": ctx.settings.reporter.seed,
            "packages": package_versions(),
            "timings_s": state.get("timings", {}),
        },
    }
    return {"record": record, "needs_review": needs_review}
