"""Split-conformal sets centred on the decision threshold."""

from __future__ import annotations

import numpy as np
import pytest

from casereview.training.conformal import centred, conformal_qhat, prediction_set


def test_the_threshold_maps_to_one_half_and_order_is_kept():
    p = np.array([0.05, 0.2, 0.3, 0.6, 0.99])
    c = centred(p, 0.3)
    assert c[2] == pytest.approx(0.5) and np.all(np.diff(c) > 0)
    assert centred(p, 0.5) == pytest.approx(p)


def test_sets_are_centred_on_the_threshold():
    qhat = 0.45  # a case is certain once its centred probability is beyond 0.55 either way
    assert prediction_set(0.30, qhat, centre=0.30) == []  # at the threshold neither label reaches 1 - qhat
    assert prediction_set(0.30, 0.5, centre=0.30) == ["normal", "pneumonia"]
    assert prediction_set(0.45, qhat, centre=0.30) == ["pneumonia"]  # above the threshold, though below 0.5
    assert prediction_set(0.45, qhat, centre=0.50) == ["normal"]  # the same p around 0.5 reads the other way


def test_coverage_on_exchangeable_data_is_at_least_one_minus_alpha():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    p = np.clip(np.where(y == 1, rng.beta(5, 2, len(y)), rng.beta(2, 5, len(y))), 1e-6, 1 - 1e-6)
    qhat = conformal_qhat(y[:2000], p[:2000], alpha=0.1, centre=0.4)
    names = np.array(["normal", "pneumonia"])
    covered = [names[t] in prediction_set(pp, qhat, 0.4) for t, pp in zip(y[2000:], p[2000:])]
    assert np.mean(covered) >= 0.88  # 1 - alpha, less sampling error of a 2,000-case check
