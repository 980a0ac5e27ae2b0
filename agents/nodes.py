"""Graph nodes: each takes the state and the run context and returns a partial update.

Nodes work on the image already in the state (decoded once by ``load_case``) and on the evidence
the earlier nodes wrote there (or that an in-process caller computed ahead, ``precomputed``: then
the node takes it from there). They reach the capabilities through the context, whose resources
are built once per process. The decisions in between (which variant, how many neighbours, what the
verdict is, who needs a human, what a sign-off does) are plain functions.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import lru_cache, wraps
from pathlib import Path
from typing import Any, Callable

import numpy as np
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import ValidationError

from casereview.agents.clock import GraphClock
from casereview.agents.evidence import neighbour_count, own_case
from casereview.agents.gate import input_decision, review_reasons
from casereview.agents.intake import InputRefused, caller_case, check_context, check_precomputed, trusted
from casereview.agents.signoff import DECISION_SCHEMA, apply_decision, refusal, sign_off_payload, wants_sign_off
from casereview.agents.verify import verify_report
from casereview.config import Settings, load_settings
from casereview.data import parse_ref
from casereview.paths import resolve_inside
from casereview.provenance import package_versions, utc_now
from casereview.records import record_stem, save_case_record
from casereview.schemas import Attempt, CaseReview, CaseState, Provenance, ReportRecord, SignOffDecision
from casereview.tools.agent_tools import neighbour_images
from casereview.tools.context import RunContext, fingerprint, fingerprint_fields
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


@lru_cache(maxsize=1)
def served_settings() -> Settings:
    """The settings of a process that serves the graph (``langgraph dev``): from its environment and
    configuration file, read once. A served caller cannot change them."""
    return load_settings()


def run_context(runtime: Runtime[RunContext]) -> RunContext:
    """The run's context with its settings and run id filled in: a served caller's context holds at
    most a run id and a reviewer (:func:`agents.intake.check_context`); its settings are the
    server's and its run id, when it gives none, the thread's."""
    ctx = runtime.context if runtime.context is not None else RunContext()
    if isinstance(ctx.settings, Settings) and ctx.run_id is not None:
        return ctx
    check_context(ctx)
    info = getattr(runtime, "execution_info", None)
    run_id = ctx.run_id or (info.thread_id if info is not None and info.thread_id else "served")
    return replace(ctx, settings=ctx.settings or served_settings(), run_id=run_id)



@timed
def load_case(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The caller's input checked (a refusal ends the run with its ``error``) and the case decoded once."""
    try:
        ctx = run_context(runtime)
        check_precomputed(state.get("precomputed"))
        case = caller_case(state, ctx, runtime.context is not None and trusted(runtime.context))
    except InputRefused as exc:
        return {"error": str(exc), "precomputed": None}  # nothing a refused caller sent stays as evidence
    fields = fingerprint_fields(ctx.settings)
    return {"run_id": ctx.run_id, "settings": fields, "fingerprint": fingerprint(fields), "case_id": case.case_id,
            "image": case.image.tolist(), "ground_truth": case.label_name, "notes": list(case.notes),
            "views": None if case.views is None else case.views.tolist(), "attempts": 0}


def route_after_load(state: CaseState) -> str:
    """A refused input ends the run; a case goes on to the classifier."""
    return "__end__" if "error" in state else "classify"


@timed
def classify(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The classifier's one forward pass: its calibrated opinion and the features the gate and the index use."""
    if (ahead := state.get("precomputed")) is not None:
        return {"classifier": ahead.classifier, "embedding": ahead.embedding}
    opinion, embedding = run_context(runtime).classifier.analyse_one(_image(state))
    return {"classifier": opinion, "embedding": embedding.tolist()}


@timed
def check_input(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The input gate's measurements (on the classifier's features) and its decision."""
    if (ahead := state.get("precomputed")) is not None:
        return {"input_check": input_decision(ahead.gate)}
    views = state.get("views")
    measure = run_context(runtime).gate.measure(_image(state), None if views is None else np.asarray(views, np.uint8),
                                                np.asarray(state["embedding"], dtype=np.float32))
    return {"input_check": input_decision(measure)}


def route_after_check(state: CaseState) -> str:
    """A blank image gets no diagnosis: straight to triage. Everything else gets its evidence (flagged or not)."""
    return "retrieve" if state["input_check"].judgeable else "triage"


@timed
def retrieve(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    if (ahead := state.get("precomputed")) is not None:
        return {"neighbours": ahead.neighbours}
    ctx = run_context(runtime)
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
    ctx = run_context(runtime)
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
    ctx = run_context(runtime)
    return report_update(state, generate(ctx.backend, [rendered_prompt(state, ctx)])[0])


@timed
def verify(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    g = run_context(runtime).settings.graph
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
    return "compose_prompt" if contradiction and state["attempts"] < run_context(runtime).settings.graph.max_attempts else "triage"


@timed
def triage(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Every reason the case needs a human (none: it does not), and whether it waits for one (graph.sign_off)."""
    reasons = review_reasons(state)
    return {"review_reasons": reasons, "awaiting_sign_off": wants_sign_off(run_context(runtime).settings.graph.sign_off,
                                                                           bool(reasons))}


@timed
def finalize(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The case record, ``preliminary`` until a person signs it."""
    ctx = run_context(runtime)
    reasons = state["review_reasons"]
    rep, prompt, judged = state.get("report"), state.get("prompt"), state["input_check"].judgeable
    provenance = Provenance(
        run_id=state["run_id"], created=utc_now(), settings_fingerprint=state["fingerprint"], settings=state["settings"],
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


def records_folder(ctx: RunContext, run_id: str) -> Path:
    """Where a run's records go: the caller's folder (in process), else ``<workdir>/reviews/<run id>``."""
    return ctx.out if ctx.out is not None else resolve_inside(ctx.settings.paths.workdir / "reviews", run_id, what="run id")


def save_record(state: CaseState, runtime: Runtime[RunContext], config: RunnableConfig) -> dict[str, Any]:
    """Write the record's JSON, Markdown and image (again after a sign-off: the record then has its new status)."""
    ctx = run_context(runtime)
    record = state["record"]
    clock = GraphClock.of(config)
    if clock is not None and record.sign_off is None:  # the review's own time, not a reviewer's
        record = record.model_copy(update={"provenance": record.provenance.model_copy(
            update={"graph_total_s": clock.elapsed()})})
    save_case_record(record.model_dump(), np.asarray(state["image"], dtype=np.uint8), records_folder(ctx, state["run_id"]))
    return {"record": record}


def route_after_save(state: CaseState) -> str:
    """A review that waits for a reviewer pauses in sign_off; a signed one (or one no one need sign) is done."""
    return "sign_off" if state.get("awaiting_sign_off") else "__end__"


def sign_off(state: CaseState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Pause for a reviewer's decision (LangGraph's ``interrupt``), then apply it to the record.

    The interrupt advertises :class:`SignOffDecision`'s JSON schema; an answer that does not validate
    is refused by pausing again with the payload's ``refused`` saying why (the case stays paused,
    nothing is written, and a served run does not fail). Everything before ``interrupt`` is free of
    side effects: the node reruns from its start on each resume."""
    payload = sign_off_payload(state["record"], state["run_id"], f"{record_stem(state['case_id'])}.png")
    refused = None
    while True:  # each pass takes the next answer given, or pauses: as many passes as answers
        answer = interrupt(payload | {"refused": refused}, response_schema=DECISION_SCHEMA)
        try:
            decision = SignOffDecision.model_validate(answer)
            break
        except ValidationError as exc:
            refused = refusal(exc)
    return {"record": apply_decision(state["record"], decision, utc_now()), "awaiting_sign_off": False}
