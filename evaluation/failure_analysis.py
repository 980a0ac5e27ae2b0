"""Failure analysis of a thresholded classifier: outcome groups, simple image statistics, the conformal flag.

Everything is a pure function of labels, calibrated probabilities and uint8 images, so that the
report can show evidence (errors vs correct cases) rather than impressions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from casereview.training.conformal import prediction_set

OUTCOMES = ("TP", "TN", "FP", "FN")
DARK, BRIGHT = 10, 245  # uint8 levels counted as black border / saturated


def outcomes(y: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """'TP' | 'TN' | 'FP' | 'FN' per case at ``prob >= threshold``."""
    pred = np.asarray(prob) >= threshold
    y = np.asarray(y).astype(bool)
    return np.select([pred & y, ~pred & ~y, pred & ~y], ["TP", "TN", "FP"], "FN")


def border_fraction(images: np.ndarray, width: int = 3) -> np.ndarray:
    """Fraction of pixels in the outer ``width``-pixel frame that are near black (a film shrunk inside a frame)."""
    mask = np.ones(images.shape[1:], dtype=bool)
    mask[width:-width, width:-width] = False
    return (images[:, mask] <= DARK).mean(axis=1)


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image brightness (mean), contrast (std), black-frame fraction and saturated fraction."""
    x = images.astype(np.float64)
    return {
        "brightness": x.mean(axis=(1, 2)),
        "contrast": x.std(axis=(1, 2)),
        "black_border": border_fraction(images),
        "saturated": (images >= BRIGHT).mean(axis=(1, 2)),
    }


def statistics_by_outcome(images: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """Median and interquartile range of each image statistic per outcome group (n included)."""
    stats = image_statistics(images)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for g in OUTCOMES:
        sel = groups == g
        table[g] = {"n": {"value": int(sel.sum())}}
        for name, values in stats.items():
            v = values[sel]
            table[g][name] = ({"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                               "q75": float(np.quantile(v, 0.75))} if len(v) else {})
    return table


def conformal_summary(y: np.ndarray, prob: np.ndarray, threshold: float, conformal: dict[str, Any]) -> dict[str, Any]:
    """Empirical coverage and flagged rate of the shipped conformal sets, and the errors the flag catches."""
    sets = [prediction_set(float(p), conformal["qhat"], conformal["centre"]) for p in prob]
    names = np.where(np.asarray(y) == 1, "pneumonia", "normal")
    covered = np.array([n in s for n, s in zip(names, sets)])
    flagged = np.array([len(s) != 1 for s in sets])
    wrong = outcomes(y, prob, threshold)
    errors = np.isin(wrong, ("FP", "FN"))
    return {
        "coverage": float(covered.mean()),
        "coverage_normal": float(covered[names == "normal"].mean()),
        "coverage_pneumonia": float(covered[names == "pneumonia"].mean()),
        "flagged_rate": float(flagged.mean()),
        "empty_sets": int(sum(len(s) == 0 for s in sets)),
        "n_errors": int(errors.sum()),
        "errors_flagged": int((errors & flagged).sum()),
        "correct_flagged": int((~errors & flagged).sum()),
        "n": int(len(y)),
    }


def between(prob: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Indices of cases whose probability lies in [min(lo, hi), max(lo, hi)), sorted by probability."""
    a, b = sorted((lo, hi))
    idx = np.flatnonzero((prob >= a) & (prob < b))
    return idx[np.argsort(prob[idx])]


def random_examples(groups: np.ndarray, group: str, n: int, seed: int = 0) -> list[int]:
    """``n`` cases of an outcome group drawn at random (fixed seed): a fair sample, not the best-looking ones."""
    idx = np.flatnonzero(groups == group)
    return sorted(np.random.default_rng(seed).choice(idx, size=min(n, len(idx)), replace=False).tolist())
