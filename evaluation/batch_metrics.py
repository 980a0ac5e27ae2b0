"""``metrics.json`` of a batch, computed from its records alone (``casereview batch --summarize DIR``).

Everything but the ``latency`` entries is a function of the records' contents, so a batch that was
killed and resumed gives the same file as one that ran through (latencies are measured times).
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from casereview.evaluation import batch_stats as st
from casereview.evaluation.batch_arms import PROBES, REFERENCE_ARMS, base_name
from casereview.evaluation.batch_records import BatchRows, Row, failure_summary, load_rows
from casereview.records import write_atomic
from casereview.training.metrics import bootstrap_indices

METRICS_FILE = "metrics.json"
N_BOOT = 2000
SEED = 0


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that are there; None when none is."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _rate(mask: list[bool] | np.ndarray) -> float | None:
    return float(np.mean(mask)) if len(mask) else None


def _with_truth(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.truth is not None]


def review_analysis(rows: list[Row]) -> dict[str, Any]:
    """Does the needs-review flag catch the errors? Accuracy on unflagged cases, the share of errors
    flagged, and the risk-coverage curve (flagged cases last, then by the classifier's margin)."""
    rows = _with_truth(rows)
    if not rows:
        return {}
    wrong = np.array([r.impression != r.truth for r in rows])
    flagged = np.array([r.needs_review for r in rows])
    risk = flagged + (1 - np.array([r.margin for r in rows])) / 2  # flagged in [1, 1.5], unflagged in [0, 0.5]
    curve = st.risk_coverage(wrong, risk)
    return {
        "needs_review_rate": float(flagged.mean()),
        "n_unflagged": int((~flagged).sum()),
        "accuracy_unflagged": _rate(~wrong[~flagged]),
        "accuracy_flagged": _rate(~wrong[flagged]),
        "errors_flagged_share": _rate(flagged[wrong]),
        "aurc": curve["aurc"],
        "curve": curve,
    }


def retry_analysis(rows: list[Row]) -> dict[str, Any]:
    """How often the graph retried with the strict variant, whether the retry changed the impression,
    and whether the change went toward the truth."""
    retried = [r for r in rows if r.attempts > 1]
    changed = [r for r in retried if r.impression != r.first_impression]
    known = [r for r in changed if r.truth is not None]
    return {
        "retry_rate": _rate([r.attempts > 1 for r in rows]),
        "n_retried": len(retried),
        "changed": len(changed),
        "changed_to_right": sum(r.impression == r.truth for r in known),
        "changed_from_right": sum(r.first_impression == r.truth for r in known),
    }


def arm_metrics(rows: list[Row], draws: np.ndarray, reference: bool) -> dict[str, Any]:
    known = _with_truth(rows)
    truth = np.array([r.truth for r in known], dtype=object)
    said = np.array([r.impression for r in known], dtype=object)
    out: dict[str, Any] = {
        "n": len(rows),
        "n_with_truth": len(known),
        "scores": st.scores_with_intervals(truth, said, draws) if len(known) else {},
        "rates": {
            "pneumonia": _rate([r.impression == "pneumonia" for r in rows]),
            "indeterminate": _rate([r.impression == "indeterminate" for r in rows]),
            "no_impression": _rate([r.impression is None for r in rows]),
        },
        "agreement": {
            "classifier": {"rate": _rate([r.impression == r.classifier_label for r in rows]),
                           "kappa": st.cohen_kappa([r.impression for r in rows], [r.classifier_label for r in rows])},
            "neighbour_vote": {"rate": _rate([r.impression == r.vote for r in rows]),
                               "kappa": st.cohen_kappa([r.impression for r in rows], [r.vote for r in rows])},
        },
        "review": review_analysis(rows),
    }
    if not reference:
        out |= {
            "verdicts": dict(sorted(Counter(str(r.verdict) for r in rows).items())),
            "retry": retry_analysis(rows),
            "latency": {"generate_s": st.p50_p95([r.generate_s for r in rows]),
                        "graph_s": st.p50_p95([r.graph_s for r in rows])},
            "chars_per_report": _mean([r.chars for r in rows]),
            "tokens_per_report": _mean([r.tokens for r in rows]),  # None: the backend counts no tokens
        }
    return out


def reading_analysis(rows: list[Row]) -> dict[str, Any]:
    """How an arm's reports were read: the share read by the contract line (tier 1), by the report's own
    language (tier 2) and not at all, and the accuracy of each tier's impressions on cases with truth."""
    reports = [r for r in rows if r.has_report]
    out: dict[str, Any] = {"n_reports": len(reports)}
    for name, tier in (("tier1", 1), ("tier2", 2), ("unread", None)):
        mine = [r for r in reports if r.read_tier == tier]
        known = _with_truth(mine)
        out[name] = {"share": _rate([r.read_tier == tier for r in reports]), "n": len(mine)}
        if tier is not None:
            out[name]["accuracy"] = _rate([r.impression == r.truth for r in known])
            out[name]["n_with_truth"] = len(known)
    return out


def identical_arms(rows: dict[str, list[Row]], names: list[str]) -> list[list[str]]:
    """``names`` grouped by identical outputs (the same impression and review flag on every case), in
    ``names`` order: every score and rate of an arm is a function of these, so one group is one result."""
    groups: dict[frozenset, list[str]] = {}
    for name in names:
        groups.setdefault(frozenset((r.ref, r.impression, r.needs_review) for r in rows[name]), []).append(name)
    return list(groups.values())


def compare(rows: dict[str, list[Row]], names: list[str], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Every pair of arms on their common cases with truth: paired bootstrap differences and exact
    McNemar tests on correctness, Holm-adjusted over all pairs."""
    out = []
    for a, b in combinations(names, 2):
        by_ref_b = {r.ref: r for r in _with_truth(rows[b])}
        pairs = [(r, by_ref_b[r.ref]) for r in _with_truth(rows[a]) if r.ref in by_ref_b]
        if not pairs:
            continue
        truth = np.array([x.truth for x, _ in pairs], dtype=object)
        sa = np.array([x.impression for x, _ in pairs], dtype=object)
        sb = np.array([y.impression for _, y in pairs], dtype=object)
        draws = bootstrap_indices(len(pairs), n_boot, seed)
        out.append({"a": a, "b": b, "n": len(pairs), "difference": st.paired_difference(truth, sa, sb, draws),
                    "mcnemar": st.mcnemar_exact(sa == truth, sb == truth)})
    for c, p in zip(out, st.holm([c["mcnemar"]["p"] for c in out])):
        c["mcnemar"]["p_holm"] = p
    return out


def evidence_analysis(rows: list[Row]) -> dict[str, Any]:
    """How often the classifier and the neighbour vote disagree, and which is right when they do.
    They are not independent: the cnn index embeds with the classifier's own features."""
    judged = [r for r in rows if r.classifier_label is not None]
    split = [r for r in judged if r.vote is not None and r.vote != r.classifier_label]
    known = _with_truth(split)
    return {
        "n": len(judged),
        "no_vote_majority": sum(r.vote is None for r in judged),
        "disagree": len(split),
        "disagree_rate": _rate([r.vote is not None and r.vote != r.classifier_label for r in judged]),
        "classifier_right": sum(r.classifier_label == r.truth for r in known),
        "vote_right": sum(r.vote == r.truth for r in known),
    }


def probe_analysis(rows: dict[str, list[Row]], plan: dict[str, Any]) -> dict[str, Any]:
    """Anchoring: the share of impressions that follow the reversed evidence, on the cases where that
    evidence states a label with confidence (the flipped classifier outside its uncertainty band, or
    a clear majority of the swapped neighbours), and how many impressions changed at all."""
    out = {}
    probed = [(a["name"], base_name(a["backend"], a["variant"], a.get("output")), a["probe"])
              for a in plan["arms"] if a["probe"]]
    probes = {p for *_, p in probed}
    probed += [(f"{ref}.{p}", ref, p) for p in probes for ref in REFERENCE_ARMS]
    for name, base, probe in probed:
        base_said = {r.ref: r.impression for r in rows[base]}
        target = [(r, (None if r.classifier_uncertain else r.classifier_label) if probe == "flip-classifier" else r.vote)
                  for r in rows[name]]
        target = [(r, t) for r, t in target if t is not None and r.ref in base_said]
        out[name] = {
            "base": base, "probe": probe, "reverses": PROBES[probe], "n": len(target),
            "anchoring_rate": _rate([r.impression == t for r, t in target]),
            "changed_rate": _rate([r.impression != base_said[r.ref] for r, _ in target]),
            "indeterminate_rate": _rate([r.impression == "indeterminate" for r, _ in target]),
        }
    return out


def compute_metrics(data: BatchRows, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Any]:
    groups = identical_arms(data.arms, data.model_arms + list(REFERENCE_ARMS))
    arms = {}
    for name, rows in data.arms.items():
        draws = bootstrap_indices(len(_with_truth(rows)), n_boot, seed)
        arms[name] = arm_metrics(rows, draws, reference=name.split(".")[0] in REFERENCE_ARMS)
    return {
        "batch": {"n_cases": len(data.plan["refs"]), "arms": data.model_arms, "reference_arms": list(REFERENCE_ARMS),
                  "probe_arms": [a["name"] for a in data.plan["arms"] if a["probe"]],
                  "bootstrap": {"n_boot": n_boot, "seed": seed, "paired": True, "level": 0.95}},
        "arms": arms,
        "identical": groups,
        # one arm of each group: a pair of identical arms has nothing to test, and would only weaken Holm
        "comparisons": compare(data.arms, [g[0] for g in groups], n_boot, seed),
        "evidence": evidence_analysis(data.arms[REFERENCE_ARMS[0]]),
        "reading": {name: reading_analysis(data.arms[name]) for name in data.model_arms},
        "probe": probe_analysis(data.arms, data.plan),
    }


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (``null``): bare ``NaN`` is not JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def summarize(out: Path, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Any]:
    """Compute ``metrics.json`` from the records in ``out`` (and the latest run's failures) and write it there."""
    data = load_rows(out)
    metrics = compute_metrics(data, n_boot, seed) | {"failed": failure_summary(out, data.plan)}
    write_atomic(out / METRICS_FILE, json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    return metrics
