"""``casereview evaluate``: metrics with bootstrap intervals, calibration and (optionally) figures for one split.

The checkpoint's temperature and threshold were fitted on validation by ``casereview train``;
evaluation only applies them.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from casereview.data import case_id
from casereview.config import Settings
from casereview.provenance import package_versions, utc_now
from casereview.training.checkpoint import load_classifier
from casereview.training.classifier import Classifier, open_classifier
from casereview.data import CLASS_NAMES, load_split
from casereview.training.data import to_tensor
from casereview.training.metrics import (
    binary_metrics,
    bootstrap_intervals,
    expected_calibration_error,
    sigmoid,
)
from casereview.training.models import single_view
from casereview.training.predict import predict_logits
from casereview.evaluation.failure_analysis import conformal_summary, outcomes, random_examples

GALLERY_SIZE = 8  # failure cases of each kind shown in the gallery
SALIENCY_PER_OUTCOME = 2  # films of each outcome (TP, TN, FP, FN) in the saliency panels


def write_predictions(path: Path, split: str, y: np.ndarray, prob: np.ndarray, logits: np.ndarray, threshold: float) -> None:
    """One row per case. The probability is written exactly (shortest round-trip form): the reports recompute
    conformal coverage from this file, and a case whose score defines the conformal quantile changes sets
    when p is rounded to six decimals."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "label", "prob_pneumonia", "pred", "logit"])
        for i, (yi, pi, li) in enumerate(zip(y, prob, logits)):
            w.writerow([case_id(split, i), int(yi), repr(float(pi)), int(pi >= threshold), f"{li:.5f}"])


def failure_cases(y: np.ndarray, prob: np.ndarray, threshold: float, n: int = GALLERY_SIZE) -> dict[str, list[int]]:
    """Most confident mistakes: false positives by highest p, false negatives by lowest p."""
    fp = np.flatnonzero((y == 0) & (prob >= threshold))
    fn = np.flatnonzero((y == 1) & (prob < threshold))
    return {
        "false_positives": fp[np.argsort(-prob[fp])][:n].tolist(),
        "false_negatives": fn[np.argsort(prob[fn])][:n].tolist(),
    }


def _caption(split: str, i: int, y: np.ndarray, prob: np.ndarray, group: str | None = None) -> str:
    head = f"{group} " if group else ""
    return f"{head}{case_id(split, i)}\ntrue {CLASS_NAMES[y[i]]}, p={prob[i]:.2f}"


def saliency_sample(groups: np.ndarray, failures: dict[str, list[int]]) -> list[int]:
    """The fixed films whose saliency maps the reports show: ``SALIENCY_PER_OUTCOME`` random true positives
    and true negatives (fixed seed), then as many of the most confident false positives and false negatives."""
    n = SALIENCY_PER_OUTCOME
    return (random_examples(groups, "TP", n) + random_examples(groups, "TN", n)
            + failures["false_positives"][:n] + failures["false_negatives"][:n])


def _figures(clf: Classifier, split: str, images: np.ndarray, y: np.ndarray, prob: np.ndarray,
             prob_raw: np.ndarray, eces: dict[str, float], failures: dict[str, list[int]], out: Path) -> dict[str, str]:
    # matplotlib and the saliency methods: imported only when figures are drawn
    from casereview.evaluation import classifier_figures as figures
    from casereview.evaluation.saliency import occlusion, smoothgrad

    thr = clf.threshold
    paths = {
        "confusion": figures.confusion(y, (prob >= thr).astype(int), out / "confusion_matrix.png",
                                       f"{split}, threshold {thr:.2f}"),
        "confusion_05": figures.confusion(y, (prob >= 0.5).astype(int), out / "confusion_matrix_05.png",
                                          f"{split}, threshold 0.50"),
        "roc_pr": figures.roc_pr(y, prob, thr, out / "roc_pr.png"),
        "reliability": figures.reliability(
            y, {"before (T=1)": prob_raw, f"after (T={clf.temperature:.2f})": prob},
            {"before (T=1)": eces["ece_before"], f"after (T={clf.temperature:.2f})": eces["ece_after"]},
            out / "reliability.png"),
    }
    if clf.meta.get("history"):
        paths["training_curves"] = figures.training_curves(clf.meta["history"], out / "training_curves.png")
    labelled = [("FP", i) for i in failures["false_positives"]] + [("FN", i) for i in failures["false_negatives"]]
    if labelled:
        caps = [_caption(split, i, y, prob, g) for g, i in labelled]
        paths["failures"] = figures.image_grid(images[[i for _, i in labelled]], caps, out / "failure_cases.png")
    groups = outcomes(y, prob, thr)
    correct = [(g, i) for g in ("TP", "TN") for i in random_examples(groups, g, GALLERY_SIZE)]
    if correct:
        caps = [_caption(split, i, y, prob, g) for g, i in correct]
        paths["correct"] = figures.image_grid(images[[i for _, i in correct]], caps, out / "correct_cases.png")
    # Saliency for a fixed sample by SmoothGrad (local gradient) and occlusion (what the logit loses without a region).
    sample = saliency_sample(groups, failures)
    if sample:
        # saliency needs gradients: the checkpoint in torch, whichever runtime made the predictions
        torch_clf = clf if clf.runtime == "torch" else load_classifier(clf.path, "cpu")
        x = to_tensor(images[sample]).to(torch_clf.device)
        with single_view(torch_clf.model) as model:
            maps = {"SmoothGrad": smoothgrad(model, x), "occlusion (5x5)": occlusion(model, x, stride=2)}
        caps = [_caption(split, i, y, prob, groups[i]) for i in sample]
        paths["saliency"] = figures.map_panel(images[sample], caps, maps, out / "saliency.png")
    return {k: str(v) for k, v in paths.items()}


def evaluate(settings: Settings, split: str, out: Path, figures: bool = True, n_boot: int = 1000) -> dict[str, Any]:
    """Evaluate ``settings.classifier.checkpoint`` (default: released) on ``split``; write to ``out``."""
    start = time.perf_counter()
    c = settings.classifier
    clf = open_classifier(c.checkpoint, c.runtime, c.device)
    data = load_split(split, settings.data.root, settings.data.download)
    # minutes on a small CPU (most of it the saliency maps): say what is running
    print(f"evaluating {clf.path.name} ({clf.runtime}) on {len(data.images)} {split} images: predictions, 2 x {n_boot} bootstrap "
          "resamples" + (", figures and saliency maps" if figures else "") + " ...", file=sys.stderr, flush=True)
    logits = predict_logits(clf, data.images, settings.classifier.batch_size)
    infer_s = time.perf_counter() - start
    y = data.labels
    prob_raw, prob = sigmoid(logits), sigmoid(logits / clf.temperature)
    thr = clf.threshold
    main = binary_metrics(y, prob, thr)
    eces = {"ece_before": expected_calibration_error(y, prob_raw), "ece_after": expected_calibration_error(y, prob)}
    failures = failure_cases(y, prob, thr)
    metrics: dict[str, Any] = {
        "split": split,
        "n": int(len(y)),
        "n_pneumonia": int(y.sum()),
        **main,
        "threshold": thr,
        "threshold_rule": clf.meta.get("calibration", {}).get("threshold_rule"),
        "temperature": clf.temperature,
        "ci95": bootstrap_intervals(y, prob, thr, n_boot=n_boot),
        "at_0.5": binary_metrics(y, prob, 0.5),
        "ci95_at_0.5": bootstrap_intervals(y, prob, 0.5, n_boot=n_boot),
        **eces,
        "failures": failures,
        "checkpoint": str(clf.path),
        "checkpoint_sha256": clf.checkpoint_sha256,
        "runtime": clf.runtime,
        "model_sha256": clf.sha256,  # the file that made the predictions (the checkpoint, or its ONNX export)
        "arch": clf.arch,
        "data_sha256_at_training": clf.meta.get("data_sha256"),
        "packages": package_versions(),
        "created": utc_now(),
    }
    conformal = clf.meta.get("calibration", {}).get("conformal")
    if conformal:  # reporting only: empirical coverage of the shipped sets on this split
        metrics["conformal"] = conformal_summary(y, prob, thr, conformal)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.csv", split, y, prob, logits, thr)
    if figures:
        metrics["figures"] = _figures(clf, split, data.images, y, prob, prob_raw, eces, failures, out)
    metrics["timings_s"] = {"inference": round(infer_s, 3), "total": round(time.perf_counter() - start, 3)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    return metrics
