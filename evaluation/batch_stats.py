"""Statistics for comparing arms on the same cases: binary scores of an impression, paired bootstrap
intervals (Wilson intervals for the proportions), exact McNemar tests with Holm's correction, Cohen's kappa and risk-coverage. Confusion counts
and the bootstrap are the classifier metrics' own (``casereview.training.metrics``); the McNemar test is
scipy's ``binomtest``, kappa scikit-learn's.

An impression is ``pneumonia``, ``normal``, ``indeterminate`` or None (unparseable). Scores count
anything but the right label as wrong: an arm does not gain by abstaining.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from casereview.training.metrics import confusion_counts, percentile_interval

SCORE_NAMES = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "f1")
POSITIVE, NEGATIVE = "pneumonia", "normal"


def codes(labels: Sequence[object] | np.ndarray) -> np.ndarray:
    """Labels as int8: pneumonia 1, normal 0, anything else (indeterminate, None) -1."""
    x = np.asarray(labels, dtype=object)
    return np.where(x == POSITIVE, 1, np.where(x == NEGATIVE, 0, -1)).astype(np.int8)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)


def scores_coded(truth: np.ndarray, said: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, sensitivity, specificity, balanced accuracy and F1 (pneumonia positive) of labels as
    :func:`codes`, over the last axis (one row of cases, or a matrix of bootstrap draws).

    F1 counts every pneumonia case not called pneumonia (abstentions included) as a false negative
    and every normal case called pneumonia as a false positive.
    """
    tp, fp, tn, fn = confusion_counts(truth, said)
    sens, spec = _div(tp, tp + fn), _div(tn, (truth == 0).sum(-1))
    return {
        "accuracy": (tp + tn) / truth.shape[-1],
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }


def wilson_interval(k: int, n: int) -> list[float]:
    """95% Wilson score interval of the proportion k/n (NaNs for n = 0). Unlike a bootstrap over the
    cases, it is not degenerate on small n: 5 of 5 right gives [56.6%, 100%], not [100%, 100%]."""
    if n == 0:
        return [float("nan"), float("nan")]
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def scores_with_intervals(truth: np.ndarray, said: np.ndarray, draws: np.ndarray) -> dict[str, dict[str, float | list[float]]]:
    """Each score with its percentile bootstrap interval over ``draws``."""
    truth, said = codes(truth), codes(said)
    point, boot = scores_coded(truth, said), scores_coded(truth[draws], said[draws])
    return {k: {"value": float(point[k]), "ci95": percentile_interval(boot[k])} for k in SCORE_NAMES}


def proportions(truth: Sequence[object], said: Sequence[object]) -> dict[str, dict[str, int | list[float]]]:
    """Accuracy, sensitivity and specificity as counts: ``k`` right of ``n`` with a 95% Wilson interval."""
    truth, said = codes(truth), codes(said)
    tp, _, tn, fn = (int(c) for c in confusion_counts(truth, said))
    counts = {"accuracy": (tp + tn, len(truth)), "sensitivity": (tp, tp + fn), "specificity": (tn, int((truth == 0).sum()))}
    return {name: {"k": k, "n": n, "wilson95": wilson_interval(k, n)} for name, (k, n) in counts.items()}


def paired_difference(truth: np.ndarray, said_a: np.ndarray, said_b: np.ndarray, draws: np.ndarray) -> dict[str, dict]:
    """Score of a minus score of b, with intervals from the same resampled cases for both."""
    truth, a, b = codes(truth), codes(said_a), codes(said_b)
    pa, pb = scores_coded(truth, a), scores_coded(truth, b)
    ba, bb = scores_coded(truth[draws], a[draws]), scores_coded(truth[draws], b[draws])
    return {k: {"value": float(pa[k] - pb[k]), "ci95": percentile_interval(ba[k] - bb[k])} for k in SCORE_NAMES}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """Exact (binomial) McNemar test on paired correctness: two-sided p of the discordant split."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return {"only_a_right": only_a, "only_b_right": only_b, "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def cohen_kappa(a: Sequence[object], b: Sequence[object]) -> float:
    """Cohen's kappa of two labelings of the same cases (any labels; None is a label of its own): nan
    without cases, 1.0 where both give one and the same label throughout (scikit-learn leaves that 0/0)."""
    a, b = [str(x) for x in a], [str(x) for x in b]
    if not a:
        return float("nan")
    return 1.0 if len(set(a) | set(b)) == 1 else float(cohen_kappa_score(a, b))


def risk_coverage(wrong: np.ndarray, risk: np.ndarray, points: int = 101) -> dict[str, list[float] | float]:
    """Cases kept from the lowest risk up: the error rate of the k kept against coverage k/n (at most
    ``points`` points of the curve are returned), and the area under the whole curve (lower is better)."""
    wrong = np.asarray(wrong, float)[np.argsort(np.asarray(risk, float), kind="stable")]
    if not len(wrong):
        return {"coverage": [], "risk": [], "aurc": float("nan")}
    k = np.arange(1, len(wrong) + 1)
    curve = np.cumsum(wrong) / k
    keep = np.unique(np.linspace(0, len(wrong) - 1, min(points, len(wrong))).round().astype(int))
    return {"coverage": (k[keep] / len(wrong)).round(5).tolist(), "risk": curve[keep].round(5).tolist(),
            "aurc": float(curve.mean())}


def p50_p95(values: Sequence[float | None]) -> dict[str, float] | None:
    """Median and 95th percentile of the values given (None: not measured)."""
    values = [v for v in values if v is not None]
    return {"p50": float(np.quantile(values, 0.5)), "p95": float(np.quantile(values, 0.95))} if values else None
