"""Metrics against scikit-learn, calibration and the validation threshold rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from metrics_support import assert_close
from casereview.training.metrics import (
    binary_metrics,
    bootstrap_intervals,
    bootstrap_youden_threshold,
    expected_calibration_error,
    fit_temperature,
    sigmoid,
    youden_threshold,
)


def test_known_case_by_hand():
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    m = binary_metrics(y, p, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 (pos, neg) pairs ranked correctly


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.77])
def test_metrics_agree_with_sklearn(threshold):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1)
    m = binary_metrics(y, p, threshold)
    pred = (p >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))


def test_bootstrap_intervals_bracket_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.4 * y + 0.6 * rng.random(300), 0, 1)
    m, ci = binary_metrics(y, p, 0.5), bootstrap_intervals(y, p, 0.5, n_boot=200)
    for k, (lo, hi) in ci.items():
        assert lo <= m[k] <= hi and hi - lo < 0.3


def test_ece_perfect_and_miscalibrated():
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, np.clip(p + 0.3, 0, 1)) > 0.2


def test_temperature_recovers_a_known_overconfidence():
    rng = np.random.default_rng(3)
    true_logits = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < sigmoid(true_logits)).astype(int)
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.08)
    assert fit_temperature(true_logits, y) == pytest.approx(1.0, rel=0.08)


def test_youden_threshold_separates_a_separable_set():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    t = youden_threshold(y, p)
    assert 0.3 < t <= 0.6
    rule = bootstrap_youden_threshold(y, p, n_boot=100)
    assert 0.3 < rule["threshold"] <= 0.6 and rule["p05"] <= rule["threshold"] <= rule["p95"]


# What the hand-written bootstrap, confusion counts and sigmoid computed on fixture_scores() (commit 31e8126),
# before they were replaced by the helpers shared with the batch statistics and scipy's expit:
# `json.dumps(pinned_outputs())`.
PINNED = Path(__file__).parent / "golden" / "classifier_metrics_31e8126.json"


def pinned_outputs() -> dict:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 * y + 0.7 * rng.random(80), 0, 1)
    small_y, small_p = y[:9], p[:9]  # 9 cases: some resamples hold one class only and are skipped
    logits = rng.normal(0, 4, 50).astype(np.float32)  # float32, as the classifier returns them
    return {
        "metrics": {str(t): binary_metrics(y, p, t) for t in (0.3, 0.5, 0.8)},
        "intervals": bootstrap_intervals(y, p, 0.5, n_boot=300, seed=3),
        "intervals_small": bootstrap_intervals(small_y, small_p, 0.5, n_boot=300),
        "youden": bootstrap_youden_threshold(y, p, n_boot=200, seed=1),
        "sigmoid": sigmoid(logits / np.float32(1.3)).tolist(),
    }


def test_outputs_equal_those_of_the_hand_written_code():
    assert_close(json.loads(json.dumps(pinned_outputs())), json.loads(PINNED.read_text()))
