"""The batch report: ``DIR/report.md`` and a self-contained ``DIR/report.html`` (figures embedded),
rendered from ``templates/batch_report.*.j2`` with the metrics, the figures and the provenance."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from casereview.studies import batch_figures as fig
from casereview.evaluation.batch_arms import REFERENCE_ARMS
from casereview.evaluation.batch_records import BatchRows
from casereview.provenance import git_commit, utc_now
from casereview.records import record_stem, write_atomic
from casereview.render import render, render_html

FIGURES_DIR = "figures"
SAMPLES_PER_ARM = 4


def table_row(name: str, m: dict[str, Any], kind: str) -> dict[str, Any]:
    s = m["scores"]
    return {"arm": name, "kind": kind, "n": m["n"], "scores": s, "rates": m["rates"],
            "kappa_classifier": m["agreement"]["classifier"]["kappa"],
            "needs_review": m["review"].get("needs_review_rate"), "acc_unflagged": m["review"].get("accuracy_unflagged")}


def samples(data: BatchRows, arm: str, out: Path) -> list[dict[str, Any]]:
    """A few cases of an arm for the reader to open: its errors first, then right ones; the raw text is
    the model's (untrusted) output, shown fenced or escaped by the templates."""
    rows = data.arms[arm]
    wrong = [r for r in rows if r.truth is not None and r.impression != r.truth]
    right = [r for r in rows if r.truth is not None and r.impression == r.truth]
    picked = (wrong[: SAMPLES_PER_ARM // 2] + right)[:SAMPLES_PER_ARM]
    out_list = []
    for r in picked:
        record = data.records[arm][r.ref]
        out_list.append({"ref": r.ref, "truth": r.truth, "impression": r.impression or "none",
                         "link": f"arms/{arm}/{record_stem(r.ref)}.md",
                         "raw": record["report"]["raw"] if record["report"] else ""})
    return out_list


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
    folder = out / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    compared = data.model_arms + list(REFERENCE_ARMS)
    figures = {
        "scores": fig.score_bars(metrics, compared, folder / "scores.png"),
        "confusion": fig.confusion_grid(data.arms, compared, folder / "confusion.png"),
        "risk_coverage": fig.risk_coverage_plot(metrics, data.model_arms + ["classifier-alone"], folder / "risk_coverage.png"),
        "latency": fig.latency_plot(metrics, data.model_arms, folder / "latency.png"),
    }
    if metrics["probe"]:
        figures["anchoring"] = fig.anchoring_plot(metrics["probe"], folder / "anchoring.png")
    return figures


def choice(metrics: dict[str, Any], model_arms: list[str], split: str | None) -> dict[str, Any] | None:
    """The model arm with the highest balanced accuracy; a recommendation only on validation data."""
    scored = [a for a in model_arms if metrics["arms"][a]["scores"]]
    if not scored:
        return None
    best = max(scored, key=lambda a: metrics["arms"][a]["scores"]["balanced_accuracy"]["value"])
    return {"arm": best, "value": metrics["arms"][best]["scores"]["balanced_accuracy"]["value"],
            "on_validation": split == "val"}


def write_reports(metrics: dict[str, Any], data: BatchRows, out: Path) -> tuple[Path, Path]:
    """Write report.md and report.html in ``out``; returns their paths. With nothing to score (every
    review failed, no case, no known label) the report says so and why, without scores or figures."""
    scored = any(m["scores"] for m in metrics["arms"].values())
    figures = make_figures(metrics, data, out) if scored else {}
    plan = data.plan
    backend = plan["arms"][0]["backend"]
    context = {
        "created": utc_now(), "commit": git_commit(), "plan": plan, "metrics": metrics,
        "backend": backend, "template_backend": backend == "template", "note": plan.get("note"),
        "rows": [table_row(a, metrics["arms"][a], "model") for a in data.model_arms]
        + [table_row(a, metrics["arms"][a], "reference") for a in REFERENCE_ARMS],
        "comparisons": sorted(metrics["comparisons"], key=lambda c: c["mcnemar"]["p"]),
        "probe": metrics["probe"], "evidence": metrics["evidence"],
        "model_arms": data.model_arms,
        "samples": {a: samples(data, a, out) for a in data.model_arms},
        "provenance": provenance(data),
        "choice": choice(metrics, data.model_arms, plan.get("split")),
        "scored": scored, "failed": metrics["failed"],
    }
    md = out / "report.md"
    write_atomic(md, render("batch_report.md.j2", figures={k: f"{FIGURES_DIR}/{p.name}" for k, p in figures.items()},
                            **context))
    embedded = {k: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii") for k, p in figures.items()}
    page = out / "report.html"
    write_atomic(page, render_html("batch_report.html.j2", figures=embedded, **context))
    return md, page
