"""Records passed between the capabilities (classifier -> index -> reporter -> graph), the graph's state,
and the saved case record. Everything above the data layer imports its record types from here."""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

Label = Literal["normal", "pneumonia"]


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


def merge_dicts(left: dict[str, float] | None, right: dict[str, float] | None) -> dict[str, float]:
    return {**(left or {}), **(right or {})}


class CaseState(TypedDict, total=False):
    """The state of one case review as it moves through the graph: the evidence itself.

    Records are the pydantic models above (the checkpointers serialise them; see
    ``STATE_TYPES``). Nodes return partial updates; ``timings``, ``attempt_log`` and ``errors``
    are merged/appended by their reducers, every other key is overwritten. The evidence keys
    (``opinion``, ``embedding``, ``gate``, ``neighbours``) may also be given as input (a batch
    computes them for many cases in one pass; a probe transforms them): a node skips the work
    whose result is already present.
    """

    # input
    case_ref: str  # "test:42" or an image path
    # load_case
    settings: dict[str, Any]  # what shapes the result (see tools.context.fingerprint_fields), fixed per thread
    fingerprint: str  # hash of ``settings``: a resume with other settings is refused
    case_id: str
    image: list[list[int]]  # 28x28 uint8 as nested lists, decoded once
    ground_truth: Label | None
    notes: list[str]
    views: list[list[list[int]]] | None  # image files of another size: the other resize views
    # check_input: the classifier's one forward pass and the gate (or given as input)
    opinion: ClassifierResult
    embedding: list[float]  # the classifier's unit penultimate features (what the cnn index stores)
    gate: GateMeasure
    input_check: InputCheck  # the gate's decision
    # classify
    classifier: ClassifierResult
    # retrieve (or given as input)
    neighbours: list[Neighbour]
    # compose_prompt / report / verify (repeated on a retry)
    variant: str
    prompt: PromptRecord  # exactly what the report node sends
    report: ReportRecord
    reporter: dict[str, Any]  # the backend's provenance for that report
    verification: Verification
    attempts: int
    attempt_log: Annotated[list[Attempt], operator.add]
    # bookkeeping
    errors: Annotated[list[str], operator.add]  # failures of earlier tries of this case (resumed since)
    timings: Annotated[dict[str, float], merge_dicts]
    record: CaseReview  # finalize


# The record types a checkpoint may hold: the checkpointers' serialiser restores these (and only these)
# from their module and class name.
STATE_TYPES = (ClassifierResult, GateMeasure, InputCheck, Neighbour, PromptRecord, ReportRecord, Verification,
               Attempt, Provenance, CaseReview)
