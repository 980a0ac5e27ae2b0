"""The state of one case review as it moves through the graph.

Values are plain JSON-able data (records are stored as ``model_dump()`` dicts) so that any
checkpointer can save and restore them. Nodes return partial updates; ``timings`` and
``attempt_log`` are merged/appended by their reducers, every other key is overwritten.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

Verdict = Literal["agree", "contradicts_classifier", "contradicts_neighbours", "unparseable"]


def merge_dicts(left: dict[str, float] | None, right: dict[str, float] | None) -> dict[str, float]:
    return {**(left or {}), **(right or {})}


class Verification(TypedDict):
    verdict: Verdict
    reasons: list[str]
    report_impression: str | None
    classifier_label: str
    neighbour_label: str | None  # majority label when its share reaches the configured majority, else None
    neighbour_share: float  # share of neighbours with the majority label


class CaseState(TypedDict, total=False):
    # input
    case_ref: str  # "test:42" or an image path
    # load_case
    case_id: str
    image: list[list[int]]  # 28x28 uint8 as nested lists
    ground_truth: str | None
    notes: list[str]
    # classify
    classifier: dict[str, Any]  # ClassifierOpinion + prediction_set
    needs_review: bool
    # retrieve
    neighbours: list[dict[str, Any]]  # Neighbour records
    # compose_prompt / report / verify (repeated on a retry)
    variant: str
    prompt: dict[str, Any]  # variant, template_sha256, system, text
    report: dict[str, Any]  # ReportResult
    verification: Verification
    attempts: int
    attempt_log: Annotated[list[dict[str, Any]], operator.add]
    # bookkeeping
    errors: Annotated[list[str], operator.add]  # failures of earlier tries of this case (resumed since)
    timings: Annotated[dict[str, float], merge_dicts]
    record: dict[str, Any]  # finalize: the CaseReview
