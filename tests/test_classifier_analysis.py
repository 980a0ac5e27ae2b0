"""Failure analysis, conformal reporting and the robustness shifts: pure functions with known answers."""

from __future__ import annotations

import numpy as np

from casereview.training.calibration import validation_parts
from casereview.evaluation.failure_analysis import (
    between,
    border_fraction,
    conformal_summary,
    outcomes,
    random_examples,
    statistics_by_outcome,
)
from casereview.studies.robustness import SHIFTS, choose_recipe, shifted, summary


def test_outcomes_and_between():
    y = np.array([1, 0, 0, 1])
    p = np.array([0.9, 0.2, 0.6, 0.3])
    assert outcomes(y, p, 0.5).tolist() == ["TP", "TN", "FP", "FN"]
    assert between(p, 0.5, 0.25).tolist() == [3]  # [0.25, 0.5): only 0.3


def test_border_fraction_sees_a_film_inside_a_black_frame():
    framed = np.full((1, 28, 28), 200, np.uint8)
    framed[:, :4], framed[:, -4:], framed[:, :, :4], framed[:, :, -4:] = 0, 0, 0, 0
    full = np.full((1, 28, 28), 200, np.uint8)
    assert border_fraction(framed)[0] == 1.0 and border_fraction(full)[0] == 0.0


def test_statistics_by_outcome_counts_groups():
    images = np.stack([np.full((28, 28), v, np.uint8) for v in (10, 100, 200, 250)])
    table = statistics_by_outcome(images, np.array(["TP", "TP", "FP", "TN"]))
    assert table["TP"]["n"]["value"] == 2 and table["TP"]["brightness"]["median"] == 55
    assert table["FN"]["n"]["value"] == 0 and table["FN"]["brightness"] == {}


def test_conformal_summary_counts_flags_and_caught_errors():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.95, 0.45, 0.55, 0.05])
    conf = {"qhat": 0.6, "centre": 0.5}  # sets hold both labels for 0.4 <= p <= 0.6
    s = conformal_summary(y, p, 0.5, conf)
    assert s["flagged_rate"] == 0.5 and s["n_errors"] == 2 and s["errors_flagged"] == 2 and s["coverage"] == 1.0


def test_random_examples_are_a_seeded_subset_of_the_group():
    groups = np.array(["TP", "TN"] * 10)
    a = random_examples(groups, "TN", 4)
    assert a == random_examples(groups, "TN", 4) and all(groups[i] == "TN" for i in a) and len(a) == 4


def test_validation_parts_are_disjoint_stratified_halves():
    y = np.array([0] * 11 + [1] * 30)
    a, b = validation_parts(y)
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(y)
    assert abs(y[a].sum() - y[b].sum()) <= 1 and abs((y[a] == 0).sum() - (y[b] == 0).sum()) <= 1


def test_shifts_change_images_as_named():
    images = np.full((2, 28, 28), 200, np.uint8)
    by_label = {s.label: s for s in SHIFTS}
    assert np.array_equal(shifted(images, by_label["original"]), images)
    assert shifted(images, by_label["darker x0.5 (beyond training range)"])[0, 0, 0] == 100
    noisy = shifted(images, by_label["Gaussian noise std 0.05"])
    assert noisy.std() > 5 and np.array_equal(noisy, shifted(images, by_label["Gaussian noise std 0.05"]))


def test_recipe_rule_prefers_robustness_within_the_auc_tolerance():
    def entry(clean, mean):
        rows = [{"kind": "none", "roc_auc": clean, "sensitivity": 1, "specificity": 1},
                {"kind": "blur", "roc_auc": mean, "sensitivity": 1, "specificity": 1}]
        return {"rows": rows, "summary": summary(rows)}

    assert choose_recipe({"a": entry(0.995, 0.90), "b": entry(0.993, 0.97)}) == "b"
    assert choose_recipe({"a": entry(0.995, 0.90), "b": entry(0.985, 0.97)}) == "a"
