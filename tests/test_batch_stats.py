"""Batch statistics against hand-computed values on small fixed tables, and against scipy/sklearn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from metrics_support import assert_close
from casereview.evaluation import batch_stats as st
from casereview.evaluation.batch_arms import REFERENCE_ARMS
from casereview.evaluation.batch_metrics import (
    arm_metrics,
    compare,
    compute_metrics,
    evidence_analysis,
    probe_analysis,
    retry_analysis,
    review_analysis,
)
from casereview.evaluation.batch_records import BatchRows, Row
from casereview.training.metrics import bootstrap_indices

P, N, I = "pneumonia", "normal", "indeterminate"


def scores(truth: list, said: list) -> dict[str, float]:
    return {k: float(v) for k, v in st.scores_coded(st.codes(truth), st.codes(said)).items()}


def test_scores_by_hand():
    # 4 pneumonia cases: said P, P, N, indeterminate; 3 normal cases: said N, P, None (unparseable)
    truth = [P, P, P, P, N, N, N]
    said = [P, P, N, I, N, P, None]
    s = scores(truth, said)
    assert s["accuracy"] == pytest.approx(3 / 7)
    assert s["sensitivity"] == pytest.approx(2 / 4)
    assert s["specificity"] == pytest.approx(1 / 3)
    assert s["balanced_accuracy"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    # tp 2, fp 1 (normal called pneumonia), fn 2 (missed pneumonia, abstention included)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


def test_scores_without_a_class_are_nan():
    s = scores([P, P], [P, N])
    assert np.isnan(s["specificity"]) and s["sensitivity"] == 0.5


@pytest.mark.parametrize(("only_a", "only_b", "p"), [(1, 6, 2 * (1 + 7) / 2**7), (0, 0, 1.0), (3, 3, 1.0), (0, 5, 2 / 2**5)])
def test_mcnemar_exact_by_hand_and_scipy(only_a, only_b, p):
    both = 4
    a = np.array([True] * only_a + [False] * only_b + [True] * both)
    b = np.array([False] * only_a + [True] * only_b + [True] * both)
    out = st.mcnemar_exact(a, b)
    assert (out["only_a_right"], out["only_b_right"]) == (only_a, only_b)
    assert out["p"] == pytest.approx(p)
    if only_a + only_b:
        assert out["p"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_kappa_by_hand_and_sklearn():
    assert st.cohen_kappa([P, P, N, N], [P, N, N, N]) == pytest.approx(0.5)  # observed .75, expected .5
    rng = np.random.default_rng(1)
    labels = np.array([P, N, I, "none"], dtype=object)
    a, b = labels[rng.integers(0, 4, 200)], labels[rng.integers(0, 3, 200)]
    assert st.cohen_kappa(list(a), list(b)) == pytest.approx(cohen_kappa_score(a.astype(str), b.astype(str)))
    assert st.cohen_kappa([P, None, N], [P, None, N]) == pytest.approx(1.0)  # None is a label of its own
    assert st.cohen_kappa([P, P], [P, P]) == 1.0  # one label throughout, on both sides: full agreement
    assert np.isnan(st.cohen_kappa([], []))


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    truth = rng.choice([P, N], 120)
    good = np.where(rng.random(120) < 0.9, truth, np.where(truth == P, N, P))
    bad = np.where(rng.random(120) < 0.6, truth, np.where(truth == P, N, P))
    draws = bootstrap_indices(120, 500, seed=0)
    same = st.paired_difference(truth, good, good, draws)
    assert same["accuracy"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    diff = st.paired_difference(truth, good, bad, draws)
    point = scores(truth, good)["accuracy"] - scores(truth, bad)["accuracy"]
    assert diff["accuracy"]["value"] == pytest.approx(point)
    lo, hi = diff["accuracy"]["ci95"]
    assert 0 < lo < point < hi  # 90% vs 60% right on 120 cases: clearly apart
    ci = st.scores_with_intervals(truth, good, draws)["accuracy"]
    assert ci["ci95"][0] < ci["value"] < ci["ci95"][1]


def test_risk_coverage_by_hand():
    out = st.risk_coverage(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.5]))
    assert out["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert out["risk"] == pytest.approx([0, 0, 1 / 3, 1 / 2], abs=1e-5)
    assert out["aurc"] == pytest.approx((1 / 3 + 1 / 2) / 4)


def row(ref, truth, said, **kw):
    base = dict(first_impression=said, verdict="agree", attempts=1, needs_review=False, classifier_label=said,
                classifier_uncertain=False, margin=0.4, vote=said, generate_s=0.1, graph_s=0.2, chars=10)
    return Row(ref=ref, truth=truth, impression=said, **(base | kw))


def test_retry_and_review_analysis_by_hand():
    rows = [
        row("t:0", P, P, attempts=2, first_impression=N),  # retry fixed it
        row("t:1", N, P, attempts=2, first_impression=N),  # retry broke it
        row("t:2", N, N, attempts=2, first_impression=N),  # retried, unchanged
        row("t:3", P, N, needs_review=True, margin=0.01),  # an error, flagged
        row("t:4", N, N),
    ]
    r = retry_analysis(rows)
    assert r == {"retry_rate": 0.6, "n_retried": 3, "changed": 2, "changed_to_right": 1, "changed_from_right": 1}
    rv = review_analysis(rows)
    assert rv["needs_review_rate"] == 0.2 and rv["n_unflagged"] == 4
    assert rv["accuracy_unflagged"] == 0.75 and rv["accuracy_flagged"] == 0.0
    assert rv["errors_flagged_share"] == 0.5  # t:1 unflagged error, t:3 flagged error


def test_lengths_per_report_count_only_what_the_backend_reported():
    draws = np.zeros((1, 3), dtype=int)
    counted = arm_metrics([row("t:0", P, P, tokens=6, chars=30), row("t:1", N, N, tokens=None, chars=None),
                           row("t:2", N, N, tokens=3, chars=12)], draws, reference=False)
    assert counted["tokens_per_report"] == 4.5 and counted["chars_per_report"] == 21.0
    uncounted = arm_metrics([row("t:0", P, P), row("t:1", N, N)], draws[:, :2], reference=False)
    assert uncounted["tokens_per_report"] is None and uncounted["chars_per_report"] == 10.0


def test_compare_holm_and_evidence_by_hand():
    truth = [P, P, N, N, P]
    rows = {
        "a": [row(f"t:{i}", t, t) for i, t in enumerate(truth)],  # all right
        "b": [row(f"t:{i}", t, N) for i, t in enumerate(truth)],  # says normal always
        "c": [row(f"t:{i}", t, t) for i, t in enumerate(truth)][:3],  # three cases only
    }
    out = {(c["a"], c["b"]): c for c in compare(rows, ["a", "b", "c"], n_boot=200, seed=0)}
    ab = out[("a", "b")]
    assert ab["n"] == 5 and ab["mcnemar"]["only_a_right"] == 3 and ab["mcnemar"]["only_b_right"] == 0
    assert ab["mcnemar"]["p"] == pytest.approx(2 / 8)
    assert out[("a", "c")]["n"] == 3 and out[("a", "c")]["mcnemar"]["p"] == 1.0
    assert ab["mcnemar"]["p_holm"] == pytest.approx(min(1, 3 * 2 / 8))  # smallest of three p-values
    ev = evidence_analysis([row("t:0", P, P, classifier_label=P, vote=N), row("t:1", N, N, classifier_label=P, vote=N),
                            row("t:2", N, N, classifier_label=N, vote=None), row("t:3", N, N, classifier_label=N, vote=N)])
    assert ev == {"n": 4, "no_vote_majority": 1, "disagree": 2, "disagree_rate": 0.5, "classifier_right": 1, "vote_right": 1}


def test_probe_anchoring_by_hand():
    plan = {"arms": [{"name": "x-g", "backend": "x", "variant": "g", "probe": None},
                     {"name": "x-g.flip-classifier", "backend": "x", "variant": "g", "probe": "flip-classifier"}]}
    base = [row("t:0", P, P), row("t:1", N, N), row("t:2", P, P), row("t:3", N, N), row("t:4", N, N)]
    # flipped classifier labels N, P, N, P; the arm follows it on two cases, keeps one, abstains on one
    flipped = [row("t:0", P, N, classifier_label=N), row("t:1", N, P, classifier_label=P),
               row("t:2", P, P, classifier_label=N), row("t:3", N, I, classifier_label=P),
               row("t:4", N, P, classifier_label=P, classifier_uncertain=True)]  # uncertain: not counted
    rows = {"x-g": base, "x-g.flip-classifier": flipped}
    for ref in ("classifier-alone", "neighbour-vote", "template-follows-both", "template-follows-classifier",
                "template-follows-neighbours"):
        rows[ref], rows[f"{ref}.flip-classifier"] = base, flipped
    p = probe_analysis(rows, plan)["x-g.flip-classifier"]
    assert p["n"] == 4 and p["anchoring_rate"] == 0.5 and p["changed_rate"] == 0.75 and p["indeterminate_rate"] == 0.25


# metrics.json of fixture_batch() as the hand-written statistics computed it (own bootstrap, confusion counts,
# Cohen's kappa and McNemar test, commit 31e8126), before they were replaced by the shared helpers and
# scikit-learn / scipy: `json.dumps(compute_metrics(fixture_batch(), n_boot=500, seed=0))`.
PINNED_METRICS = Path(__file__).parent / "golden" / "batch_metrics_31e8126.json"


def fixture_batch(n: int = 60, seed: int = 7) -> BatchRows:
    """A random batch of two variants and a flip-classifier probe, the reference arms included; some cases
    have no truth, no impression or no classifier, and one arm misses a few cases."""
    rng = np.random.default_rng(seed)
    refs = [f"test:{i}" for i in range(n)]
    truth = rng.choice(np.array([P, N, None], dtype=object), n, p=[0.55, 0.35, 0.10])

    def rows(keep: float) -> list[Row]:
        said = rng.choice(np.array([P, N, I, None], dtype=object), n, p=[0.5, 0.3, 0.1, 0.1])
        right = rng.random(n) < 0.6  # most impressions follow the truth, so that the scores are not chance
        said = np.where(right & (truth != None), truth, said)  # noqa: E711 - elementwise on an object array
        return [Row(ref=refs[i], truth=truth[i], impression=said[i],
                    first_impression=rng.choice(np.array([P, N, None], dtype=object)),
                    verdict=rng.choice(np.array(["agree", "contradict", None], dtype=object)),
                    attempts=int(rng.integers(1, 3)), needs_review=bool(rng.random() < 0.3),
                    classifier_label=rng.choice(np.array([P, N, None], dtype=object), p=[0.5, 0.45, 0.05]),
                    classifier_uncertain=bool(rng.random() < 0.2), margin=float(rng.random() / 2),
                    vote=rng.choice(np.array([P, N, None], dtype=object)), generate_s=float(rng.random()),
                    graph_s=float(rng.random()) if rng.random() < 0.9 else None, chars=int(rng.integers(50, 500)),
                    tokens=int(rng.integers(10, 100)) if rng.random() < 0.8 else None)
                for i in range(n) if rng.random() < keep]

    plan = {"refs": refs, "arms": [{"name": "x-g", "backend": "x", "variant": "g", "probe": None},
                                   {"name": "x-s", "backend": "x", "variant": "s", "probe": None},
                                   {"name": "x-g.flip-classifier", "backend": "x", "variant": "g",
                                    "probe": "flip-classifier"}]}
    arms = {"x-g": rows(1.0), "x-s": rows(0.9), "x-g.flip-classifier": rows(1.0)}
    for ref in REFERENCE_ARMS:
        arms[ref], arms[f"{ref}.flip-classifier"] = rows(1.0), rows(1.0)
    return BatchRows(plan, arms, records={})


def test_batch_metrics_equal_those_of_the_hand_written_statistics():
    got = json.loads(json.dumps(compute_metrics(fixture_batch(), n_boot=500, seed=0)))
    got.pop("identical")  # added since (which arms gave the same outputs), not a change of any pinned number
    got.pop("reading")  # added since (which tier read each arm's reports), likewise
    want = json.loads(PINNED_METRICS.read_text())
    assert want["comparisons"] and want["arms"]["x-s"]["n"] < want["arms"]["x-g"]["n"]  # the fixture covers pairs
    assert_close(got, want)


def test_the_equality_check_catches_a_difference():
    want = json.loads(PINNED_METRICS.read_text())
    changed = json.loads(PINNED_METRICS.read_text())
    changed["arms"]["x-g"]["agreement"]["classifier"]["kappa"] += 1e-9
    with pytest.raises(AssertionError, match="kappa"):
        assert_close(changed, want)
