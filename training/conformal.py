"""Split-conformal prediction sets for the binary classifier, centred on its decision threshold.

numpy only (no scikit-learn), so the review path imports it cheaply.
"""

from __future__ import annotations

import numpy as np


def centred(prob: np.ndarray | float, centre: float) -> np.ndarray:
    """p(pneumonia) shifted on the logit scale so that ``centre`` (the decision threshold) maps to 0.5.

    Conformal sets are then centred on the threshold the label is drawn at, not on 0.5.
    """
    prob = np.clip(np.asarray(prob, dtype=float), 1e-12, 1 - 1e-12)
    c = min(max(float(centre), 1e-12), 1 - 1e-12)
    return 1.0 / (1.0 + np.exp(-(np.log(prob / (1 - prob)) - np.log(c / (1 - c)))))


def conformal_qhat(y: np.ndarray, prob: np.ndarray, alpha: float = 0.05, centre: float = 0.5) -> float:
    """Split-conformal quantile of the score 1 - p(true class) on a calibration set (LAC).

    Probabilities are first centred on ``centre`` (see :func:`centred`). A new case's prediction
    set {c : 1 - p_c <= qhat} then holds its true label with probability >= 1 - alpha
    (exchangeability with the calibration set assumed).
    """
    y, prob = np.asarray(y), centred(prob, centre)
    scores = np.where(y == 1, 1 - prob, prob)
    n = len(scores)
    level = min(1.0, np.ceil((n + 1) * (1 - alpha)) / n)
    return float(np.quantile(scores, level, method="higher"))


def prediction_set(prob: float, qhat: float, centre: float = 0.5) -> list[str]:
    """The conformal prediction set of one case, as labels (same ``centre`` as the quantile)."""
    p = float(centred(prob, centre))
    return [name for name, q in (("normal", 1 - p), ("pneumonia", p)) if 1 - q <= qhat]
