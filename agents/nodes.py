"""Graph nodes: each takes the state and the run context and returns a partial update.

Nodes work on the image already in the state (decoded once by ``load_case``) and call the
capabilities through the context's resources, each built once per process. The decisions in
between (which variant, how many neighbours, what the verdict is) are plain functions.
"""

from __future__ import annotations

import time
from functools import wraps
from typing import Any, Callable

import numpy as np
from langgraph.runtime import Runtime

from casereview.agents.gate import check_input as gate_decision
from casereview.agents.gate import review_reasons
from casereview.agents.verify import verify_report
from casereview.data import load_case as read_case
from casereview.data import parse_ref
from casereview.provenance import package_versions, utc_now
from casereview.schemas import (
    CaseReview, CaseState, ClassifierOpinion, Neighbour, PromptRecord, Provenance, ReportRecord,
)
from casereview.tools.agent_tools import neighbour_images
from casereview.tools.context import RunContext, fingerprint
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.prompts import RenderedPrompt, render_prompt
from casereview.tools.reporter.reporting import generate

Node = Callable[[CaseState, Runtime[RunContext]], dict[str, Any]]


def timed(fn: Node) -> Node:
    """Record the node's wall time under ``timings[<node name>]`` (the last run on a retry)."""

    @wraps(fn)
    def wrapper(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        start = time.perf_counter()
        update = fn(state, runtime)
        return update | {"timings": {fn.__name__: round(time.perf_counter() - start, 4)}}

    return wrapper


def _image(state: CaseState) -> np.ndarray:
    return np.asarray(state["image"], dtype=np.uint8)


@timed
def load_case(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    fields = ctx.fingerprint_fields()
    case = read_case(state["case_ref"], ctx.settings.data.root, ctx.settings.data.download)
    return {"settings": fields, "fingerprint": fingerprint(fields), "case_id": case.case_id,
            "image": case.image.tolist(), "ground_truth": case.label_name, "notes": list(case.notes),
            "views": None if case.views is None else case.views.tolist(), "attempts": 0}


@timed
def check_input(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx, image, views = runtime.context, _image(state), state.get("views")
    # the classifier's forward pass, shared with classify and retrieve
    measure = ctx.gate.measure(image, None if views is None else np.asarray(views, np.uint8), ctx.classifier.embedding(image))
    return {"input_check": gate_decision(measure).model_dump()}


def route_after_check(state: CaseState) -> str:
    """A blank image gets no diagnosis: straight to finalize. Everything else is classified (flagged or not)."""
    return "classify" if state["input_check"]["judgeable"] else "finalize"


@timed
def classify(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    return {"classifier": runtime.context.classifier.opinion(_image(state)).model_dump()}


@timed
def retrieve(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    g = runtime.context.settings.graph
    k = g.k_uncertain if state["classifier"]["uncertain"] else g.k
    own = state["case_id"] if parse_ref(state["case_id"]) else None  # a dataset case never retrieves itself
    vector = runtime.context.case_vector(_image(state))
    hits = runtime.context.index.search_vectors(vector[None], k, g.case_base, [own])[0]
    return {"neighbours": [h.model_dump() for h in hits]}


def next_variant(state: CaseState, ctx: RunContext) -> str:
    """The configured variant first; the stricter one after a contradiction."""
    return ctx.settings.graph.strict_variant if state.get("attempts", 0) > 0 else ctx.settings.reporter.variant


def evidence(state: CaseState, ctx: RunContext) -> Evidence:
    """What the reporter sees: the case image, the opinion, the neighbours and their images."""
    neighbours = tuple(Neighbour(**n) for n in state["neighbours"])
    opinion = ClassifierOpinion(**{k: v for k, v in state["classifier"].items() if k in ClassifierOpinion.model_fields})
    return Evidence(state["case_id"], _image(state), opinion, neighbours, neighbour_images(list(neighbours), ctx.settings))


@timed
def compose_prompt(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    # Rendered once per attempt and stored, so it can be inspected before the model runs
    # (--step, the notebook), and the report node sends exactly this prompt.
    variant = next_variant(state, runtime.context)
    prompt = render_prompt(variant, evidence(state, runtime.context))
    return {"variant": variant, "prompt": prompt.to_record().model_dump()}


@timed
def report(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    prompt = RenderedPrompt.from_record(PromptRecord(**state["prompt"]), evidence(state, ctx))
    result = generate(ctx.backend, [prompt])[0]
    p = result.parsed
    record = ReportRecord(raw=result.raw, impression=p.impression, status=p.status, findings=p.findings,
                          hedging=p.hedging, parse_notes=p.notes, variant=result.variant, backend=result.backend,
                          model_id=result.model_id)
    return {"report": record.model_dump(), "reporter": result.provenance, "attempts": state.get("attempts", 0) + 1}


@timed
def verify(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    g = runtime.context.settings.graph
    impression = state["report"]["impression"]
    v = verify_report(impression, state["classifier"], state["neighbours"], g.neighbour_majority)
    entry = {"attempt": state["attempts"], "variant": state["variant"], "impression": impression,
             "verdict": v.verdict, "reasons": v.reasons}
    return {"verification": v.model_dump(), "attempt_log": [entry]}


def route_after_verify(state: CaseState, runtime: Runtime[RunContext]) -> str:
    """Back to compose_prompt (stricter variant) after a contradiction while attempts are left."""
    contradiction = state["verification"]["verdict"].startswith("contradicts")
    return "compose_prompt" if contradiction and state["attempts"] < runtime.context.settings.graph.max_attempts else "finalize"


@timed
def finalize(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    reasons = review_reasons(state, ctx.settings.graph.neighbour_majority)
    rep, prompt = state.get("report"), state.get("prompt")
    provenance = Provenance(
        run_id=ctx.run_id, created=utc_now(), settings_fingerprint=state["fingerprint"], settings=state["settings"],
        classifier_checkpoint_sha256=state["settings"]["checkpoint_sha256"], classifier_arch=ctx.classifier.clf.arch,
        index=ctx.index.embedder_id, prompt_variant=rep["variant"] if rep else None,
        template_sha256=prompt["template_sha256"] if prompt else None, reporter=state.get("reporter", {}),
        packages=package_versions(), timings_s=state.get("timings", {}),
    )
    record = CaseReview(
        case_id=state["case_id"], ground_truth=state["ground_truth"], input_check=state["input_check"],
        classifier=state.get("classifier"), neighbours=state.get("neighbours", []), prompt=prompt, report=rep,
        verification=state.get("verification"), attempts=state["attempts"], attempt_log=state.get("attempt_log", []),
        retried_with_strict_variant=state["attempts"] > 1, needs_review=bool(reasons), review_reasons=reasons,
        notes=state.get("notes", []), errors=state.get("errors", []), provenance=provenance,
    )
    return {"record": record.model_dump(), "needs_review": bool(reasons), "review_reasons": reasons}
