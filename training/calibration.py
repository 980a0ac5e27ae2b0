"""The released model's calibration, fitted on validation only: temperature, threshold, conformal quantile.

Validation is split once, stratified by class and with a fixed seed, into two halves:
part A fits the temperature and the decision threshold, part B fits the split-conformal
quantile. The conformal score depends on the temperature and the threshold (the sets are
centred on it), so fitting all three on the same cases would make the coverage guarantee
optimistic; with separate halves it holds for part B's exchangeable cases as stated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from casereview.training.conformal import conformal_qhat
from casereview.training.metrics import (
    binary_metrics,
    bootstrap_youden_threshold,
    expected_calibration_error,
    fit_temperature,
    sigmoid,
)

CONFORMAL_ALPHA = 0.05
SPLIT_SEED = 0


def validation_parts(y: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of validation parts A and B: each class shuffled with ``seed`` and halved."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2 :])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def fit_calibration(logits: np.ndarray, y: np.ndarray, alpha: float = CONFORMAL_ALPHA, seed: int = 0) -> dict[str, Any]:
    """Temperature and threshold on validation part A, conformal quantile on part B (validation logits in)."""
    part_a, part_b = validation_parts(y)
    temperature = fit_temperature(logits[part_a], y[part_a])
    prob = sigmoid(logits / temperature)
    thr = bootstrap_youden_threshold(y[part_a], prob[part_a], seed=seed)
    qhat = conformal_qhat(y[part_b], prob[part_b], alpha, centre=thr["threshold"])
    return {
        "temperature": temperature,
        "threshold": thr["threshold"],
        "threshold_rule": "median over 500 bootstrap resamples of validation part A of the Youden-optimal threshold",
        "threshold_p05": thr["p05"],
        "threshold_p95": thr["p95"],
        "threshold_single_youden": thr["single_youden"],
        "val_ece_before": expected_calibration_error(y, sigmoid(logits)),
        "val_ece_after": expected_calibration_error(y, prob),
        "fitted_on": f"val part A (n={len(part_a)}, stratified half, seed {SPLIT_SEED})",
        "conformal": {
            "alpha": alpha,
            "qhat": qhat,
            "centre": thr["threshold"],
            "fitted_on": f"val part B (n={len(part_b)}, the other stratified half, seed {SPLIT_SEED})",
            "n": int(len(part_b)),
        },
        "val_part_b_metrics": binary_metrics(y[part_b], prob[part_b], thr["threshold"]),
    }
