"""The CNN classifier as a capability: calibrated opinion plus a split-conformal uncertainty flag.

The conformal quantile comes from the checkpoint's metadata (``calibration.conformal``, fitted
on validation when the checkpoint was made). For a checkpoint without it, it is computed once
on the validation split, centred on the checkpoint's threshold, and kept in a small cache file
under the workdir so that later processes start without predicting the validation split again.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from casereview.config import Settings
from casereview.data import load_split
from casereview.records import write_atomic
from casereview.schemas import ClassifierResult
from casereview.training.classifier import Classifier, open_classifier
from casereview.training.conformal import conformal_qhat, prediction_set
from casereview.training.predict import calibrated_proba, predict_logits_and_embeddings, predict_proba

@dataclass(frozen=True)
class CaseClassifier:
    """A loaded checkpoint with its split-conformal quantile (centred on the decision threshold)."""

    clf: Classifier
    qhat: float
    alpha: float
    centre: float

    def analyse(self, images: np.ndarray) -> tuple[list[ClassifierResult], np.ndarray]:
        """Opinions and unit embeddings (N, D) of uint8 (N, 28, 28) images, from one forward pass.

        ``uncertain`` is set when the conformal set is not exactly the thresholded label:
        two labels (the model cannot rule either out at level alpha), none, or the other label.
        """
        logits, embeddings = predict_logits_and_embeddings(self.clf, images)
        return [self._result(float(p)) for p in calibrated_proba(logits, self.clf.temperature)], embeddings

    def _result(self, p: float) -> ClassifierResult:
        label = "pneumonia" if p >= self.clf.threshold else "normal"
        pset = prediction_set(p, self.qhat, self.centre)
        return ClassifierResult(
            prob_pneumonia=p, label=label, threshold=self.clf.threshold, temperature=self.clf.temperature,
            uncertain=pset != [label], checkpoint_sha256=self.clf.checkpoint_sha256, prediction_set=pset,
            conformal_alpha=self.alpha, arch=self.clf.arch,
        )

    def analyse_one(self, image: np.ndarray) -> tuple[ClassifierResult, np.ndarray]:
        """Opinion and unit embedding (D,) of one uint8 (28, 28) image."""
        opinions, embeddings = self.analyse(np.asarray(image, dtype=np.uint8)[None])
        return opinions[0], embeddings[0]

    def opinions(self, images: np.ndarray) -> list[ClassifierResult]:
        """Opinions on a batch of uint8 (N, 28, 28) images (one forward pass)."""
        return self.analyse(images)[0]


def _conformal(clf: Classifier, settings: Settings) -> tuple[float, float]:
    """(qhat, centre) for ``settings.graph.conformal_alpha``: from the checkpoint, the cache, or validation."""
    alpha = settings.graph.conformal_alpha
    shipped = clf.meta.get("calibration", {}).get("conformal")
    if shipped and abs(float(shipped["alpha"]) - alpha) < 1e-12:
        return float(shipped["qhat"]), float(shipped["centre"])
    cache = Path(settings.paths.workdir) / "cache" / f"conformal-{clf.sha256[:16]}-a{alpha:g}.json"
    if cache.is_file():
        got = json.loads(cache.read_text())
        return float(got["qhat"]), float(got["centre"])
    print(f"fitting the conformal band of checkpoint {clf.sha256[:12]} on the validation split (once; cached "
          f"in {cache.parent})", file=sys.stderr)
    val = load_split("val", settings.data.root, settings.data.download)
    with clf.all_cores():
        qhat = conformal_qhat(val.labels, predict_proba(clf, val.images), alpha, clf.threshold)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps({"qhat": qhat, "centre": clf.threshold, "alpha": alpha, "fitted_on": "val"}))
    return qhat, clf.threshold


def load_case_classifier(settings: Settings) -> CaseClassifier:
    """The configured checkpoint, loaded once, with its conformal calibration."""
    c = settings.classifier
    if c.threads:
        # numpy's BLAS too, for the rest of the process (the input gate's distance is one small
        # product per case): its idle threads stalled each call by ~10 ms on a busy machine.
        threadpool_limits(limits=c.threads, user_api="blas")
    clf = open_classifier(c.checkpoint, c.runtime, c.device, c.threads)
    qhat, centre = _conformal(clf, settings)
    return CaseClassifier(clf, qhat, settings.graph.conformal_alpha, centre)
