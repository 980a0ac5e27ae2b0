"""The input gate's report (``casereview report gate``): false flags, detection of shifts, risk-coverage.

- False-flag rate of the fitted gate on validation (where its thresholds were set) and, for
  reporting only, on test.
- Detection on synthetic shifts (``gate_shifts``) of the test images: the share the gate flags,
  the share it finds blank, and what the shift does to the classifier (flips, accuracy) and how
  many of those flipped predictions pass unflagged.
- Risk-coverage: what share of the classifier's errors each review flag (input gate, conformal
  uncertainty, classifier vs neighbour vote) and their union catch, at what flag rate, on
  validation and test; and the resize-stability flag on validation images served as files.

Every threshold was fitted on train and validation by the gate and the classifier; test numbers
are reported, never used.
"""

from __future__ import annotations

import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from casereview.agents.gate import disagreement, input_decision
from casereview.agents.verify import neighbour_vote
from casereview.config import Settings
from casereview.data import load_split
from casereview.studies.gate_shifts import ARRAY_SHIFTS, FILE_SHIFTS, Shifted, array_shift, external_files
from casereview.provenance import git_commit, utc_now
from casereview.render import render
from casereview.schemas import InputCheck
from casereview.tools.index_build import build_index
from casereview.tools.context import RunContext, build_context
from casereview.tools.input_gate import STAT_NAMES, InputGate

REPORT_NAME = "gate_report.md"
FIGURE_NAME = "gate_detection.png"
EXAMPLES_NAME = "gate_shift_examples.png"


def checks(gate: InputGate, shifted: Shifted) -> list[InputCheck]:
    """The gate's decision on each image, exactly as the graph's ``check_input`` node makes it."""
    spreads = [None if v is None else gate.resize_spread(v) for v in shifted.views]
    return [input_decision(m) for m in gate.measures(shifted.images, spreads)]


def false_flags(gate: InputGate, images: np.ndarray) -> dict[str, float]:
    """Share of in-distribution images flagged by the statistics, the feature distance and either."""
    stats, ood = gate.measure_batch(images)
    by_stats, by_features = gate.model.stats_outside(stats), ood > gate.model.ood_threshold
    return {"n": len(images), "statistics": float(by_stats.mean()), "features": float(by_features.mean()),
            "any": float((by_stats | by_features).mean())}


@dataclass(frozen=True)
class ShiftRow:
    name: str
    flagged: float
    blank: float
    pneumonia: float  # share the classifier calls pneumonia
    flipped: float  # share whose label differs from the unshifted image's
    accuracy: float
    flipped_unflagged: float  # flipped and let through: the dangerous share


def shift_rows(ctx: RunContext, images: np.ndarray, labels: np.ndarray, folder: Path) -> tuple[list[ShiftRow], dict[str, np.ndarray]]:
    clf, gate = ctx.classifier, ctx.gate
    base = np.array([o.label == "pneumonia" for o in clf.opinions(images)])
    shifted = {name: array_shift(name, images) for name in ARRAY_SHIFTS}
    shifted |= {name: fn(images, folder) for name, fn in FILE_SHIFTS.items()}
    rows = []
    for name, s in shifted.items():
        got = checks(gate, s)
        flagged = np.array([c.flagged for c in got])
        said = np.array([o.label == "pneumonia" for o in clf.opinions(s.images)])
        flipped = said != base
        rows.append(ShiftRow(name, float(flagged.mean()), float(np.mean([not c.judgeable for c in got])),
                             float(said.mean()), float(flipped.mean()), float((said == labels.astype(bool)).mean()),
                             float((flipped & ~flagged).mean())))
    return rows, {name: s.images[0] for name, s in shifted.items()}


@dataclass(frozen=True)
class FlagRow:
    flag: str
    rate: float  # share of cases flagged
    caught: int  # classifier errors among the flagged
    errors: int  # classifier errors in all
    risk_unflagged: float  # error rate among the cases let through

    @property
    def caught_share(self) -> float:
        return self.caught / self.errors if self.errors else 0.0


def flag_rows(flags: dict[str, np.ndarray], wrong: np.ndarray) -> list[FlagRow]:
    rows = [FlagRow("none (every case let through)", 0.0, 0, int(wrong.sum()), float(wrong.mean()))]
    for name, f in flags.items():
        rows.append(FlagRow(name, float(f.mean()), int((f & wrong).sum()), int(wrong.sum()),
                            float(wrong[~f].mean()) if (~f).any() else 0.0))
    return rows


def review_flags(ctx: RunContext, split: str, margin_cut: float | None = None) -> tuple[list[FlagRow], int, float]:
    """The review flags of the graph on every case of ``split`` and the classifier's errors they catch.

    A reference row flags the cases whose p lies closest to the decision threshold, as many as the
    review flag sends on validation: ``margin_cut`` (None: set here, on this split; pass the
    validation cut for test). Returns the rows, the number of cases and the cut."""
    s = ctx.settings
    data = load_split(split, s.data.root, s.data.download)
    models = ctx.classifier.opinions(data.images)
    opinions = [o.model_dump() for o in models]
    hits = ctx.index.search_vectors(ctx.index.embedder.embed_images(data.images), s.graph.k, s.graph.case_base)
    # an uncertain case gets k_uncertain neighbours in the graph; the vote below uses k for every case
    gate = np.array([c.flagged for c in checks(ctx.gate, Shifted(data.images, [None] * len(data)))])
    uncertain = np.array([o["uncertain"] for o in opinions])
    votes = [neighbour_vote([h.label for h in n], s.graph.neighbour_majority) for n in hits]
    disagree = np.array([disagreement(o, *vote, len(n)) is not None for o, vote, n in zip(models, votes, hits)])
    wrong = np.array([(o["label"] == "pneumonia") != bool(y) for o, y in zip(opinions, data.labels)])
    review = gate | uncertain | disagree
    margin = np.array([abs(o["prob_pneumonia"] - o["threshold"]) for o in opinions])
    cut = float(np.quantile(margin, review.mean())) if margin_cut is None else margin_cut
    flags = {"input gate": gate, "conformal uncertainty": uncertain, "classifier vs neighbour vote": disagree,
             "uncertainty or disagreement": uncertain | disagree, "all three (the review flag)": review,
             f"reference: p within {cut:.3f} of the threshold": margin <= cut}
    return flag_rows(flags, wrong), len(data), cut


def resize_rows(ctx: RunContext, folder: Path) -> list[FlagRow]:
    """Validation images served as full-size files: the resize flag and the whole gate on them."""
    s = ctx.settings
    val = load_split("val", s.data.root, s.data.download)
    shifted = external_files(val.images, folder)
    got = checks(ctx.gate, shifted)
    said = np.array([o.label == "pneumonia" for o in ctx.classifier.opinions(shifted.images)])
    wrong = said != val.labels.astype(bool)
    resize = np.array([c.resize_spread is not None and c.resize_spread > c.resize_threshold for c in got])
    return flag_rows({"resize instability": resize, "input gate (with resize)": np.array([c.flagged for c in got])}, wrong)


def _figure(rows: list[ShiftRow], examples: dict[str, np.ndarray], path: Path, examples_path: Path) -> None:
    fig = Figure(figsize=(9, 0.32 * len(rows) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    ax.barh(y + 0.2, [r.flagged for r in rows], 0.4, label="flagged by the gate", color="tab:blue")
    ax.barh(y - 0.2, [r.flipped for r in rows], 0.4, label="classifier label flipped by the shift", color="tab:orange")
    ax.set_yticks(y, [r.name for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the 624 test images")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Input gate on synthetic shifts of the test images (thresholds from train/validation)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    cols = (len(examples) + 1) // 2
    fig = Figure(figsize=(1.2 * cols, 3.4))
    for i, (name, image) in enumerate(examples.items()):
        ax = fig.add_subplot(2, cols, i + 1)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(textwrap.fill(name, 18), fontsize=5.5)
        ax.set_xticks([])  # ticks off, frame kept: a white image stays visible
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(examples_path, dpi=120)


def write_gate_report(settings: Settings, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    build_index(settings)  # idempotent: the neighbour vote needs the case index
    ctx = build_context(settings, "gate-report")
    s = settings
    val, test = (load_split(x, s.data.root, s.data.download) for x in ("val", "test"))
    with tempfile.TemporaryDirectory() as tmp:
        shifts, examples = shift_rows(ctx, test.images, test.labels, Path(tmp))
        resize = resize_rows(ctx, Path(tmp))
    _figure(shifts, examples, out_dir / FIGURE_NAME, out_dir / EXAMPLES_NAME)
    risk = {"val": review_flags(ctx, "val")}
    risk["test"] = review_flags(ctx, "test", margin_cut=risk["val"][2])  # the cut chosen on validation
    model = ctx.gate.model
    context: dict[str, Any] = dict(
        created=utc_now(), commit=git_commit(), gate=model, meta=model.meta, settings=s,
        bounds=[(n, float(lo), float(hi)) for n, lo, hi in zip(STAT_NAMES, model.stat_low, model.stat_high)],
        false_val=false_flags(ctx.gate, val.images), false_test=false_flags(ctx.gate, test.images),
        shifts=shifts, resize=resize, risk=risk, figure=FIGURE_NAME, examples=EXAMPLES_NAME,
        caught=[r for r in shifts[1:] if r.flagged >= 0.9], partly=[r for r in shifts[1:] if 0.4 <= r.flagged < 0.9],
        missed=[r for r in shifts if r.flipped >= 0.1 and r.flipped_unflagged >= 0.05],
        by_name={r.name: r for r in shifts},
    )
    path = out_dir / REPORT_NAME
    path.write_text(render("gate_report.md.j2", **context))
    return path
