"""Classification metrics, bootstrap intervals, calibration and the decision-threshold rule.

Everything here is a pure function of labels and scores, built on scikit-learn and scipy. The
confusion counts and the bootstrap are shared with the batch statistics (``casereview.evaluation``).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

METRIC_NAMES = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "balanced_accuracy",
    "roc_auc",
    "pr_auc",
)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def confusion_counts(truth: np.ndarray, said: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, tn, fn) over the last axis (one row of cases, or a matrix of bootstrap resamples), with
    1 the positive and 0 the negative label. ``said`` may hold other codes (an abstention): they count
    as a miss on a positive case and as neither tn nor fp on a negative one."""
    pos, neg = truth == 1, truth == 0
    return ((pos & (said == 1)).sum(-1), (neg & (said == 1)).sum(-1), (neg & (said == 0)).sum(-1),
            (pos & (said != 1)).sum(-1))


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) case indices drawn with replacement, one resample a row; the same rows serve every
    metric and every arm compared (paired)."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of ``values`` (nan draws, where a metric is undefined, left out)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    alpha = (1 - level) / 2
    return [float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))]


def binary_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold metrics at ``prob >= threshold`` plus the threshold-free ROC and PR AUC.

    Threshold metrics come from the confusion counts (fast enough for 1,000 bootstrap
    resamples); tests check them against scikit-learn's own functions.
    """
    y = np.asarray(y).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    tp, fp, tn, fn = (int(c) for c in confusion_counts(y, pred))
    recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    both = tp + fn > 0 and tn + fp > 0
    return {
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "specificity": specificity if tn + fp else float("nan"),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (recall + specificity) / 2 if both else float("nan"),
        "roc_auc": float(roc_auc_score(y, prob)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, prob)) if both else float("nan"),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def bootstrap_intervals(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (cases resampled with replacement) for METRIC_NAMES; resamples
    holding one class only are left out."""
    y, prob = np.asarray(y), np.asarray(prob)
    draws = [binary_metrics(y[idx], prob[idx], threshold)
             for idx in bootstrap_indices(len(y), n_boot, seed) if len(np.unique(y[idx])) == 2]
    return {m: tuple(percentile_interval(np.array([d[m] for d in draws]), level)) for m in METRIC_NAMES}


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width bins on p(pneumonia): sum_b |B|/N * |mean(y_b) - mean(p_b)|."""
    y, prob = np.asarray(y, dtype=float), np.asarray(prob, dtype=float)
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - prob[mask].mean())
    return float(ece)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """scipy's ``expit`` in float64: the classifier's logits are float32, and probabilities are compared
    with thresholds and written in float64."""
    return expit(np.asarray(z, dtype=np.float64))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the negative log-likelihood of sigmoid(logits / T) (Guo et al., 2017)."""
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64)
    res = minimize_scalar(lambda log_t: binary_nll(logits / np.exp(log_t), y),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def binary_nll(z: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels ``y`` under sigmoid(``z``)."""
    # log(1 + exp(-z)) for y=1, log(1 + exp(z)) for y=0, computed stably
    return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))


def youden_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (ties: the middle of the tied range)."""
    fpr, tpr, thr = roc_curve(y, prob)
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    # roc_curve's thresholds are the scores themselves; the optimal cut lies anywhere between
    # the best threshold and the next-lower score, so take the midpoint of that interval.
    lo_idx = min(best.max() + 1, len(thr) - 1)
    hi, lo = float(np.clip(thr[best.min()], 0, 1)), float(np.clip(thr[lo_idx], 0, 1))
    return (hi + lo) / 2


def bootstrap_youden_threshold(y: np.ndarray, prob: np.ndarray, n_boot: int = 500, seed: int = 0) -> dict[str, float]:
    """The shipped threshold rule: the median of Youden-optimal thresholds over bootstrap
    resamples of the validation set, with its 5th-95th percentile spread.

    Validation AUC is close to 1, so the single Youden-optimal cut jumps with a handful of
    cases; bagging it over resamples gives a cut that moves far less from seed to seed.
    Youden's J weighs sensitivity and specificity equally, so the rule does not depend on
    validation's class balance (74% pneumonia), which the test set does not share (62.5%).
    """
    y, prob = np.asarray(y), np.asarray(prob)
    t = np.array([youden_threshold(y[idx], prob[idx])
                  for idx in bootstrap_indices(len(y), n_boot, seed) if len(np.unique(y[idx])) == 2])
    return {
        "threshold": float(np.median(t)),
        "p05": float(np.quantile(t, 0.05)),
        "p95": float(np.quantile(t, 0.95)),
        "single_youden": youden_threshold(y, prob),
    }
