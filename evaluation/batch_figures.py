"""Figures of a batch report, drawn from ``metrics.json`` and the rows (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from casereview.evaluation.batch_records import Row  # noqa: E402

SAID = ("pneumonia", "normal", "other")  # other: indeterminate or no impression
FLAG_POINT = "dot: the needs-review flag (unflagged cases kept)"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_bars(metrics: dict[str, Any], arms: dict[str, str], path: Path) -> Path:
    """Accuracy and balanced accuracy per arm (``arms``: name -> label) with 95% bootstrap intervals; the
    legend sits above the axes, where it cannot cover a bar."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(arms) + 1.6))
    y = np.arange(len(arms))
    for offset, score, colour in ((-0.18, "accuracy", "tab:blue"), (0.18, "balanced_accuracy", "tab:orange")):
        vals = [metrics["arms"][a]["scores"][score] for a in arms]
        v = np.array([s["value"] for s in vals])
        lo, hi = np.array([s["ci95"][0] for s in vals]), np.array([s["ci95"][1] for s in vals])
        ax.barh(y + offset, v, height=0.34, color=colour, label=score.replace("_", " "),
                xerr=[v - lo, hi - v], capsize=2, error_kw={"lw": 0.8})
    ax.set_yticks(y, list(arms.values()))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (95% bootstrap interval)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def confusion_grid(rows: dict[str, list[Row]], arms: dict[str, str], path: Path) -> Path:
    """Truth (rows) against the impression (columns) for each arm (``arms``: name -> label)."""
    cols = min(5, len(arms))
    nrows = -(-len(arms) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.3 * nrows), squeeze=False)
    for ax, (arm, label) in zip(axes.flat, arms.items()):
        known = [r for r in rows[arm] if r.truth is not None]
        m = np.zeros((2, 3), int)
        for r in known:
            m[("pneumonia", "normal").index(r.truth), SAID.index(r.impression if r.impression in SAID[:2] else "other")] += 1
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(3), ["pn.", "norm.", "other"], fontsize=7)
        ax.set_yticks(range(2), ["pneumonia", "normal"], fontsize=7)
        ax.set_title(label, fontsize=7)
    for ax in list(axes.flat)[len(arms):]:
        ax.axis("off")
    fig.supxlabel("impression", fontsize=8)
    fig.supylabel("truth", fontsize=8)
    return _save(fig, path)


def risk_coverage_plot(metrics: dict[str, Any], arms: dict[str, str], path: Path) -> Path:
    """Error rate of the cases kept against coverage, flagged cases dropped last-kept; the dot is the
    needs-review flag's own operating point (all unflagged cases kept); ``arms``: name -> label."""
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ("-", "--", ":", "-.")  # curves of arms right on the same cases coincide: keep each visible
    dot_named = False
    for k, (arm, label) in enumerate(arms.items()):
        rv = metrics["arms"][arm]["review"]
        if not rv:
            continue
        line, = ax.plot(rv["curve"]["coverage"], rv["curve"]["risk"], lw=1.2, ls=styles[k % len(styles)],
                        label=f"{label} (AURC {rv['aurc']:.3f})")
        if rv["n_unflagged"] and rv["accuracy_unflagged"] is not None:
            ax.plot([1 - rv["needs_review_rate"]], [1 - rv["accuracy_unflagged"]], "o", color=line.get_color(), ms=4,
                    label="_nolegend_" if dot_named else FLAG_POINT)  # named once in the legend
            dot_named = True
    ax.set_xlabel("coverage (share of cases kept)")
    ax.set_ylabel("error rate among kept")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6, loc="upper left")  # error rates rise at high coverage, on the right
    return _save(fig, path)


def anchoring_plot(probe: dict[str, Any], path: Path) -> Path:
    """Anchoring and change rates per probe arm (``probe``: label -> its probe metrics); legend above the axes."""
    names = list(probe)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y - 0.18, [probe[n]["anchoring_rate"] or 0 for n in names], height=0.34, label="follows the reversed evidence")
    ax.barh(y + 0.18, [probe[n]["changed_rate"] or 0 for n in names], height=0.34, label="impression changed")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of cases")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return _save(fig, path)


def latency_plot(metrics: dict[str, Any], arms: list[str], path: Path) -> Path:
    """p50 and p95 of the graph time per review and of the reporter's generation time; legend above the axes."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(arms) + 1.4))
    y = np.arange(len(arms))
    for offset, key, label in ((-0.18, "graph_s", "graph (whole review)"), (0.18, "generate_s", "report generation")):
        lat = [metrics["arms"][a]["latency"][key] or {"p50": 0, "p95": 0} for a in arms]
        p50, p95 = np.array([x["p50"] for x in lat]), np.array([x["p95"] for x in lat])
        ax.barh(y + offset, p50 * 1000, height=0.34, label=f"{label}: p50 (bar), p95 (whisker)",
                xerr=[np.zeros_like(p50), (p95 - p50) * 1000], capsize=2)
    ax.set_yticks(y, arms)
    ax.invert_yaxis()
    ax.set_xlabel("ms per review")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return _save(fig, path)
