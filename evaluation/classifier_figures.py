"""Matplotlib figures of the classifier evaluation. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

from casereview.data import CLASS_NAMES  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confusion(y: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay.from_predictions(y, pred, display_labels=CLASS_NAMES, cmap="Blues", ax=ax, colorbar=False)
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def roc_pr(y: np.ndarray, prob: np.ndarray, threshold: float, path: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    RocCurveDisplay.from_predictions(y, prob, ax=a, name="classifier")
    a.plot([0, 1], [0, 1], ls=":", c="grey")
    pred = prob >= threshold
    a.scatter([(pred & (y == 0)).sum() / (y == 0).sum()], [(pred & (y == 1)).sum() / (y == 1).sum()],
              c="red", zorder=3, label=f"threshold {threshold:.2f}")
    a.legend(loc="lower right")
    a.set_title("ROC")
    PrecisionRecallDisplay.from_predictions(y, prob, ax=b, name="classifier")
    b.axhline(y.mean(), ls=":", c="grey", label=f"prevalence {y.mean():.2f}")
    b.legend(loc="lower left")
    b.set_title("Precision-recall")
    return save(fig, path)


def reliability(y: np.ndarray, probs: dict[str, np.ndarray], eces: dict[str, float], path: Path, n_bins: int = 10) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfect calibration")
    for name, prob in probs.items():
        frac, mean = calibration_curve(y, prob, n_bins=n_bins, strategy="uniform")
        ax.plot(mean, frac, marker="o", label=f"{name} (ECE {eces[name]:.3f})")
    ax.set_xlabel("predicted p(pneumonia)")
    ax.set_ylabel("observed fraction pneumonia")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability diagram")
    return save(fig, path)


def training_curves(history: Sequence[dict], path: Path, title: str = "") -> Path:
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.plot(ep, [h["train_loss"] for h in history], label="train loss (augmented)")
    a.plot(ep, [h["val_loss"] for h in history], label="validation loss")
    a.set_xlabel("epoch")
    a.legend()
    a.set_title("Loss (class-weighted BCE)")
    b.plot(ep, [h["val_auc"] for h in history], label="validation ROC AUC")
    b.plot(ep, [h["val_balanced_accuracy"] for h in history], label="validation balanced acc. @0.5")
    b.set_xlabel("epoch")
    b.legend()
    b.set_title(title or "Validation metrics")
    return save(fig, path)


def image_grid(images: np.ndarray, captions: Sequence[str], path: Path, cols: int = 8, overlays: np.ndarray | None = None) -> Path:
    """Images with captions; with ``overlays`` each image is followed by its saliency map."""
    per = 2 if overlays is not None else 1
    n = len(images)
    cols = min(cols, max(n * per, 1))
    rows = max(1, int(np.ceil(n * per / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, cap) in enumerate(zip(images, captions)):
        ax = axes.ravel()[i * per]
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(cap, fontsize=7)
        if overlays is not None:
            ax2 = axes.ravel()[i * per + 1]
            ax2.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax2.imshow(overlays[i], cmap="jet", alpha=0.45)
            ax2.set_title("saliency", fontsize=7)
    return save(fig, path)


def map_panel(images: np.ndarray, captions: Sequence[str], maps: dict[str, np.ndarray], path: Path) -> Path:
    """One column per image: the film, then one row per saliency method.

    Occlusion maps are signed logit drops (red: the region supports pneumonia, blue: normal),
    shown on a symmetric scale per image; other maps are in [0, 1].
    """
    n, rows = len(images), 1 + len(maps)
    fig, axes = plt.subplots(rows, n, figsize=(1.5 * n, 1.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(n):
        axes[0, j].imshow(images[j], cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title(captions[j], fontsize=6)
        for i, (name, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(images[j], cmap="gray", vmin=0, vmax=255)
            if "occlusion" in name:
                lim = max(float(np.abs(m[j]).max()), 1e-6)
                axes[i, j].imshow(m[j], cmap="bwr", vmin=-lim, vmax=lim, alpha=0.55)
            else:
                axes[i, j].imshow(m[j], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if j == 0:
                axes[i, j].set_ylabel(name, fontsize=7)
    return save(fig, path)


def mean_maps(maps: dict[str, np.ndarray], path: Path, title: str, cols: int = 5) -> Path:
    """Saliency maps averaged over many films, one panel per (model, method), ``cols`` panels a row."""
    cols = min(cols, len(maps))
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows + 0.3), squeeze=False)
    for ax in axes.ravel()[len(maps):]:
        ax.axis("off")
    for ax, (name, m) in zip(axes.ravel(), maps.items()):
        im = ax.imshow(m, cmap="magma")
        ax.set_title(name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def score_histograms(scores: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float, path: Path) -> Path:
    """p(pneumonia) per class, validation vs test, with the shipped threshold."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=False)
    bins = np.linspace(0, 1, 26)
    for ax, cls in zip(axes, (0, 1)):
        for split, (y, prob) in scores.items():
            ax.hist(prob[y == cls], bins=bins, density=True, histtype="step", lw=1.6, label=f"{split} (n={(y == cls).sum()})")
        ax.axvline(threshold, c="red", lw=1, label=f"threshold {threshold:.2f}")
        ax.set_yscale("log")
        ax.set_title(f"true class: {CLASS_NAMES[cls]}", fontsize=9)
        ax.set_xlabel("calibrated p(pneumonia)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density (log scale)")
    return save(fig, path)


def member_curves(histories: dict[str, Sequence[dict]], path: Path) -> Path:
    """Validation loss and AUC per epoch of every ensemble member (fixed-length runs), by name."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, h in histories.items():
        ep = [r["epoch"] for r in h]
        a.plot(ep, [r["val_loss"] for r in h], label=name)
        b.plot(ep, [r["val_auc"] for r in h], label=name)
    a.set_title("validation loss (class-weighted BCE)", fontsize=9)
    b.set_title("validation ROC AUC", fontsize=9)
    b.set_ylim(0.97, 1.0)
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return save(fig, path)
