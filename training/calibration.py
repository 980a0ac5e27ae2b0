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


def temperature_and_threshold(logits: np.ndarray, y: np.ndarray, fit: np.ndarray | slice, seed: int,
                              where: str) -> dict[str, Any]:
    """The temperature (NLL), then the threshold rule on the temperature-scaled probabilities, both fitted
    on the validation cases ``fit`` (``where`` names them); ECE before and after on all of ``y``."""
    temperature = fit_temperature(logits[fit], y[fit])
    prob = sigmoid(logits / temperature)
    thr = bootstrap_youden_threshold(y[fit], prob[fit], seed=seed)
    return {
        "temperature": temperature,
        "threshold": thr["threshold"],
        "threshold_rule": f"median over 500 bootstrap resamples of {where} of the Youden-optimal threshold",
        "threshold_p05": thr["p05"],
        "threshold_p95": thr["p95"],
        "threshold_single_youden": thr["single_youden"],
        "val_ece_before": expected_calibration_error(y, sigmoid(logits)),
        "val_ece_after": expected_calibration_error(y, prob),
    }


def fit_calibration(logits: np.ndarray, y: np.ndarray, alpha: float = CONFORMAL_ALPHA, seed: int = 0) -> dict[str, Any]:
    """Temperature and threshold on validation part A, conformal quantile on part B (validation logits in)."""
    part_a, part_b = validation_parts(y)
    cal = temperature_and_threshold(logits, y, part_a, seed, "validation part A")
    prob = sigmoid(logits / cal["temperature"])
    qhat = conformal_qhat(y[part_b], prob[part_b], alpha, centre=cal["threshold"])
    return {
        **cal,
        "fitted_on": f"val part A (n={len(part_a)}, stratified half, seed {SPLIT_SEED})",
        "conformal": {
            "alpha": alpha,
            "qhat": qhat,
            "centre": cal["threshold"],
            "fitted_on": f"val part B (n={len(part_b)}, the other stratified half, seed {SPLIT_SEED})",
            "n": int(len(part_b)),
        },
        "val_part_b_metrics": binary_metrics(y[part_b], prob[part_b], cal["threshold"]),
    }
