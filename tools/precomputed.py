"""Evidence computed ahead in one batched pass and served to the review graph's nodes case by case.

Reviewing many cases one at a time runs the classifier's forward pass (shared by check_input,
classify and retrieve), the input gate's distance and the index query once per case, one image at
a time. The wrappers below stand in for the run context's ``classifier``, ``gate`` and ``index``:
the graph runs unchanged, each node makes the call it always makes, and the answer comes from the
batched pass (an image or vector the pass did not see goes to the real resource). ``casereview
review`` uses them for the dataset cases of a run, ``casereview batch`` for every case of a batch
(once for all its arms).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from casereview.config import Settings
from casereview.data import load_case
from casereview.schemas import ClassifierResult, GateMeasure, Neighbour
from casereview.tools.case_index import CaseIndex
from casereview.tools.classifier_tool import CaseClassifier, all_cores
from casereview.tools.context import RunContext
from casereview.tools.input_gate import InputGate


def _key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


class Delegating:
    """Everything not overridden goes to the wrapped resource (``clf``, ``embedder_id``, ...)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class PrecomputedClassifier(Delegating):
    """``analyse_one(image)`` (and so ``opinion`` and ``embedding``) from one batched forward pass over ``images``."""

    def __init__(self, inner: CaseClassifier, images: np.ndarray):
        super().__init__(inner)
        with all_cores():
            opinions, embeddings = inner.analyse(images) if len(images) else ([], [])
        self._hits = {_key(im): (op, emb) for im, op, emb in zip(images, opinions, embeddings)}

    def analyse_one(self, image: np.ndarray) -> tuple[ClassifierResult, np.ndarray]:
        hit = self._hits.get(_key(image))
        return hit if hit is not None else self.inner.analyse_one(image)

    def opinion(self, image: np.ndarray) -> ClassifierResult:
        return self.analyse_one(image)[0]

    def embedding(self, image: np.ndarray) -> np.ndarray:
        return self.analyse_one(image)[1]


class PrecomputedGate(Delegating):
    """``measure(image)`` of a 28x28 case from one batched pass over ``images`` (a file's resize views
    still go to the real gate)."""

    def __init__(self, inner: InputGate, images: np.ndarray, embeddings: np.ndarray):
        super().__init__(inner)
        self._hits = {_key(im): m for im, m in zip(images, inner.measures(images, embeddings=embeddings))}

    def measure(self, image: np.ndarray, views: np.ndarray | None = None, embedding: np.ndarray | None = None) -> GateMeasure:
        hit = self._hits.get(_key(image)) if views is None else None
        return hit if hit is not None else self.inner.measure(image, views, embedding)


def _vkey(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class PrecomputedIndex(Delegating):
    """``search_vectors`` from one batched query pass.

    ``queries`` holds, per vector, the (k, split, excluded case id) that the retrieve node will ask
    for, so every answer is the one the node would get from the index itself.
    """

    def __init__(self, inner: CaseIndex, vectors: np.ndarray, queries: list[tuple[int, str, str | None]]):
        super().__init__(inner)
        self._hits: dict[tuple, list[Neighbour]] = {}
        for (k, split), rows in _group(queries).items():
            found = inner.search_vectors(vectors[rows], k, split, [queries[i][2] for i in rows])
            for i, hits in zip(rows, found):
                self._hits[(_vkey(vectors[i]), *queries[i])] = hits

    def search_vectors(self, vectors: np.ndarray, k: int, split: str | None = "train",
                       exclude_case_ids: list[str | None] | None = None) -> list[list[Neighbour]]:
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        exclude = list(exclude_case_ids) if exclude_case_ids is not None else [None] * len(vectors)
        keys = [(_vkey(v), k, split, e) for v, e in zip(vectors, exclude)]
        if all(key in self._hits for key in keys):
            return [list(self._hits[key]) for key in keys]
        return self.inner.search_vectors(vectors, k, split, exclude_case_ids)


def _group(queries: list[tuple[int, str, str | None]]) -> dict[tuple[int, str], list[int]]:
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (k, split, _) in enumerate(queries):
        groups.setdefault((k, split), []).append(i)
    return groups


def case_images(settings: Settings, refs: list[str]) -> np.ndarray:
    """The 28x28 images of the cases, decoded as ``load_case`` (and so the graph) decodes them."""
    images = [load_case(ref, settings.data.root, settings.data.download).image for ref in refs]
    return np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)


def precompute(ctx: RunContext, images: np.ndarray, refs: list[str | None]) -> RunContext:
    """``ctx`` with its classifier, input gate and index answering from one batched pass over ``images``.

    ``refs``: each image's dataset case id (``test:42``, which the index never returns for
    itself), or None for an image file. The queries are the ones the retrieve node will make:
    ``graph.k_uncertain`` neighbours for an uncertain opinion, else ``graph.k``, from the case base.
    """
    if not len(images):
        return ctx
    classifier = PrecomputedClassifier(ctx.classifier, images)
    # The context's resources are cached properties: replacing the cached values is what `sharing` copies.
    ctx.__dict__["classifier"] = classifier
    ctx.__dict__["gate"] = PrecomputedGate(ctx.gate, images, np.stack([classifier.embedding(im) for im in images]))
    vectors = np.stack([ctx.case_vector(im) for im in images])  # the classifier's embeddings for a cnn index
    g = ctx.settings.graph
    queries = [(g.k_uncertain if classifier.opinion(im).uncertain else g.k, g.case_base, ref)
               for im, ref in zip(images, refs)]
    ctx.__dict__["index"] = PrecomputedIndex(ctx.index, vectors, queries)
    return ctx

