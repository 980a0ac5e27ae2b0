"""Evidence for a batch: the classifier's opinions and the neighbours of every case computed in one
batched pass, served to the review graph's nodes case by case; and the counterfactual evidence of
the flip probe.

A batch reviews each case once per arm (variant x backend) and the check_input, classify and
retrieve nodes would repeat the same single-image forward passes and index query for every arm. The wrappers below
stand in for the run context's ``classifier`` and ``index``: the graph runs unchanged, each node
makes the call it always makes, and the answer comes from the batched pass (an image the pass did
not see goes to the real resource).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from casereview.schemas import ClassifierResult, GateMeasure, Neighbour
from casereview.tools.case_index import CaseIndex
from casereview.tools.classifier_tool import CaseClassifier
from casereview.tools.input_gate import InputGate

OTHER = {"normal": "pneumonia", "pneumonia": "normal"}


def _key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


class Delegating:
    """Everything not overridden goes to the wrapped resource (``clf``, ``embedder_id``, ...)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class PrecomputedClassifier(Delegating):
    """``opinion(image)`` from one batched forward pass over ``images``."""

    def __init__(self, inner: CaseClassifier, images: np.ndarray):
        super().__init__(inner)
        self._opinions = {_key(im): op for im, op in zip(images, inner.opinions(images))} if len(images) else {}

    def opinion(self, image: np.ndarray) -> ClassifierResult:
        hit = self._opinions.get(_key(image))
        return hit if hit is not None else self.inner.opinion(image)


class PrecomputedGate(Delegating):
    """``measure(image)`` of the input gate from one batched pass (image files with resize views,
    which only ``casereview review`` of external files has, go to the gate itself)."""

    def __init__(self, inner: InputGate, images: np.ndarray):
        super().__init__(inner)
        self._measures = {_key(im): m for im, m in zip(images, inner.measures(images))} if len(images) else {}

    def measure(self, image: np.ndarray, views: np.ndarray | None = None) -> GateMeasure:
        hit = self._measures.get(_key(image)) if views is None else None
        return hit if hit is not None else self.inner.measure(image, views)


class PrecomputedIndex(Delegating):
    """``search_image`` from one batched embedding and query pass.

    ``queries`` holds, per image, the (k, split, excluded case id) that the retrieve node will ask
    for, so every answer is the one the node would get from the index itself.
    """

    def __init__(self, inner: CaseIndex, images: np.ndarray, queries: list[tuple[int, str, str | None]]):
        super().__init__(inner)
        self._hits: dict[tuple, list[Neighbour]] = {}
        if not len(images):
            return
        vectors = inner.embedder.embed_images(images)
        for (k, split), rows in _group(queries).items():
            found = inner.search_vectors(vectors[rows], k, split, [queries[i][2] for i in rows])
            for i, hits in zip(rows, found):
                self._hits[(_key(images[i]), *queries[i])] = hits

    def search_image(self, image: np.ndarray, k: int, split: str | None = "train",
                     exclude_case_id: str | None = None) -> list[Neighbour]:
        hit = self._hits.get((_key(image), k, split, exclude_case_id))
        return list(hit) if hit is not None else self.inner.search_image(image, k, split, exclude_case_id)


def _group(queries: list[tuple[int, str, str | None]]) -> dict[tuple[int, str], list[int]]:
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (k, split, _) in enumerate(queries):
        groups.setdefault((k, split), []).append(i)
    return groups


class FlippedClassifier(Delegating):
    """The classifier's opinion reversed: p -> 1 - p and the threshold t -> 1 - t, so the label swaps
    and the prompt's probability and threshold stay consistent with it; the prediction set swaps
    too and the uncertainty flag is kept (the probe changes what the evidence says, not how sure)."""

    def opinion(self, image: np.ndarray) -> ClassifierResult:
        return flip_opinion(self.inner.opinion(image))


def flip_opinion(op: ClassifierResult) -> ClassifierResult:
    return op.model_copy(update={
        "prob_pneumonia": 1.0 - op.prob_pneumonia, "threshold": 1.0 - op.threshold, "label": OTHER[op.label],
        "prediction_set": sorted(OTHER[lab] for lab in op.prediction_set),
    })


class SwappedNeighbourIndex(Delegating):
    """The same neighbours (same images, same similarities) with their labels swapped."""

    def search_image(self, image: np.ndarray, k: int, split: str | None = "train",
                     exclude_case_id: str | None = None) -> list[Neighbour]:
        hits = self.inner.search_image(image, k, split, exclude_case_id)
        return [h.model_copy(update={"label": OTHER[h.label]}) for h in hits]
