"""``casereview ensemble``: members of one recipe -> one released-style checkpoint (mean logit).

The release rule, fixed before any test data is read: every seed of the chosen recipe is a
member (no seed is picked), the logit is the mean of the members' logits, and one
temperature, one threshold and one conformal quantile are fitted for the ensemble on
validation (:mod:`casereview.training.calibration`). The test split is never read here.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from torch import nn

from casereview.config import Settings
from casereview.data import data_file, load_split
from casereview.provenance import git_commit, package_versions, sha256_file, utc_now
from casereview.training.calibration import fit_calibration
from casereview.training.checkpoint import TorchClassifier, load_classifier, save_checkpoint
from casereview.training.classifier import CheckpointError
from casereview.training.metrics import binary_metrics, binary_nll, fit_temperature, sigmoid
from casereview.training.models import MeanLogitEnsemble, count_parameters
from casereview.training.predict import predict_logits

PREDICT_BUDGET_N, PREDICT_BUDGET_S = 624, 10.0  # a test-sized split must be predicted within 10 s
TTA_SHIFT = 1  # pixels; about 4% of the image side, within the training augmentation's shifts
# Per-member settings that may differ between members; everything else in the config must match.
MEMBER_KEYS = ("seed", "threads", "device", "num_workers")


def _as_classifier(template: TorchClassifier, model: nn.Module) -> TorchClassifier:
    """``template`` with another module, so that members and ensemble share the one prediction path."""
    return replace(template, model=model)


def _recipe(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.get("train_config", {}).items() if k not in MEMBER_KEYS}


def build_ensemble(settings: Settings, members: list[Path], out: Path) -> Path:
    """Combine ``members`` (checkpoints of one recipe) and calibrate on validation; write ``out``."""
    clfs = [load_classifier(p, "cpu") for p in members]
    recipes = {str(sorted(_recipe(c.meta).items())) for c in clfs}
    if len(clfs) < 2 or len(recipes) != 1:
        raise CheckpointError("an ensemble needs two or more members trained with one recipe (only the seed differs)")
    first = clfs[0].meta
    model = MeanLogitEnsemble([c.model for c in clfs]).eval()
    val = load_split("val", settings.data.root, settings.data.download)
    tta = tta_review(_as_classifier(clfs[0], model), val.images, val.labels)
    model.tta_shift = tta["chosen_shift"]
    logits = predict_logits(_as_classifier(clfs[0], model), val.images)
    cal = fit_calibration(logits, val.labels)
    root = settings.data.root
    meta: dict[str, Any] = {
        "arch": "ensemble",
        "member_arch": first["arch"],
        "n_members": len(clfs),
        "input_norm": first.get("input_norm", "dataset"),
        "combination": "mean of member logits",
        "tta_shift": model.tta_shift,
        "tta_review": tta,
        "embedding": "concatenation of the members' L2-normalised pre-logit features (scaled to unit norm)",
        "num_parameters": count_parameters(model),
        "train_config": _recipe(first),
        "members": [
            {"checkpoint": str(p), "sha256": c.sha256, "seed": c.meta["train_config"]["seed"],
             "train_seconds": c.meta.get("train_seconds"), "epochs_run": c.meta.get("epochs_run"),
             "best_epoch": c.meta.get("best_epoch"), "calibration": c.meta.get("calibration"),
             "val_metrics": c.meta.get("val_metrics"), "history": c.meta.get("history")}
            for p, c in zip(members, clfs)
        ],
        "train_seconds": round(sum(c.meta.get("train_seconds", 0.0) for c in clfs), 1),
        "data_file": data_file(root).name,
        "data_sha256": sha256_file(data_file(root)),
        "git_commit": git_commit(),
        "packages": package_versions(("torch", "timm", "medmnist", "scikit-learn")),
        "created": utc_now(),
        "device": first.get("device"),
        "calibration": cal,
        "val_metrics": binary_metrics(val.labels, sigmoid(logits / cal["temperature"]), cal["threshold"]),
    }
    return save_checkpoint(model, out, meta)


def tta_review(clf: TorchClassifier, images: np.ndarray, y: np.ndarray, shift: int = TTA_SHIFT) -> dict[str, Any]:
    """Validation ROC AUC, loss and prediction cost without and with shift test-time augmentation.

    TTA is kept only if it raises the validation AUC and the CPU time it needs for a test-sized split
    stays within :data:`PREDICT_BUDGET_S` (process CPU seconds, which a shared machine's load inflates
    far less than wall time). The rule was fixed before the ensemble's numbers were seen; the test
    split is not read.
    """
    rows = {}
    for s in (0, shift):
        clf.model.tta_shift = s
        start = time.process_time()
        logits = predict_logits(clf, images)
        cpu_s = (time.process_time() - start) * PREDICT_BUDGET_N / len(images)
        rows[str(s)] = {"val_roc_auc": float(roc_auc_score(y, logits)),
                        "val_nll_at_fitted_temperature": binary_nll(logits / fit_temperature(logits, y), y),
                        f"cpu_s_per_{PREDICT_BUDGET_N}": cpu_s}
    clf.model.tta_shift = 0
    better = rows[str(shift)]["val_roc_auc"] > rows["0"]["val_roc_auc"]
    affordable = rows[str(shift)][f"cpu_s_per_{PREDICT_BUDGET_N}"] <= PREDICT_BUDGET_S
    return {"views": {"0": 1, str(shift): 5}, "by_shift": rows, "chosen_shift": shift if better and affordable else 0,
            "raises_val_auc": better, "within_budget": affordable,
            "rule": (f"{shift}-pixel shift TTA (5 views) kept only if it raises validation ROC AUC and predicts "
                     f"{PREDICT_BUDGET_N} films in at most {PREDICT_BUDGET_S:.0f} CPU seconds")}


def member_logits(path: Path, images: np.ndarray) -> np.ndarray:
    """(n_members, N) raw logits of each member of an ensemble checkpoint (for the seed table)."""
    clf = load_classifier(path, "cpu")
    return np.stack([predict_logits(_as_classifier(clf, m), images) for m in clf.model.members])
