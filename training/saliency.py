"""SmoothGrad saliency (Smilkov et al., 2017): where small input changes move the pneumonia logit.

Grad-CAM on this network would explain a 2x2 final feature map (28 px after four
down-samplings), which is too coarse to point at anything in the lungs; input-gradient
maps keep the full 28x28 resolution and work the same for the CNN and the ViT.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def smoothgrad(model: nn.Module, x: torch.Tensor, n_samples: int = 32, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """|d logit / d input| averaged over noisy copies; x is (N, 1, H, W) normalised. Returns (N, H, W) in [0, 1]."""
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noisy = (x + noise * x.std() * torch.randn(x.shape, generator=gen, device=x.device)).requires_grad_(True)
        model(noisy).sum().backward()
        total += noisy.grad.abs()
    maps = total.squeeze(1).cpu().numpy()
    maxima = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return maps / np.clip(maxima, 1e-12, None)
