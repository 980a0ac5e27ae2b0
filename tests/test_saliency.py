"""Occlusion sensitivity, SmoothGrad and the model-randomisation check on tiny models with a known answer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from casereview.training.saliency import occlusion, randomisation_check, rank_correlation, smoothgrad


class BlobDetector(nn.Module):
    """logit = brightness of a fixed 3x3 window at rows/cols 18-20: the only place the decision depends on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 18:21, 18:21].sum(dim=(1, 2, 3))


def _blob_image() -> torch.Tensor:
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 17:22, 17:22] = 3.0  # a bright blob over the window
    return x


def test_occlusion_has_image_shape_and_peaks_on_the_blob():
    maps = occlusion(BlobDetector(), _blob_image(), patch=5)
    assert maps.shape == (2, 28, 28)
    r, c = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 17 <= r <= 21 and 17 <= c <= 21 and maps[0].max() > 0
    assert np.allclose(maps[0, :8, :8], 0)  # far from the window occlusion changes nothing


def test_occlusion_stride_still_covers_every_pixel():
    maps = occlusion(BlobDetector(), _blob_image(), patch=5, stride=2)
    assert maps.shape == (2, 28, 28) and np.isfinite(maps).all()


def test_smoothgrad_is_normalised_and_localised():
    maps = smoothgrad(BlobDetector(), _blob_image(), n_samples=4)
    assert maps.shape == (2, 28, 28) and maps.max() == 1.0
    assert maps[0, 18:21, 18:21].min() > 0.99 and maps[0, :17].max() == 0


def test_randomisation_check_runs_on_a_tiny_model_and_separates_trained_from_random():
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    x = torch.randn(3, 1, 28, 28)
    out = randomisation_check(BlobDetector(), tiny, x, n_samples=4)
    assert set(out["spearman"]) == {"smoothgrad", "occlusion"}
    assert out["maps"]["trained"]["occlusion"].shape == (3, 28, 28)
    for method in ("smoothgrad", "occlusion"):
        assert -1 <= out["spearman"][method]["mean"] < 0.5  # a window detector vs a random conv net
    same = rank_correlation(out["maps"]["trained"]["smoothgrad"], out["maps"]["trained"]["smoothgrad"])
    assert np.allclose(same, 1.0)
