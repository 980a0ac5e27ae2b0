"""The evidence of many cases at once: what the check_input and retrieve nodes would write for each,
from one batched forward pass, one batched gate product and one query per neighbour count.

``casereview review`` passes it in as graph input for the dataset cases of a run, ``casereview
batch`` for every case of a batch (once for all its arms); the nodes then skip the work whose
result is already in the state. The probes of a batch are transforms of this input.
"""

from __future__ import annotations

import numpy as np

from casereview.config import GraphConfig
from casereview.data import Case
from casereview.schemas import CaseEvidence, ClassifierResult, Neighbour
from casereview.tools.context import RunContext

OTHER = {"normal": "pneumonia", "pneumonia": "normal"}


def neighbour_count(opinion: ClassifierResult, graph: GraphConfig) -> int:
    """More similar cases for an uncertain opinion."""
    return graph.k_uncertain if opinion.uncertain else graph.k


def own_case(case_id: str, split: str | None) -> str | None:
    """The id the index must not return for a case: its own, when it is a dataset case."""
    return case_id if split else None


def batch_evidence(ctx: RunContext, cases: list[Case]) -> list[CaseEvidence]:
    """Per case, the evidence the classify, check_input and retrieve nodes would compute (graph input ``precomputed``)."""
    if not cases:
        return []
    images = np.stack([c.image for c in cases])
    with ctx.classifier.clf.all_cores():
        opinions, embeddings = ctx.classifier.analyse(images)
    measures = ctx.gate.measures(images, embeddings=embeddings)
    for i, case in enumerate(cases):
        if case.views is not None:  # an image file: the gate also checks the resize
            measures[i] = measures[i].model_copy(update={"resize_spread": ctx.gate.resize_spread(case.views)})
    vectors = np.stack([ctx.case_vector(im, emb) for im, emb in zip(images, embeddings)])
    g = ctx.settings.graph
    ks = [neighbour_count(op, g) for op in opinions]
    neighbours: list[list[Neighbour]] = [[] for _ in cases]
    for k in set(ks):
        rows = [i for i, ki in enumerate(ks) if ki == k]
        found = ctx.index.search_vectors(vectors[rows], k, g.case_base, [own_case(cases[i].case_id, cases[i].split) for i in rows])
        for i, hits in zip(rows, found):
            neighbours[i] = hits
    return [CaseEvidence(classifier=op, embedding=emb.tolist(), gate=m, neighbours=nb)
            for op, emb, m, nb in zip(opinions, embeddings, measures, neighbours)]


def flip_opinion(op: ClassifierResult) -> ClassifierResult:
    """The classifier's opinion reversed: p -> 1 - p and the threshold t -> 1 - t, so the label swaps
    and the prompt's probability and threshold stay consistent with it; the prediction set swaps
    too and the uncertainty flag is kept (the probe changes what the evidence says, not how sure)."""
    return op.model_copy(update={
        "prob_pneumonia": 1.0 - op.prob_pneumonia, "threshold": 1.0 - op.threshold, "label": OTHER[op.label],
        "prediction_set": sorted(OTHER[lab] for lab in op.prediction_set),
    })


def swap_labels(neighbours: list[Neighbour]) -> list[Neighbour]:
    """The same neighbours (same images, same similarities) with their labels swapped."""
    return [n.model_copy(update={"label": OTHER[n.label]}) for n in neighbours]


PROBE_TRANSFORMS = {
    "flip-classifier": lambda ev: ev.model_copy(update={"classifier": flip_opinion(ev.classifier)}),
    "swap-neighbours": lambda ev: ev.model_copy(update={"neighbours": swap_labels(ev.neighbours)}),
}
