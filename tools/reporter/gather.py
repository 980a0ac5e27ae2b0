"""Evidence for the reporter from the project's other capabilities: the classifier and the case index.

The reporter itself never needs these (evidence is passed in as records); this module is
what ``report-gen`` and the task-2 report use to collect it, and to pick a representative
sample of cases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from casereview.data import Case
from casereview.config import Settings
from casereview.errors import CaseReviewError
from casereview.schemas import Neighbour
from casereview.tools.reporter.evidence import Evidence, ReporterError
from casereview.data import load_split

if TYPE_CHECKING:
    from casereview.tools.case_index import CaseIndex
    from casereview.tools.classifier_tool import CaseClassifier

log = logging.getLogger(__name__)


def pick_representative(labels: np.ndarray, probs: np.ndarray, threshold: float, n: int) -> list[tuple[int, str]]:
    """``n`` indices covering both classes, confident and uncertain cases and the classifier's errors.

    Groups, taken in turn one case at a time: false negatives and false positives (most
    confident first), confidently right pneumonia and normal cases, and the pneumonia and
    normal cases nearest the threshold. Deterministic. Returns (index, why it was picked).
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    pred = (probs >= threshold).astype(int)
    margin = np.abs(probs - threshold)
    idx = np.arange(len(labels))

    def ordered(mask: np.ndarray, key: np.ndarray) -> list[int]:
        return [int(i) for i in idx[mask][np.argsort(key[mask], kind="stable")]]

    groups = [
        ("classifier error: false negative", ordered((labels == 1) & (pred == 0), probs)),
        ("classifier error: false positive", ordered((labels == 0) & (pred == 1), -probs)),
        ("confident, pneumonia", ordered((labels == 1) & (pred == 1), -probs)),
        ("confident, normal", ordered((labels == 0) & (pred == 0), probs)),
        ("near the threshold, pneumonia", ordered(labels == 1, margin)),
        ("near the threshold, normal", ordered(labels == 0, margin)),
    ]
    chosen: dict[int, str] = {}
    while len(chosen) < min(n, len(labels)):
        progressed = False
        for why, members in groups:
            while members and members[0] in chosen:
                members.pop(0)
            if members and len(chosen) < n:
                chosen[members.pop(0)] = why
                progressed = True
        if not progressed:
            break
    return list(chosen.items())


def neighbour_images(neighbours: Sequence[Neighbour], data_root) -> tuple[np.ndarray, ...]:
    """The images of retrieved cases, from the dataset split each one names."""
    return tuple(load_split(n.split, data_root).images[n.index] for n in neighbours)


@dataclass
class EvidenceSources:
    """The classifier and case index when they can be loaded, and why not when they cannot.

    The classifier's opinions carry the same conformal ``uncertain`` flag as in the graph.
    """

    classifier: CaseClassifier | None = None
    index: CaseIndex | None = None
    missing: dict[str, str] = field(default_factory=dict)  # "classifier" / "index" -> reason

    @classmethod
    def load(cls, settings: Settings, *, classifier: bool = True, index: bool = True) -> EvidenceSources:
        out = cls()
        if classifier:
            from casereview.tools.classifier_tool import case_classifier

            try:
                out.classifier = case_classifier(settings)
            except CaseReviewError as exc:
                out.missing["classifier"] = str(exc)
        if index:
            try:
                from casereview.tools.case_index import open_index

                out.index = open_index(settings)
            except (ImportError, CaseReviewError) as exc:
                out.missing["index"] = str(exc)
        for what, why in out.missing.items():
            log.info("no %s: %s", what, why)
        return out

    def explain(self) -> str:
        """Why evidence is missing, to append to a rendering error."""
        return "; ".join(f"no {what}: {why}" for what, why in self.missing.items())

    def evidence(self, cases: Sequence[Case], settings: Settings, k: int | None = None) -> list[Evidence]:
        """Evidence for each case from whatever sources loaded (train split as the case base)."""
        k = k or settings.index.k
        opinions = [self.classifier.opinion(c.image)[0] for c in cases] if self.classifier else None
        out = []
        for i, case in enumerate(cases):
            neighbours = None
            if self.index is not None:
                neighbours = tuple(self.index.search_image(case.image, k, split="train", exclude_case_id=case.case_id))
            out.append(
                Evidence(
                    case_id=case.case_id,
                    image=case.image,
                    opinion=opinions[i] if opinions else None,
                    neighbours=neighbours,
                    neighbour_images=neighbour_images(neighbours, settings.data.root) if neighbours else None,
                )
            )
        return out


def require(sources: EvidenceSources, what: str, purpose: str) -> None:
    """Raise a clear error when ``what`` ("classifier" or "index") is needed but did not load."""
    if what in sources.missing:
        raise ReporterError(f"{purpose} needs the {what}: {sources.missing[what]}")
