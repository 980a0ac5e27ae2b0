"""Choosing cases to show: a representative sample of a split (both classes, confident and
near-threshold cases, the classifier's errors)."""

from __future__ import annotations

import numpy as np

from casereview.data import case_id, load_split
from casereview.tools.context import RunContext
from casereview.training.predict import predict_proba


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


def pick_cases(ctx: RunContext, split: str, n: int) -> list[tuple[str, str]]:
    """``n`` representative case refs of ``split`` by the run's classifier, with why each was picked."""
    data = load_split(split, ctx.settings.data.root, ctx.settings.data.download)
    clf = ctx.classifier.clf
    chosen = pick_representative(data.labels, predict_proba(clf, data.images), clf.threshold, n)
    return [(case_id(split, i), why) for i, why in chosen]
