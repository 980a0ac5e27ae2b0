"""Where the classifier looks: gradient saliency, occlusion sensitivity and a randomisation check.

- SmoothGrad (Smilkov et al., 2017): |d logit / d input| averaged over noisy copies. It
  measures local sensitivity, which can peak where the network merely has a high gain
  (a few large weights behind one pixel), not where the evidence is.
- Occlusion sensitivity (Zeiler and Fergus, 2014): the logit drop when a patch is replaced
  by the mean training intensity. It measures what the decision actually depends on.
- Model-randomisation check (Adebayo et al., 2018): the maps of a randomly re-initialised
  copy of the network must differ from the trained model's, or the method shows the input
  or the architecture rather than what was learnt.

- Grad-CAM (Selvaraju et al., 2017): the feature maps of one stage weighted by the
  spatially averaged gradient of the logit, ReLU. At the final stage this network's map is
  2x2 (28 px after four down-samplings), too coarse for the lungs, so :func:`grad_cam` takes
  an earlier stage: ``layer1`` (14x14) or ``layer2`` (7x7). Its resolution is that of the
  stage, upsampled; what the report finds it shows is in its saliency section.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.nn import functional as F


def _normalise_max(maps: np.ndarray) -> np.ndarray:
    maxima = np.abs(maps).reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return maps / np.clip(maxima, 1e-12, None)


def smoothgrad(model: nn.Module, x: torch.Tensor, n_samples: int = 32, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """|d logit / d input| averaged over noisy copies; x is (N, 1, H, W) normalised. Returns (N, H, W) in [0, 1]."""
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noisy = (x + noise * x.std() * torch.randn(x.shape, generator=gen, device=x.device)).requires_grad_(True)
        model(noisy).sum().backward()
        total += noisy.grad.abs()
    return _normalise_max(total.squeeze(1).cpu().numpy())


@torch.no_grad()
def occlusion(model: nn.Module, x: torch.Tensor, patch: int = 5, stride: int = 1, fill: float = 0.0,
              batch_size: int = 1024) -> np.ndarray:
    """Logit drop when a ``patch`` x ``patch`` square is set to ``fill``, averaged over the squares covering
    each pixel. x is (N, 1, H, W) normalised (``fill=0`` is the mean training intensity). Returns
    (N, H, W), unnormalised logits: positive where the region supports pneumonia, negative where it
    supports normal."""
    model.eval()
    n, _, h, w = x.shape
    base = model(x).reshape(n)
    positions = [(i, j) for i in range(-(patch // 2), h - patch // 2, stride)
                 for j in range(-(patch // 2), w - patch // 2, stride)]
    drop = torch.zeros(n, h, w, device=x.device)
    count = torch.zeros(h, w, device=x.device)
    per_call = max(1, batch_size // n)
    for start in range(0, len(positions), per_call):
        chunk = positions[start : start + per_call]
        occluded = x.repeat(len(chunk), 1, 1, 1)
        for k, (i, j) in enumerate(chunk):
            occluded[k * n : (k + 1) * n, :, max(i, 0) : i + patch, max(j, 0) : j + patch] = fill
        logits = model(occluded).reshape(len(chunk), n)
        for k, (i, j) in enumerate(chunk):
            rows, cols = slice(max(i, 0), i + patch), slice(max(j, 0), j + patch)
            drop[:, rows, cols] += (base - logits[k]).view(n, 1, 1)
            count[rows, cols] += 1
    return (drop / count.clamp(min=1)).cpu().numpy()


def grad_cam(model: nn.Module, x: torch.Tensor, stage: str = "layer2") -> np.ndarray:
    """Grad-CAM of the logit at the output of ``stage`` (``layer1``: 14x14, ``layer2``: 7x7 here).

    x is (N, 1, H, W) normalised; call with test-time augmentation off (``single_view``). Every
    module whose name is ``stage`` or ends in ``.stage`` is hooked, so for a ``MeanLogitEnsemble``
    the map is the mean of the members' maps (each member's Grad-CAM of its own logit, before
    normalising: the ensemble logit is their mean). Each map is ReLU'd, upsampled bilinearly to
    H x W and scaled to its maximum like :func:`smoothgrad`. Returns (N, H, W) in [0, 1].
    """
    model.eval()
    layers = [m for name, m in model.named_modules() if name == stage or name.endswith("." + stage)]
    if not layers:
        raise ValueError(f"no module named {stage!r} in {type(model).__name__}")
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _in, out: acts.append(out)) for m in layers]
    try:
        logits = model(x.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(logits.sum(), acts)  # images are independent in eval mode
    cam = torch.zeros(x.shape[0], 1, *x.shape[2:], device=x.device)
    for a, g in zip(acts, grads):
        weights = g.mean(dim=(2, 3), keepdim=True)  # alpha_k: the channel's average gradient
        local = F.relu((weights * a).sum(dim=1, keepdim=True))
        cam += F.interpolate(local, size=x.shape[2:], mode="bilinear", align_corners=False)
    return _normalise_max((cam / len(acts)).squeeze(1).detach().cpu().numpy())


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of |map| between paired maps (N, H, W), one value per image."""
    return np.array([spearmanr(np.abs(p).ravel(), np.abs(q).ravel())[0] for p, q in zip(a, b)])


def randomisation_check(trained: nn.Module, randomised: nn.Module, x: torch.Tensor, n_samples: int = 16,
                        stages: tuple[str, ...] = ()) -> dict:
    """Maps of the trained and a re-initialised model on the same images, and their rank correlations.

    ``randomised`` is the same architecture with fresh random weights (Adebayo et al.'s full
    re-initialisation). High correlation would mean the maps do not depend on what was learnt.
    Each of ``stages`` adds a Grad-CAM map, named ``gradcam_<stage>``.
    """
    maps = {}
    for name, model in (("trained", trained), ("random", randomised)):
        maps[name] = {"smoothgrad": smoothgrad(model, x, n_samples=n_samples), "occlusion": occlusion(model, x, stride=2),
                      **{f"gradcam_{s}": grad_cam(model, x, s) for s in stages}}
    corr = {m: rank_correlation(maps["trained"][m], maps["random"][m]) for m in maps["trained"]}
    return {"maps": maps, "spearman": {m: {"mean": float(np.nanmean(c)), "per_image": c.tolist()} for m, c in corr.items()}}

