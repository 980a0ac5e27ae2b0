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
    gamma: float = 1.0  # intensity raised to a power, log-uniform in [1/gamma, gamma] (1: off)
    blur_p: float = 0.0  # probability of a Gaussian blur ...
    blur_sigma: float = 0.0  # ... with sigma ~ U[0.3, blur_sigma] pixels
    noise_p: float = 0.0  # probability of additive Gaussian noise ...
    noise_std: float = 0.0  # ... with std ~ U[0, noise_std] (intensity scale [0, 1])


# "robust": exposure, processing and sharpness vary more between real acquisitions than the
# standard preset allows (darker/brighter films, flat or hard contrast, gamma of the
# processing curve, soft focus or motion blur, detector noise).
PRESETS = {
    "standard": AugmentConfig(),
    "robust": AugmentConfig(brightness=0.4, contrast=0.4, gamma=1.8, blur_p=0.5, blur_sigma=1.2, noise_p=0.3,
                            noise_std=0.05),
}


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Blur each image of (N, 1, H, W) with its own Gaussian sigma (N,), reflect padding; sigma <= 0 leaves it."""
    n = x.shape[0]
    r = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.clamp(min=1e-3).view(n, 1)
    k1 = torch.exp(-(r.view(1, -1) ** 2) / (2 * s**2))
    k1 = torch.where(sigma.view(n, 1) > 0, k1, (r.view(1, -1) == 0).to(x.dtype))
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    kernel = (k1[:, :, None] * k1[:, None, :]).unsqueeze(1)  # (N, 1, k, k)
    padded = F.pad(x.reshape(1, n, *x.shape[2:]), (radius,) * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=n).reshape(x.shape)


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
    x = ((x - mean) * contrast + mean) * bright
    if cfg.gamma != 1.0:
        log_g = _uniform(n, -math.log(cfg.gamma), math.log(cfg.gamma), gen, dev).view(n, 1, 1, 1)
        x = x.clamp(0.0, 1.0) ** torch.exp(log_g)
    if cfg.blur_p > 0:
        sigma = _uniform(n, 0.3, cfg.blur_sigma, gen, dev) * (torch.rand(n, generator=gen, device=dev) < cfg.blur_p)
        x = gaussian_blur(x, sigma)
    if cfg.noise_p > 0:
        std = _uniform(n, 0.0, cfg.noise_std, gen, dev) * (torch.rand(n, generator=gen, device=dev) < cfg.noise_p)
        x = x + std.view(n, 1, 1, 1) * torch.randn(x.shape, generator=gen, device=dev)
    return x.clamp(0.0, 1.0)
