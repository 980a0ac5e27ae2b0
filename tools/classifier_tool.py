"""The CNN classifier as a capability: calibrated opinion plus a split-conformal uncertainty flag,
and its langchain-core tool wrapper."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool, tool
from pydantic import BaseModel, Field

from casereview.data import load_case
from casereview.config import Settings
from casereview.schemas import ClassifierOpinion
from casereview.training.checkpoint import Classifier, load_classifier
from casereview.data import load_split
from casereview.training.metrics import conformal_qhat, prediction_set
from casereview.training.predict import predict_proba


@dataclass(frozen=True)
class CaseClassifier:
    """A loaded checkpoint with its split-conformal quantile, calibrated on validation."""

    clf: Classifier
    qhat: float
    alpha: float

    def opinion(self, image: np.ndarray) -> tuple[ClassifierOpinion, list[str]]:
        """The calibrated opinion on one image and its conformal prediction set.

        ``uncertain`` is set when the conformal set is not exactly the thresholded label:
        two labels (the model cannot rule either out at level alpha), none, or the other label.
        """
        p = float(predict_proba(self.clf, image)[0])
        label = "pneumonia" if p >= self.clf.threshold else "normal"
        pset = prediction_set(p, self.qhat)
        return ClassifierOpinion(
            prob_pneumonia=p, label=label, threshold=self.clf.threshold, temperature=self.clf.temperature,
            uncertain=pset != [label], checkpoint_sha256=self.clf.sha256,
        ), pset


@lru_cache(maxsize=4)
def _load(checkpoint: str | None, device: str, data_root: str | None, download: bool, alpha: float) -> CaseClassifier:
    clf = load_classifier(checkpoint, device)
    val = load_split("val", data_root, download)
    return CaseClassifier(clf, conformal_qhat(val.labels, predict_proba(clf, val.images), alpha), alpha)


def case_classifier(settings: Settings) -> CaseClassifier:
    """The configured classifier, loaded and conformal-calibrated once per process."""
    c = settings.classifier
    return _load(str(c.checkpoint) if c.checkpoint else None, c.device,
                 str(settings.data.root) if settings.data.root else None, settings.data.download,
                 settings.graph.conformal_alpha)


class ClassifyCaseArgs(BaseModel):
    case_ref: str = Field(description="the case: split:index (e.g. test:42) or an image file path")


def make_classifier_tool(settings: Settings, classifier: CaseClassifier | None = None) -> BaseTool:
    """A ``classify_case`` tool over the configured checkpoint."""
    classifier = classifier or case_classifier(settings)

    @tool("classify_case", args_schema=ClassifyCaseArgs)
    def classify_case(case_ref: str) -> dict[str, Any]:
        """Classify one paediatric chest X-ray: calibrated p(pneumonia), the label at the validation
        threshold, and whether the case is uncertain (split-conformal prediction set on validation)."""
        opinion, pset = classifier.opinion(load_case(case_ref, settings.data.root, settings.data.download).image)
        return opinion.model_dump() | {"prediction_set": pset, "conformal_alpha": classifier.alpha,
                                       "arch": classifier.clf.arch}

    return classify_case
