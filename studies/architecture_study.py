"""``casereview study``: the architecture comparison (on validation) and the seed study.

Trains each (architecture, seed) that has no checkpoint yet under ``out/<arch>_s<seed>/``
(so an interrupted study resumes) and returns one summary: validation metrics for every
run, the threshold each seed's rule chose, and test metrics for the chosen
architecture's seeds only. The choice of architecture is made on validation AUC and
validation loss; test numbers are reported, never compared to choose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from casereview.config import Settings
from casereview.provenance import utc_now
from casereview.training.classifier import read_meta
from casereview.evaluation.classifier_evaluation import evaluate
from casereview.training.train import train

SUMMARY_METRICS = ("roc_auc", "accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "pr_auc")


def run_dir(out: Path, arch: str, seed: int) -> Path:
    return out / f"{arch}_s{seed}"


def ensure_trained(settings: Settings, out: Path, arch: str, seed: int) -> Path:
    ckpt = run_dir(out, arch, seed) / "classifier.safetensors"
    if ckpt.is_file():
        return ckpt
    cfg = settings.model_copy(update={"train": settings.train.model_copy(update={"arch": arch, "seed": seed})})
    return train(cfg, run_dir(out, arch, seed))


def mean_std(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows], ddof=1))
                if len(rows) > 1 else 0.0} for k in keys}


def _row(ckpt: Path, seed: int) -> dict[str, Any]:
    meta = read_meta(ckpt)
    return {
        "seed": seed,
        "checkpoint": str(ckpt),
        "num_parameters": meta["num_parameters"],
        "train_seconds": meta["train_seconds"],
        "best_epoch": meta["best_epoch"],
        "epochs_run": meta["epochs_run"],
        "val_loss": min(h["val_loss"] for h in meta["history"]),
        "temperature": meta["calibration"]["temperature"],
        **{k: meta["calibration"][k] for k in ("threshold", "threshold_p05", "threshold_p95", "threshold_single_youden")},
        "val": {k: meta["val_metrics"][k] for k in SUMMARY_METRICS},
    }


def run_study(settings: Settings, out: Path, archs: list[str], seeds: list[int]) -> dict[str, Any]:
    """Seed ``seeds[0]`` of every architecture, the choice on validation, then all seeds of the choice."""
    runs = {arch: [_row(ensure_trained(settings, out, arch, seeds[0]), seeds[0])] for arch in archs}
    # Architecture choice on validation only: higher validation AUC, ties broken by validation loss.
    by_val = sorted(archs, key=lambda a: (-runs[a][0]["val"]["roc_auc"], runs[a][0]["val_loss"]))
    chosen = by_val[0]
    runs[chosen] += [_row(ensure_trained(settings, out, chosen, s), s) for s in seeds[1:]]
    for row in runs[chosen]:
        local = settings.model_copy(
            update={"classifier": settings.classifier.model_copy(update={"checkpoint": Path(row["checkpoint"])})}
        )
        test = evaluate(local, "test", Path(row["checkpoint"]).parent / "eval_test", figures=False, n_boot=200)
        row["test"] = {k: test[k] for k in SUMMARY_METRICS}
        row["test_at_0.5"] = {k: test["at_0.5"][k] for k in SUMMARY_METRICS}
    return {
        "created": utc_now(),
        "archs": archs,
        "seeds": seeds,
        "chosen_arch": chosen,
        "choice_rule": f"highest validation ROC AUC of seed {seeds[0]}, ties broken by lower validation loss (no test data)",
        "ranking_on_val": by_val,
        "runs": runs,
        "test_mean_std": mean_std([r["test"] for r in runs[chosen]], SUMMARY_METRICS),
        "test_at_0.5_mean_std": mean_std([r["test_at_0.5"] for r in runs[chosen]], SUMMARY_METRICS),
        "threshold_mean_std": mean_std(runs[chosen], ("threshold", "threshold_single_youden", "temperature")),
    }


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    return path
