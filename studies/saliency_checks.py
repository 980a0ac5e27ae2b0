"""Is the saliency spot the method or the model? Measurements behind the report's saliency section.

- :func:`mean_map`: SmoothGrad, Grad-CAM and occlusion averaged over many films; a peak at one position
  in the average means the maps follow position more than the individual film.
- :func:`shift_consistency`: move the films by a few pixels; maps that follow the content
  move with it, maps tied to a position stay put.
- :func:`region_occlusion`: grey out one square at the same position in every film of a split
  and measure what the decisions lose (a positional shortcut would show as a large effect at
  that position compared with control positions over the lungs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from casereview.training.data import PIXEL_MEAN, to_tensor
from casereview.training.metrics import binary_metrics, sigmoid
from casereview.evaluation.saliency import grad_cam, occlusion, smoothgrad

MEAN_LEVEL = int(round(PIXEL_MEAN * 255))  # occlusion fill: the mean training intensity


def peak(m: np.ndarray) -> dict[str, Any]:
    """Position of a map's maximum and how far it stands out (max / median of |map|)."""
    a = np.abs(m)
    r, c = np.unravel_index(int(a.argmax()), a.shape)
    return {"row": int(r), "col": int(c), "peak_over_median": float(a.max() / max(np.median(a), 1e-12))}


# Image pixels that the network's 1x1 stride-2 shortcut chain reads into its final 2x2 map (stage-1
# positions 0 and 8 of 14, behind the 3x3 stride-2 max-pool): rows and columns 0-2 and 15-17.
LATTICE = np.r_[0:3, 15:18]


def lattice_share(m: np.ndarray) -> float:
    """Share of a map's total |value| on the shortcut lattice (36 of 784 pixels: 4.6% if spread evenly)."""
    a = np.abs(m)
    return float(a[np.ix_(LATTICE, LATTICE)].sum() / max(a.sum(), 1e-12))


def mean_map(model: nn.Module, images: np.ndarray, method: str, batch: int = 16, stride: int = 2) -> np.ndarray:
    """The mean max-normalised SmoothGrad or Grad-CAM map (``gradcam_<stage>``), or the mean |occlusion|
    map (5x5 patches every ``stride`` pixels), over ``images`` (uint8)."""
    maps = []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch])
        if method == "smoothgrad":
            maps.append(smoothgrad(model, x, n_samples=8))
        elif method.startswith("gradcam_"):
            maps.append(grad_cam(model, x, method.removeprefix("gradcam_")))
        else:
            maps.append(np.abs(occlusion(model, x, stride=stride)))
    return np.concatenate(maps).mean(0)


def shift_consistency(model: nn.Module, images: np.ndarray, shift: int = 3,
                      methods: tuple[str, ...] = ("smoothgrad", "occlusion")) -> dict[str, dict[str, Any]]:
    """Where does each method's mean-map peak go when the films move by ``shift`` pixels?

    For each method and each of four directions: the peak of the mean map of the moved films, and
    whether it moved with the content (by about ``shift`` in that direction) or stayed where it was.
    """
    out = {}
    for method in methods:
        base = peak(mean_map(model, images, method, stride=3))
        rows = []
        for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)):
            # the content moved by (dy, dx) pixels; uncovered pixels black, like a film inside a frame
            moved_films = ndimage.shift(images, (0, dy, dx), order=0, mode="constant", cval=0)
            p = peak(mean_map(model, moved_films, method, stride=3))
            moved = abs(p["row"] - base["row"] - dy) + abs(p["col"] - base["col"] - dx)
            stayed = abs(p["row"] - base["row"]) + abs(p["col"] - base["col"])
            rows.append({"dy": dy, "dx": dx, "peak": p, "follows_content": bool(moved < stayed)})
        out[method] = {"base_peak": base, "shifted": rows,
                       "n_follow": sum(r["follows_content"] for r in rows)}
    return out


def grey_square(images: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """``images`` with a ``size`` x ``size`` square centred on (row, col) set to the mean training intensity."""
    out = images.copy()
    r0, c0 = max(row - size // 2, 0), max(col - size // 2, 0)
    out[:, r0 : r0 + size, c0 : c0 + size] = MEAN_LEVEL
    return out


@torch.no_grad()
def region_occlusion(logits_fn, images: np.ndarray, y: np.ndarray, temperature: float, threshold: float,
                     positions: dict[str, tuple[int, int]], size: int = 7) -> dict[str, dict[str, float]]:
    """Metrics when the same square is greyed out in every film, per named position, against no occlusion."""
    base = logits_fn(images)
    base_pred = sigmoid(base / temperature) >= threshold
    out = {"none": {**_metrics(y, base, temperature, threshold), "flipped": 0.0, "mean_abs_logit_change": 0.0}}
    for name, (r, c) in positions.items():
        z = logits_fn(grey_square(images, r, c, size))
        out[name] = {**_metrics(y, z, temperature, threshold),
                     "flipped": float(((sigmoid(z / temperature) >= threshold) != base_pred).mean()),
                     "mean_abs_logit_change": float(np.abs(z - base).mean())}
    return out


def _metrics(y: np.ndarray, logits: np.ndarray, temperature: float, threshold: float) -> dict[str, float]:
    m = binary_metrics(y, sigmoid(logits / temperature), threshold)
    return {"roc_auc": m["roc_auc"], "sensitivity": m["recall"], "specificity": m["specificity"]}
