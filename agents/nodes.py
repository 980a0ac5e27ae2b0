"""Graph nodes: each takes the state and the run context and returns a partial update.

Nodes work on the image already in the state (decoded once by ``load_case``) and on the evidence
the earlier nodes wrote there (or that the caller gave as input: then the node skips that work).
They call the capabilities through the context's resources, each built once per process. The
decisions in between (which variant, how many neighbours, what the verdict is) are plain functions.
"""

from __future__ import annotations

import time
from functools import wraps
from typing import Any, Callable

import numpy as np
from langgraph.runtime import Runtime

from casereview.agents.evidence import neighbour_count, own_case
from casereview.agents.gate import input_decision
from casereview.agents.gate import review_reasons
from casereview.agents.verify import verify_report
from casereview.data import load_case as read_case
from casereview.data import parse_ref
from casereview.provenance import package_versions, utc_now
from casereview.schemas import Attempt, CaseReview, CaseState, Provenance, ReportRecord
from casereview.tools.agent_tools import neighbour_images
from casereview.tools.context import RunContext, fingerprint, fingerprint_fields, server_context
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.prompts import RenderedPrompt, render_prompt
from casereview.tools.reporter.report_language import read_findings
from casereview.tools.reporter.reporting import ReportResult, generate

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


def _context(runtime: Runtime[RunContext]) -> RunContext:
    """The caller's context; under LangGraph's server (no context, or a dict of values) the process's own."""
    return runtime.context if isinstance(runtime.context, RunContext) else server_context()


@timed
def load_case(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = _context(runtime)
    fields = fingerprint_fields(ctx.settings)
    case = read_case(state["case_ref"], ctx.settings.data.root, ctx.settings.data.download)
    return {"settings": fields, "fingerprint": fingerprint(fields), "case_id": case.case_id,
            "image": case.image.tolist(), "ground_truth": case.label_name, "notes": list(case.notes),
            "views": None if case.views is None else case.views.tolist(), "attempts": 0}


@timed
def check_input(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The classifier's one forward pass (opinion and embedding) and the gate's measurements, unless
    given as input; then the gate's decision."""
    ctx, image, views = _context(runtime), _image(state), state.get("views")
    update: dict[str, Any] = {}
    if "opinion" not in state or "embedding" not in state:
        opinion, embedding = ctx.classifier.analyse_one(image)
        update |= {"opinion": opinion, "embedding": embedding.tolist()}
    embedding = np.asarray(update.get("embedding", state.get("embedding")), dtype=np.float32)
    measure = state.get("gate") or ctx.gate.measure(image, None if views is None else np.asarray(views, np.uint8), embedding)
    return update | {"gate": measure, "input_check": input_decision(measure)}


def route_after_check(state: CaseState) -> str:
    """A blank image gets no diagnosis: straight to finalize. Everything else is classified (flagged or not)."""
    return "classify" if state["input_check"].judgeable else "finalize"


@timed
def classify(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The classifier's opinion (from check_input's forward pass, or given) becomes the case's classification."""
    return {"classifier": state["opinion"]}


@timed
def retrieve(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    if "neighbours" in state:  # given as input
        return {}
    ctx = _context(runtime)
    g = ctx.settings.graph
    vector = ctx.case_vector(_image(state), np.asarray(state["embedding"], dtype=np.float32))
    own = own_case(state["case_id"], parse_ref(state["case_id"]))  # a dataset case never retrieves itself
    hits = ctx.index.search_vectors(vector[None], neighbour_count(state["classifier"], g), g.case_base, [own])[0]
    return {"neighbours": hits}


def next_variant(state: CaseState, ctx: RunContext) -> str:
    """The configured variant first; the stricter one after a contradiction."""
    return ctx.settings.graph.strict_variant if state.get("attempts", 0) > 0 else ctx.settings.reporter.variant


def evidence(state: CaseState, ctx: RunContext, with_images: bool = True) -> Evidence:
    """What the reporter sees: the case image, the opinion, the neighbours and (``with_images``) their images."""
    neighbours = tuple(state["neighbours"])
    images = neighbour_images(list(neighbours), ctx.settings) if with_images else None
    return Evidence(state["case_id"], _image(state), state["classifier"], neighbours, images)


def rendered_prompt(state: CaseState, ctx: RunContext) -> RenderedPrompt:
    """The stored prompt with its images: the neighbours' images are read only when the prompt shows them."""
    shows_neighbours = any(not isinstance(p, str) and p["image"] != "case" for p in state["prompt"].parts)
    return RenderedPrompt.from_record(state["prompt"], evidence(state, ctx, with_images=shows_neighbours))


@timed
def compose_prompt(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    # Rendered once per attempt and stored, so it can be inspected before the model runs
    # (--step, the notebook, LangGraph Studio), and the report node sends exactly this prompt.
    ctx = _context(runtime)
    variant = next_variant(state, ctx)
    return {"variant": variant, "prompt": render_prompt(variant, evidence(state, ctx)).to_record()}


def report_update(state: CaseState, result: ReportResult) -> dict[str, Any]:
    """The report node's update for a generated report (also written by a batch that generates in rounds)."""
    p = result.parsed
    record = ReportRecord(raw=result.raw, impression=p.impression, status=p.status, findings=p.findings,
                          hedging=p.hedging, parse_notes=p.notes, read_by_tier=p.tier,
                          impression_sentences=p.impression_sentences, variant=result.variant, backend=result.backend,
                          model_id=result.model_id)
    return {"report": record, "reporter": result.provenance, "attempts": state.get("attempts", 0) + 1}


@timed
def report(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = _context(runtime)
    return report_update(state, generate(ctx.backend, [rendered_prompt(state, ctx)])[0])


@timed
def verify(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    g = _context(runtime).settings.graph
    rep = state["report"]
    impression = rep.impression
    # A template report's findings restate the evidence: they are not a second reading of the image.
    findings = None if rep.backend == "template" else read_findings(rep.findings, impression)
    v = verify_report(impression, state["classifier"], state["neighbours"], g.neighbour_majority, findings)
    entry = Attempt(attempt=state["attempts"], variant=state["variant"], impression=impression, verdict=v.verdict,
                    reasons=v.reasons)
    return {"verification": v, "attempt_log": [entry]}


def route_after_verify(state: CaseState, runtime: Runtime[RunContext]) -> str:
    """Back to compose_prompt (stricter variant) after a contradiction while attempts are left."""
    contradiction = state["verification"].verdict.startswith("contradicts")
    return "compose_prompt" if contradiction and state["attempts"] < _context(runtime).settings.graph.max_attempts else "finalize"


@timed
def finalize(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = _context(runtime)
    reasons = review_reasons(state, ctx.settings.graph.neighbour_majority)
    rep, prompt, judged = state.get("report"), state.get("prompt"), state["input_check"].judgeable
    provenance = Provenance(
        run_id=ctx.run_id, created=utc_now(), settings_fingerprint=state["fingerprint"], settings=state["settings"],
        classifier_checkpoint_sha256=state["settings"]["checkpoint_sha256"], classifier_arch=ctx.classifier.clf.arch,
        index=ctx.index.embedder_id, prompt_variant=rep.variant if rep else None,
        template_sha256=prompt.template_sha256 if prompt else None, reporter=state.get("reporter", {}),
        packages=package_versions(), timings_s=state.get("timings", {}),
    )
    record = CaseReview(
        case_id=state["case_id"], ground_truth=state["ground_truth"], input_check=state["input_check"],
        classifier=state.get("classifier") if judged else None, neighbours=state.get("neighbours", []) if judged else [],
        prompt=prompt, report=rep, verification=state.get("verification"), attempts=state["attempts"],
        attempt_log=state.get("attempt_log", []), retried_with_strict_variant=state["attempts"] > 1,
        needs_review=bool(reasons), review_reasons=reasons, notes=state.get("notes", []),
        errors=state.get("errors", []), provenance=provenance,
    )
    return {"record": record}
