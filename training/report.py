"""``casereview report task1``: the classification report, regenerated from the released checkpoint
and the study summary (``casereview study``), with every figure recomputed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from casereview.config import Settings
from casereview.errors import CaseReviewError
from casereview.render import render
from casereview.training import figures
from casereview.training.checkpoint import load_classifier
from casereview.data import load_split
from casereview.training.evaluate import evaluate
from casereview.training.metrics import binary_metrics

STUDY_FILE = "task1_study.json"


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, calibrated probabilities) from an evaluation's predictions.csv."""
    rows = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return rows["label"].astype(int), rows["prob_pneumonia"].astype(float)


def threshold_sweep(preds: dict[str, Path], shipped: float, path: Path) -> tuple[Path, dict[str, float]]:
    """Accuracy and balanced accuracy against the threshold on val and test. For the report
    only: it shows what the validation/test shift does to a threshold and chooses nothing."""
    import matplotlib.pyplot as plt

    grid = np.linspace(0.02, 0.98, 97)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    best = {}
    for split, style in (("val", "-"), ("test", "--")):
        y, prob = read_predictions(preds[split])
        rows = [binary_metrics(y, prob, t) for t in grid]
        acc = [r["accuracy"] for r in rows]
        ax.plot(grid, acc, style, c="C0", label=f"{split} accuracy")
        ax.plot(grid, [r["balanced_accuracy"] for r in rows], style, c="C1", label=f"{split} balanced accuracy")
        best[split] = float(grid[int(np.argmax(acc))])
    ax.axvline(shipped, c="red", lw=1, label=f"shipped threshold {shipped:.2f} (from val)")
    ax.axvline(0.5, c="grey", lw=1, ls=":")
    ax.set_xlabel("threshold on calibrated p(pneumonia)")
    ax.set_ylim(0.5, 1.0)
    ax.legend(fontsize=7, loc="lower center")
    ax.set_title("Threshold sweep (test curves shown, never used to choose)", fontsize=9)
    return figures.save(fig, path), best


def write_task1_report(settings: Settings, out_dir: Path) -> Path:
    study_path = out_dir / STUDY_FILE
    if not study_path.is_file():
        raise CaseReviewError(
            f"{study_path} not found: run `casereview study --summary {study_path}` first "
            "(architecture comparison and seed study; about 25 minutes on a 2-core CPU)."
        )
    study = json.loads(study_path.read_text())
    fig_dir = out_dir / "task1"
    clf = load_classifier(settings.classifier.checkpoint, settings.classifier.device)
    test = evaluate(settings, "test", fig_dir / "test", figures=True)
    val = evaluate(settings, "val", fig_dir / "val", figures=True)
    sweep_path, sweep = threshold_sweep(
        {s: fig_dir / s / "predictions.csv" for s in ("val", "test")}, clf.threshold, fig_dir / "threshold_sweep.png"
    )
    chosen_runs = study["runs"][study["chosen_arch"]]
    seeds_fig = figures.seed_thresholds(chosen_runs, fig_dir / "seed_thresholds.png")
    rel = lambda p: str(Path(p).relative_to(out_dir))  # noqa: E731 - paths in the Markdown are relative to it
    val_split, test_split = (load_split(s, settings.data.root, settings.data.download) for s in ("val", "test"))
    text = render(
        "task1_classification_report.md.j2",
        meta=clf.meta,
        cfg=clf.meta["train_config"],
        cal=clf.meta["calibration"],
        ckpt_sha=clf.sha256,
        test=test,
        val=val,
        study=study,
        chosen_runs=chosen_runs,
        sweep=sweep,
        prevalence={"val": float(val_split.labels.mean()), "test": float(test_split.labels.mean()),
                    "train": float(load_split("train", settings.data.root, settings.data.download).labels.mean())},
        fig={**{f"test_{k}": rel(v) for k, v in test["figures"].items()},
             **{f"val_{k}": rel(v) for k, v in val["figures"].items()},
             "sweep": rel(sweep_path), "seeds": rel(seeds_fig)},
        metric_names=("roc_auc", "accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "pr_auc"),
    )
    path = out_dir / "task1_classification_report.md"
    path.write_text(text)
    return path
