"""The batch report: ``DIR/report.md`` and a self-contained ``DIR/report.html`` (figures embedded),
rendered from ``templates/batch_report.*.j2`` with the metrics, the figures and the provenance."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

from casereview.evaluation.batch_arms import REFERENCE_ARMS
from casereview.evaluation.batch_metrics import identical_arms
from casereview.evaluation.batch_records import NO_FAILURES, BatchRows, Row
from casereview.evaluation.batch_stats import proportions
from casereview.provenance import git_commit, utc_now
from casereview.records import record_stem, write_atomic
from casereview.render import render, render_html

FIGURES_DIR = "figures"
SAMPLES_PER_ARM = 4
ALPHA = 0.05  # level of the Holm-adjusted McNemar tests that must separate a best arm from the others


def group_label(group: list[str], short: bool = False) -> str:
    """One name for arms with identical outputs: all of them, or (``short``, for figures) the first and a count."""
    if len(group) == 1:
        return group[0]
    return f"{group[0]} (+{len(group) - 1} identical)" if short else " = ".join(group)


def table_row(group: list[str], m: dict[str, Any], model_arms: list[str], rows: list[Row]) -> dict[str, Any]:
    """One row of the comparison table for a group of arms with identical outputs (``m``: the first's metrics,
    ``rows``: its rows); the proportions also as counts with their Wilson intervals (:func:`proportions`)."""
    kinds = sorted({"model" if a in model_arms else "reference" for a in group})
    known = [r for r in rows if r.truth is not None]
    counts = proportions([r.truth for r in known], [r.impression for r in known]) if known else {}
    s = {name: score | counts.get(name, {}) for name, score in m["scores"].items()}
    return {"arm": group_label(group), "arms": group, "kind": " + ".join(kinds), "n": m["n"], "scores": s, "rates": m["rates"],
            "kappa_classifier": m["agreement"]["classifier"]["kappa"],
            "needs_review": m["review"].get("needs_review_rate"), "acc_unflagged": m["review"].get("accuracy_unflagged")}


def samples(data: BatchRows, arm: str, records_dir: Path) -> dict[str, Any]:
    """A few cases of an arm for the reader to open: its errors first, then right ones, with how many of
    each there are; the raw text is the model's (untrusted) output, shown fenced or escaped by the templates.
    ``records_dir``: the batch folder, where each case's record Markdown is read for the page."""
    rows = data.arms[arm]
    wrong = [r for r in rows if r.truth is not None and r.impression != r.truth]
    right = [r for r in rows if r.truth is not None and r.impression == r.truth]
    shown_wrong = wrong[: SAMPLES_PER_ARM // 2]
    shown_right = right[: SAMPLES_PER_ARM - len(shown_wrong)]
    cases = []
    for r in shown_wrong + shown_right:
        record = data.records[arm][r.ref]
        cases.append({"ref": r.ref, "truth": r.truth, "impression": r.impression or "none",
                      "link": f"arms/{arm}/{record_stem(r.ref)}.md",
                      "raw": record["report"]["raw"] if record["report"] else ""})
    for case in cases:  # the page shows the record's text itself: a browser opens a linked .md as a download
        path = records_dir / case["link"]
        case["record_md"] = path.read_text() if path.is_file() else None
    return {"cases": cases, "errors_shown": len(shown_wrong), "errors": len(wrong),
            "right_shown": len(shown_right), "right": len(right)}


def provenance(data: BatchRows) -> dict[str, Any]:
    """What produced the batch, from its first record (every record carries its own)."""
    first_arm = data.plan["arms"][0]["name"]
    records = data.records[first_arm]
    p = next(iter(records.values()))["provenance"] if records else {}
    variants = {}
    for a in data.plan["arms"]:
        recs = data.records[a["name"]]
        if recs and not a["probe"]:
            variants[a["variant"]] = next(iter(recs.values()))["provenance"].get("template_sha256")
    return {
        "reporter": p.get("reporter", {}), "classifier_checkpoint_sha256": p.get("classifier_checkpoint_sha256"),
        "classifier_arch": p.get("classifier_arch"), "index": p.get("index"), "settings": p.get("settings", {}),
        "packages": p.get("packages", {}), "template_sha256": variants, "fingerprints": data.plan["fingerprints"],
    }


def make_figures(metrics: dict[str, Any], data: BatchRows, out: Path) -> dict[str, Path]:
    """The figures, one bar, matrix or curve per group of identical arms (named by its first arm)."""
    from casereview.evaluation import batch_figures as fig  # matplotlib: imported only when a report is drawn

    folder = out / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    groups = metrics["identical"]
    labels = {g[0]: group_label(g, short=True) for g in groups}
    flagged = [g[0] for g in groups if set(g) & {*data.model_arms, "classifier-alone"}]
    figures = {
        "scores": fig.score_bars(metrics, labels, folder / "scores.png"),
        "confusion": fig.confusion_grid(data.arms, labels, folder / "confusion.png"),
        "risk_coverage": fig.risk_coverage_plot(metrics, {a: labels[a] for a in flagged}, folder / "risk_coverage.png"),
        "latency": fig.latency_plot(metrics, data.model_arms, folder / "latency.png"),
    }
    if metrics["probe"]:
        figures["anchoring"] = fig.anchoring_plot({group_label(g, short=True): metrics["probe"][g[0]]
                                                   for g in probe_groups(metrics, data)}, folder / "anchoring.png")
    return figures


def choice(metrics: dict[str, Any], model_arms: list[str], split: str | None) -> dict[str, Any] | None:
    """The model arms' verdict: the group with the highest balanced accuracy is named ``best`` only when
    exact McNemar tests (Holm-adjusted, level ``ALPHA``) separate it from every other group of model arms;
    otherwise ``best`` is None and no arm differs. A recommendation only on validation data."""
    groups = [[a for a in g if a in model_arms] for g in metrics["identical"]]
    groups = [g for g in groups if g and metrics["arms"][g[0]]["scores"]]
    if not groups:
        return None
    value = {g[0]: metrics["arms"][g[0]]["scores"]["balanced_accuracy"]["value"] for g in groups}
    top = max(groups, key=lambda g: value[g[0]])
    others = [g for g in groups if g is not top]
    # comparisons are keyed by each group's first arm (of all arms), which the model arms of the group share
    first = {a: g[0] for g in metrics["identical"] for a in g}
    tests = {frozenset((c["a"], c["b"])): c for c in metrics["comparisons"]}
    pairs = [tests.get(frozenset((first[top[0]], first[g[0]]))) for g in others]
    separated = bool(others) and all(c is not None and c["mcnemar"]["p_holm"] < ALPHA and value[top[0]] > value[g[0]]
                                     for c, g in zip(pairs, others))
    return {"best": top if separated else None, "value": value[top[0]], "top": top, "n_groups": len(groups),
            "n_arms": sum(len(g) for g in groups), "alpha": ALPHA, "on_validation": split == "val"}


def verification_groups(metrics: dict[str, Any], model_arms: list[str]) -> list[list[str]]:
    """Model arms grouped where every number of the verification table (verdicts, retries, review) is the same."""
    groups: dict[str, list[str]] = {}
    for a in model_arms:
        m = metrics["arms"][a]
        groups.setdefault(json.dumps([m["verdicts"], m["retry"], m["review"]], sort_keys=True, default=str), []).append(a)
    return list(groups.values())


def probe_groups(metrics: dict[str, Any], data: BatchRows) -> list[list[str]]:
    """Probe arms grouped, within each probe, where their outputs and every number of the probe table are the same."""
    groups = []
    for kind in dict.fromkeys(p["probe"] for p in metrics["probe"].values()):
        names = [n for n, p in metrics["probe"].items() if p["probe"] == kind]
        for same_outputs in identical_arms(data.arms, names):
            shown: dict[str, list[str]] = {}
            for n in same_outputs:
                shown.setdefault(json.dumps(metrics["probe"][n] | {"base": None}, sort_keys=True), []).append(n)
            groups += shown.values()
    return groups


def copy_linked_records(samples_by_arm: dict[str, dict[str, Any]], source: Path, out: Path) -> None:
    """Copy the case records a report links to from the batch folder ``source`` to ``out``, where the report
    is written (e.g. a committed copy under ``reports/``), so that its links resolve there."""
    for s in samples_by_arm.values():
        for case in s["cases"]:
            target = out / case["link"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / case["link"], target)


def write_reports(metrics: dict[str, Any], data: BatchRows, out: Path, source: Path | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html in ``out``; returns their paths. With nothing to score (every
    review failed, no case, no known label) the report says so and why, without scores or figures.
    ``source``: the batch folder, when the report is written elsewhere (the case records it links to
    are copied next to it)."""
    out.mkdir(parents=True, exist_ok=True)
    scored = any(m["scores"] for m in metrics["arms"].values())
    figures = make_figures(metrics, data, out) if scored else {}
    model_groups = [g for g in metrics["identical"] if set(g) & set(data.model_arms)]
    plan = data.plan
    backend = plan["arms"][0]["backend"]
    context = {
        "created": utc_now(), "commit": git_commit(), "plan": plan, "metrics": metrics,
        "backend": backend, "template_backend": backend == "template", "note": plan.get("note"),
        "rows": [table_row(g, metrics["arms"][g[0]], data.model_arms, data.arms[g[0]]) for g in metrics["identical"]],
        "n_arms": len(data.model_arms) + len(REFERENCE_ARMS),
        # pairs that differ on at least one case; the others are the same in correctness
        "comparisons": sorted((c for c in metrics["comparisons"] if c["mcnemar"]["only_a_right"] + c["mcnemar"]["only_b_right"]),
                              key=lambda c: c["mcnemar"]["p"]),
        "n_tested": len(metrics["comparisons"]),
        "probe": metrics["probe"], "evidence": metrics["evidence"],
        "model_arms": data.model_arms,
        "model_groups": [[a for a in g if a in data.model_arms] for g in model_groups],
        "verification_groups": verification_groups(metrics, data.model_arms),
        "probe_groups": probe_groups(metrics, data),
        "group_label": group_label,
        "samples": {g[0]: samples(data, g[0], source or out) for g in model_groups if g[0] in data.model_arms},
        "provenance": provenance(data),
        "choice": choice(metrics, data.model_arms, plan.get("split")),
        "scored": scored, "failed": metrics.get("failed", NO_FAILURES),  # metrics of records in memory have none
    }
    if source is not None and source.resolve() != out.resolve():
        copy_linked_records(context["samples"], source, out)
    md = out / "report.md"
    write_atomic(md, render("batch_report.md.j2", figures={k: f"{FIGURES_DIR}/{p.name}" for k, p in figures.items()},
                            **context))
    embedded = {k: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii") for k, p in figures.items()}
    page = out / "report.html"
    write_atomic(page, render_html("batch_report.html.j2", figures=embedded, **context))
    return md, page
