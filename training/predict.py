"""Batched inference with a loaded :class:`Classifier` (either runtime): logits, calibrated
probabilities, embeddings. Imports neither torch nor onnxruntime."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from casereview.training.classifier import Classifier


def check_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) images, a single (28, 28) image made a batch of one; anything else is refused."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected uint8 images of shape (N, 28, 28) or (28, 28), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (0-255), got dtype {images.dtype}")
    return images


def calibrated_proba(logits: np.ndarray, temperature: float) -> np.ndarray:
    """p(pneumonia) after temperature scaling: sigmoid(logit / T)."""
    # scipy.special, not training.metrics: the review path need not import scikit-learn
    return expit(np.asarray(logits, dtype=np.float64) / temperature)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length, as float32 (cosine similarity is then a dot product)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)


def predict_logits_and_embeddings(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (N,) and L2-normalised penultimate features (N, D) from one pass per batch."""
    images = check_images(images)
    if not len(images):
        return np.zeros((0,), np.float32), np.zeros((0, 0), np.float32)
    out = [clf.forward(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate([o[0] for o in out]), l2_normalise(np.concatenate([o[1] for o in out]))


def predict_logits(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Raw (uncalibrated) pneumonia logits, shape (N,)."""
    return predict_logits_and_embeddings(clf, images, batch_size)[0]


def predict_proba(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Calibrated p(pneumonia) with the checkpoint's temperature, shape (N,)."""
    return calibrated_proba(predict_logits(clf, images, batch_size), clf.temperature)


def embed_images(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate features, L2-normalised, shape (N, D) float32."""
    return predict_logits_and_embeddings(clf, images, batch_size)[1]
