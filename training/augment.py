"""Batched, per-sample random augmentation on tensors (one affine_grid/grid_sample call per batch).

torchvision's per-image transforms cost about 8 ms per 28x28 image on this 2-core CPU,
longer than the network's own step; drawing every image's parameters at once and warping
the whole batch in one call is ~100x cheaper and runs on the GPU when there is one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """What a paediatric chest film can plausibly vary by (see ``data.py`` for the reasons)."""

    degrees: float = 10.0  # rotation, uniform in [-degrees, degrees]
    translate: float = 0.08  # shift, fraction of the image side, uniform per axis
    scale: tuple[float, float] = (0.9, 1.1)  # zoom
    brightness: float = 0.2  # intensity multiplied by U[1-b, 1+b]
    contrast: float = 0.2  # deviation from the image mean multiplied by U[1-c, 1+c]


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def augment_batch(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """x: float (N, C, H, W) in [0, 1] -> augmented batch of the same shape and range."""
    n, dev = x.shape[0], x.device
    angle = _uniform(n, -cfg.degrees, cfg.degrees, gen, dev) * math.pi / 180
    scale = _uniform(n, *cfg.scale, gen, dev)
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of f*side is 2f.
    tx = _uniform(n, -cfg.translate, cfg.translate, gen, dev) * 2
    ty = _uniform(n, -cfg.translate, cfg.translate, gen, dev) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    bright = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, dev).view(n, 1, 1, 1)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, dev).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    return (x * bright).clamp(0.0, 1.0)
