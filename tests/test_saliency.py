"""Occlusion sensitivity, SmoothGrad, Grad-CAM and the model-randomisation check on tiny models with a known answer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from casereview.training.models import MeanLogitEnsemble, create_classifier
from casereview.evaluation.saliency import grad_cam, occlusion, randomisation_check, rank_correlation, smoothgrad


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


class PooledBlobDetector(nn.Module):
    """A stage ``layer1`` that halves the resolution (28 -> 14), then logit = ``sign`` x mean of that map:
    the evidence is wherever the image is bright."""

    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.layer1 = nn.AvgPool2d(2)
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign * self.layer1(x).mean(dim=(1, 2, 3))


def _tiny_resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_classifier("cr_resnet_small").eval()


def test_grad_cam_has_image_shape_and_range_at_both_stages_of_a_random_resnet():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    for stage in ("layer1", "layer2"):
        maps = grad_cam(_tiny_resnet(0), x, stage)
        assert maps.shape == (3, 28, 28) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1.0 + 1e-6


def test_grad_cam_peaks_on_the_blob_and_shows_no_evidence_against():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 4:8, 18:22] = 3.0  # one bright blob, off-centre and away from the 18-20 window of BlobDetector
    maps = grad_cam(PooledBlobDetector(), x, "layer1")
    r, c = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 4 <= r <= 7 and 18 <= c <= 21 and np.isclose(maps[0].max(), 1.0)
    assert maps[0, 14:, :].max() == 0 and maps[0, :, :14].max() == 0  # bilinear spread stays near the blob
    assert np.abs(grad_cam(PooledBlobDetector(sign=-1.0), x, "layer1")).max() == 0  # ReLU: only evidence for the logit


class _Rectify(nn.Module):
    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.sign * x)


class Member(nn.Module):
    """Stage ``layer1`` sees the bright (``sign=1``) or the dark (``sign=-1``) parts of the image, pooled to
    14x14; logit = ``weight`` x the stage's mean."""

    def __init__(self, sign: float, weight: float = 1.0):
        super().__init__()
        self.layer1 = nn.Sequential(_Rectify(sign), nn.AvgPool2d(2))
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self.layer1(x).mean(dim=(1, 2, 3))


def test_grad_cam_of_an_ensemble_is_the_mean_of_its_members_maps():
    x = torch.zeros(1, 1, 28, 28)
    x[:, :, 4:8, 4:8] = 3.0  # bright blob: the evidence of the first member
    x[:, :, 20:24, 20:24] = -3.0  # dark blob: the evidence of the second
    bright, dark = (grad_cam(Member(s), x, "layer1")[0] for s in (1.0, -1.0))
    assert bright[5, 5] == 1 and bright[21, 21] == 0 and dark[21, 21] == 1 and dark[5, 5] == 0
    both = grad_cam(MeanLogitEnsemble([Member(1.0), Member(-1.0)]).eval(), x, "layer1")[0]
    assert np.allclose(both, (bright + dark) / 2 / ((bright + dark) / 2).max())
    # The members' maps are averaged before normalising: a member with twice the weight in the
    # mean logit has twice the weight in the map.
    weighted = grad_cam(MeanLogitEnsemble([Member(1.0), Member(-1.0, weight=2.0)]).eval(), x, "layer1")[0]
    assert np.isclose(weighted[21, 21], 1.0) and np.isclose(weighted[5, 5], 0.5)


def test_grad_cam_runs_on_an_ensemble_of_resnets():
    torch.manual_seed(1)
    maps = grad_cam(MeanLogitEnsemble([_tiny_resnet(1), _tiny_resnet(2)]).eval(), torch.randn(2, 1, 28, 28), "layer2")
    assert maps.shape == (2, 28, 28) and maps.min() >= 0 and maps.max() <= 1.0 + 1e-6


def test_grad_cam_names_a_missing_stage():
    import pytest

    with pytest.raises(ValueError, match="layer9"):
        grad_cam(_tiny_resnet(0), torch.zeros(1, 1, 28, 28), "layer9")


def test_randomisation_check_adds_grad_cam_for_each_stage():
    torch.manual_seed(0)
    out = randomisation_check(_tiny_resnet(0), _tiny_resnet(3), torch.randn(2, 1, 28, 28), n_samples=2,
                              stages=("layer1", "layer2"))
    assert set(out["spearman"]) == {"smoothgrad", "occlusion", "gradcam_layer1", "gradcam_layer2"}
    assert out["maps"]["random"]["gradcam_layer1"].shape == (2, 28, 28)
