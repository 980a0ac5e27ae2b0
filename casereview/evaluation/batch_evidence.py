"""Counterfactual evidence for the flip probe of a batch: the classifier's opinion reversed, or the
retrieved cases' labels swapped, served to the review graph's nodes in place of the real ones."""

from __future__ import annotations

import numpy as np

from casereview.schemas import ClassifierResult, Neighbour
from casereview.tools.precomputed import Delegating

OTHER = {"normal": "pneumonia", "pneumonia": "normal"}


class FlippedClassifier(Delegating):
    """The classifier's opinion reversed: p -> 1 - p and the threshold t -> 1 - t, so the label swaps
    and the prompt's probability and threshold stay consistent with it; the prediction set swaps
    too and the uncertainty flag is kept (the probe changes what the evidence says, not how sure).
    The embedding (the input gate's and the index's view of the image) is left alone."""

    def analyse_one(self, image: np.ndarray) -> tuple[ClassifierResult, np.ndarray]:
        opinion, embedding = self.inner.analyse_one(image)
        return flip_opinion(opinion), embedding

    def opinion(self, image: np.ndarray) -> ClassifierResult:
        return self.analyse_one(image)[0]


def flip_opinion(op: ClassifierResult) -> ClassifierResult:
    return op.model_copy(update={
        "prob_pneumonia": 1.0 - op.prob_pneumonia, "threshold": 1.0 - op.threshold, "label": OTHER[op.label],
        "prediction_set": sorted(OTHER[lab] for lab in op.prediction_set),
    })


class SwappedNeighbourIndex(Delegating):
    """The same neighbours (same images, same similarities) with their labels swapped."""

    def search_vectors(self, vectors: np.ndarray, k: int, split: str | None = "train",
                       exclude_case_ids: list[str | None] | None = None) -> list[list[Neighbour]]:
        rows = self.inner.search_vectors(vectors, k, split, exclude_case_ids)
        return [[h.model_copy(update={"label": OTHER[h.label]}) for h in hits] for hits in rows]
