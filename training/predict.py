"""Batched inference with a loaded :class:`Classifier`: logits, calibrated probabilities, features."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit

from casereview.training.checkpoint import Classifier
from casereview.training.data import to_tensor
from casereview.training.models import embed


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected uint8 images of shape (N, 28, 28) or (28, 28), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (0-255), got dtype {images.dtype}")
    return images


def _input(clf: Classifier, images: np.ndarray) -> torch.Tensor:
    """A batch as the loaded model takes it: on its device, channels-last like its weights."""
    return to_tensor(images).to(clf.device, memory_format=torch.channels_last)


@torch.no_grad()
def _batched(clf: Classifier, images: np.ndarray, fn, batch_size: int) -> np.ndarray:
    images = _check_images(images)
    out = [
        fn(_input(clf, images[i : i + batch_size])).float().cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def predict_logits(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Raw (uncalibrated) pneumonia logits, shape (N,)."""
    return _batched(clf, images, lambda x: clf.model(x).reshape(-1), batch_size)


def calibrated_proba(logits: np.ndarray, temperature: float) -> np.ndarray:
    """p(pneumonia) after temperature scaling: sigmoid(logit / T)."""
    # scipy.special, not training.metrics: the review path need not import scikit-learn
    return expit(np.asarray(logits, dtype=np.float64) / temperature)


def predict_proba(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Calibrated p(pneumonia) with the checkpoint's temperature, shape (N,)."""
    return calibrated_proba(predict_logits(clf, images, batch_size), clf.temperature)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length, as float32 (cosine similarity is then a dot product)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)


def embed_images(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate features, L2-normalised, shape (N, D) float32."""
    return l2_normalise(_batched(clf, images, lambda x: embed(clf.model, x), batch_size))


def predict_logits_and_embeddings(clf: Classifier, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (N,) and L2-normalised penultimate features (N, D) from one pass through the
    feature extractor (a model with test-time augmentation takes its logit over its views, as
    :func:`predict_logits` does)."""
    images = _check_images(images)
    logits, feats = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = _input(clf, images[i : i + batch_size])
            features = clf.model.forward_features(x)
            pooled = clf.model.forward_head(features, pre_logits=True)
            tta = getattr(clf.model, "tta_shift", 0)
            logit = clf.model(x) if tta else clf.model.forward_head(features)
            logits.append(logit.reshape(-1).float().cpu().numpy())
            feats.append(pooled.flatten(1).float().cpu().numpy())
    return np.concatenate(logits), l2_normalise(np.concatenate(feats))
