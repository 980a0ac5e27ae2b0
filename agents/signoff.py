"""A reviewer's sign-off: who needs one, what the reviewer sees, and what a decision does to the
record. Pure functions; the ``sign_off`` node pauses the graph with them (``agents.nodes``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError

from casereview.schemas import CaseReview, ReportStatus, SignOff, SignOffDecision

SignOffMode = Literal["off", "flagged", "all"]
DECISION_SCHEMA = SignOffDecision.model_json_schema()  # the interrupt's response_schema: a front end's form


def refusal(exc: ValidationError) -> str:
    """Why a decision was refused, one line (what a reviewer's front end shows)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'decision'}: {e['msg']}" for e in exc.errors())


def wants_sign_off(mode: SignOffMode, needs_review: bool) -> bool:
    """Whether a finished review waits for a reviewer: ``all`` cases, the ``flagged`` ones, or none."""
    return mode == "all" or (mode == "flagged" and needs_review)


def next_status(already_signed: bool, decision: str) -> ReportStatus:
    """FHIR DiagnosticReport.status after a decision: reject -> entered-in-error; accept or edit ->
    final, or amended when the case was signed before."""
    if decision == "reject":
        return "entered-in-error"
    return "amended" if already_signed else "final"


def apply_decision(record: CaseReview, decision: SignOffDecision, at: str) -> CaseReview:
    """The record after ``decision`` (made at ``at``, UTC ISO 8601). The model's draft (``report``)
    is kept verbatim; the signed impression and text go into ``sign_off``."""
    draft = record.report
    if decision.decision == "accept":
        impression = draft.impression if draft else None
        text = draft.raw if draft else None
    elif decision.decision == "edit":
        impression, text = decision.impression, decision.text
    else:
        impression, text = None, None
    entry = SignOff(reviewer=decision.reviewer, decision=decision.decision, at=at, impression=impression,
                    text=text, reason=decision.reason)
    status = next_status(record.sign_off is not None, decision.decision)
    return record.model_copy(update={"sign_off": entry, "status": status})


def sign_off_payload(record: CaseReview, run_id: str, image_file: str | None) -> dict[str, Any]:
    """What a reviewer decides from (the interrupt's value): the case, where its image is, the
    classifier, the neighbours, the draft report and the reasons it was flagged. JSON values only."""
    r = record.model_dump(mode="json")
    return {
        "kind": "sign_off", "run_id": run_id, "case_id": r["case_id"], "image_file": image_file,
        "status": r["status"], "signed_before": r["sign_off"],
        "classifier": r["classifier"], "neighbours": r["neighbours"], "input_check": r["input_check"],
        "draft": r["report"], "verification": r["verification"], "review_reasons": r["review_reasons"],
        "decisions": ["accept", "edit", "reject"], "refused": None,
    }
