"""Records passed between the capabilities (classifier -> index -> reporter -> graph), the graph's state,
and the saved case record. Everything above the data layer imports its record types from here."""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12 (the graph's JSON schemas)

Label = Literal["normal", "pneumonia"]
Impression = Literal["normal", "pneumonia", "indeterminate"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifierOpinion(Record):
    """The CNN's calibrated view of one image."""

    prob_pneumonia: float = Field(ge=0.0, le=1.0, description="temperature-scaled p(pneumonia)")
    label: Label = Field(description="label at the shipped decision threshold")
    threshold: float = Field(description="decision threshold on prob_pneumonia, fitted on validation")
    temperature: float
    uncertain: bool = False  # inside the validation-calibrated uncertainty band (set by the graph)
    checkpoint_sha256: str


class Neighbour(Record):
    """One similar case from the case base, with its known diagnosis."""

    case_id: str
    split: str
    index: int
    label: Label
    similarity: float = Field(description="cosine similarity, 1 - Chroma's cosine distance")


class ClassifierResult(ClassifierOpinion):
    """The opinion as the review records it: with the conformal set it was flagged by."""

    prediction_set: list[Label]
    conformal_alpha: float
    arch: str


class GateMeasure(Record):
    """The input gate's measurements of one case, with the thresholds fitted on train/validation."""

    stats: dict[str, float] = Field(description="image statistics (tools.input_gate.STAT_NAMES)")
    stat_low: dict[str, float] = Field(description="lower bound of each statistic (train quantile, tail set on validation)")
    stat_high: dict[str, float] = Field(description="upper bound of each statistic")
    ood_distance: float = Field(description="Mahalanobis distance of the classifier's features to the train split")
    ood_threshold: float
    resize_spread: float | None = Field(description="spread of p over resize views (image files of another size)")
    resize_threshold: float
    gate_id: str = Field(description="the fitted gate (checkpoint, gate settings, version)")


class InputCheck(GateMeasure):
    """The gate's decision (``agents.gate.input_decision``): flagged for review, or not judgeable at all."""

    judgeable: bool = Field(description="false: blank or near-constant, no diagnosis is given")
    flagged: bool = Field(description="outside what the classifier was trained on, or unstable under the resize")
    reasons: list[str]


Verdict = Literal["agree", "contradicts_classifier", "contradicts_neighbours", "inconsistent_findings", "unparseable"]


class Verification(Record):
    """The report checked against the classifier and the neighbours' vote (see ``agents.verify``)."""

    verdict: Verdict
    reasons: list[str]
    report_impression: str | None
    classifier_label: Label
    neighbour_label: Label | None = Field(description="majority label when its share reaches the configured majority")
    neighbour_share: float = Field(description="share of neighbours with the majority label")


class PromptRecord(Record):
    """A rendered prompt as stored in the state and sent to the backend, images by reference."""

    variant: str
    template_sha256: str
    system: str
    parts: list[str | dict[str, str]] = Field(description='text items, and {"image": "case" | neighbour case id}')

    @property
    def text(self) -> str:
        """The user message with ``<image: REF>`` where each image goes."""
        return "\n".join(p if isinstance(p, str) else f"<image: {p['image']}>" for p in self.parts)


class ReportRecord(Record):
    """What the reporter wrote (raw text is untrusted) and how it parsed."""

    raw: str
    impression: str | None
    status: str
    findings: str
    hedging: list[str]
    parse_notes: list[str] = Field(default_factory=list, description="format drift seen, or why nothing was read")
    read_by_tier: Literal[1, 2] | None = Field(default=None, description="1: the contract line, 2: the report's language")
    impression_sentences: list[str] = Field(default_factory=list, description="the text the impression was read from")
    variant: str
    backend: str
    model_id: str


class Attempt(Record):
    attempt: int
    variant: str
    impression: str | None
    verdict: Verdict
    reasons: list[str]


class Provenance(Record):
    """What produced a record; ``settings`` are those the case's thread was started with."""

    run_id: str
    created: str
    settings_fingerprint: str
    settings: dict[str, Any]
    classifier_checkpoint_sha256: str
    classifier_arch: str
    index: str
    prompt_variant: str | None  # None: not judged (no report was written)
    template_sha256: str | None
    reporter: dict[str, Any]
    packages: dict[str, str | None]
    timings_s: dict[str, float]
    graph_total_s: float | None = None


# FHIR DiagnosticReport.status codes: the draft is ``preliminary`` until a person signs it.
ReportStatus = Literal["preliminary", "final", "amended", "entered-in-error"]
Decision = Literal["accept", "edit", "reject"]
MAX_SIGN_OFF_TEXT = 20_000  # characters of a reviewer's report text


class SignOffDecision(Record):
    """A reviewer's decision on a paused case: the value a ``sign_off`` interrupt is resumed with.

    ``accept`` signs the draft as it is; ``edit`` replaces the draft's impression and text with the
    reviewer's (the draft stays in the record verbatim); ``reject`` marks the report entered in error
    and needs a ``reason``."""

    decision: Decision
    reviewer: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    impression: Impression | None = None
    text: str | None = Field(default=None, max_length=MAX_SIGN_OFF_TEXT)
    reason: str | None = Field(default=None, max_length=2_000)

    @model_validator(mode="after")
    def _complete(self) -> "SignOffDecision":
        if self.decision == "edit" and (self.impression is None or not (self.text or "").strip()):
            raise ValueError("an edit needs the reviewer's impression and text")
        if self.decision == "reject" and not (self.reason or "").strip():
            raise ValueError("a reject needs a reason")
        if self.decision != "edit" and (self.impression is not None or self.text is not None):
            raise ValueError(f"{self.decision} takes no impression or text (use edit to change the report)")
        return self


class SignOff(Record):
    """Who signed the case, when (UTC), how, and the report as signed."""

    reviewer: str
    decision: Decision
    at: str = Field(description="UTC time of the decision, ISO 8601")
    impression: Impression | None = Field(description="the final impression (the draft's on accept, none on reject)")
    text: str | None = Field(description="the final report text (the draft's raw text on accept, none on reject)")
    reason: str | None


class CaseReview(Record):
    """The saved record of one case review (``<case>.json``); ``casereview schema`` prints its JSON schema."""

    case_id: str
    ground_truth: Label | None
    input_check: InputCheck
    # The four below are None for a case the gate found blank: it gets no diagnosis.
    classifier: ClassifierResult | None
    neighbours: list[Neighbour]
    prompt: PromptRecord | None
    report: ReportRecord | None
    verification: Verification | None
    attempts: int
    attempt_log: list[Attempt]
    retried_with_strict_variant: bool
    needs_review: bool
    review_reasons: list[str] = Field(description="why the case needs a human (empty when it does not)")
    notes: list[str] = []
    errors: list[str] = []
    provenance: Provenance
    status: ReportStatus = Field(default="preliminary", description="FHIR DiagnosticReport.status")
    sign_off: SignOff | None = Field(default=None, description="the reviewer's decision (None: not signed)")


class CaseEvidence(Record):
    """The evidence of one case computed ahead of its review (``agents.evidence.batch_evidence``): what
    the classify, check_input and retrieve nodes would compute. Given in process only (a batch, its
    probes); a served graph's caller cannot send one."""

    classifier: ClassifierResult
    embedding: list[float]
    gate: GateMeasure
    neighbours: list[Neighbour]


def merge_dicts(left: dict[str, float] | None, right: dict[str, float] | None) -> dict[str, float]:
    return {**(left or {}), **(right or {})}


class ReviewInput(TypedDict, total=False):
    """What a caller gives the graph: a case, as a dataset reference (``test:42``; an image path only
    in process or inside the folders a server allows) or as the bytes of an image file (base64). Any
    other key is dropped before the graph starts. ``precomputed``: evidence computed ahead, in process."""

    case_ref: str
    image_base64: str
    precomputed: CaseEvidence


class ReviewOutput(TypedDict, total=False):
    """What a run returns: the case record, or why the input was refused."""

    record: CaseReview
    error: str


class CaseState(TypedDict, total=False):
    """The state of one case review as it moves through the graph: the evidence itself, one fact per key.

    Records are the pydantic models above (the checkpointers serialise them; see ``STATE_TYPES``).
    Nodes return partial updates; ``timings``, ``attempt_log`` and ``errors`` are merged/appended by
    their reducers, every other key is overwritten. Only the keys of :class:`ReviewInput` come from
    the caller; a node whose result is already in ``precomputed`` takes it from there.
    """

    # input (ReviewInput)
    case_ref: str  # "test:42" or an image path
    image_base64: str  # or the bytes of an image file
    precomputed: CaseEvidence
    error: str  # the input was refused: the run ends here
    # load_case
    run_id: str  # the run the case belongs to (its records folder), fixed per thread: a resume may name none
    settings: dict[str, Any]  # what shapes the result (see tools.context.fingerprint_fields), fixed per thread
    fingerprint: str  # hash of ``settings``: a resume with other settings is refused
    case_id: str
    image: list[list[int]]  # 28x28 uint8 as nested lists, decoded once
    ground_truth: Label | None
    notes: list[str]
    views: list[list[list[int]]] | None  # image files of another size: the other resize views
    # classify: the classifier's one forward pass
    classifier: ClassifierResult
    embedding: list[float]  # the classifier's unit penultimate features (what the cnn index stores)
    # check_input: the gate's measurements and its decision
    input_check: InputCheck
    # retrieve
    neighbours: list[Neighbour]
    # compose_prompt / report / verify (repeated on a retry)
    variant: str
    prompt: PromptRecord  # exactly what the report node sends
    report: ReportRecord
    reporter: dict[str, Any]  # the backend's provenance for that report
    verification: Verification  # with the neighbours' vote, computed once, there
    attempts: int
    attempt_log: Annotated[list[Attempt], operator.add]
    # triage
    review_reasons: list[str]  # why a human should look (empty: no need)
    awaiting_sign_off: bool  # the case pauses in sign_off (graph.sign_off); set again to sign a signed case again
    # finalize, save_record, sign_off
    record: CaseReview
    # bookkeeping
    errors: Annotated[list[str], operator.add]  # failures of earlier tries of this case (resumed since)
    timings: Annotated[dict[str, float], merge_dicts]


# The record types a checkpoint may hold: the checkpointers' serialiser restores these (and only these)
# from their module and class name.
STATE_TYPES = (ClassifierResult, GateMeasure, InputCheck, Neighbour, PromptRecord, ReportRecord, Verification,
               Attempt, Provenance, CaseReview, SignOff, SignOffDecision, CaseEvidence)
