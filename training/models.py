"""Classifiers for 1x28x28 images, built through timm's factory and registry.

The ``cr_*`` architectures are registered with timm (``@register_model``) so that every
model, ours or any stock timm name, is built by one call: ``timm.create_model``.
All models output one logit: log-odds of pneumonia.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import timm
import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def _arch_kwargs(kwargs: dict) -> dict:
    # timm's factory passes its pretrained-weights bookkeeping to every entrypoint;
    # these architectures have no weights to fetch, so it is dropped.
    return {k: v for k, v in kwargs.items() if k not in {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}}


def _small_input_stem(model: ResNet, in_chans: int) -> ResNet:
    # A stock ResNet stem (7x7 stride 2 + max-pool) shrinks 28 px to 7 px before the first
    # block and to 1 px at the end. A 3x3 stride-1 conv keeps the max-pool: stages run at
    # 14, 7, 4 and 2 px. Without the pool (28 px into stage 1) an epoch took ~21 s instead
    # of ~9 s on a 2-core CPU, which would break the 10-minute training budget.
    model.conv1 = nn.Conv2d(in_chans, model.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
    return model


@register_model
def cr_resnet_small(pretrained: bool = False, in_chans: int = 1, num_classes: int = 1, **kwargs) -> ResNet:
    """ResNet with one BasicBlock per stage, widths 32-64-128-256 after a 64-wide 3x3 stride-1 stem and max-pool (1.24M params)."""
    if pretrained:
        raise ValueError("cr_resnet_small has no pretrained weights; it is trained here from scratch")
    model = ResNet(
        BasicBlock,
        layers=(1, 1, 1, 1),
        channels=(32, 64, 128, 256),
        in_chans=in_chans,
        num_classes=num_classes,
        **_arch_kwargs(kwargs),
    )
    return _small_input_stem(model, in_chans)


@register_model
def cr_vit_tiny(pretrained: bool = False, in_chans: int = 1, num_classes: int = 1, **kwargs) -> VisionTransformer:
    """ViT with 4x4 patches on 28x28 (49 tokens), width 128, depth 6, 4 heads (about 0.8M params)."""
    if pretrained:
        raise ValueError("cr_vit_tiny has no pretrained weights; it is trained here from scratch")
    return VisionTransformer(
        img_size=28,
        patch_size=4,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=128,
        depth=6,
        num_heads=4,
        mlp_ratio=2.0,
        **_arch_kwargs(kwargs),
    )


class PerImageStandardized(nn.Module):
    """A classifier that sees every image standardised to zero mean and unit variance first.

    The logit is then invariant to a film's overall brightness and contrast (any affine
    change of its intensities, up to clipping), which vary with exposure and processing
    rather than with disease. timm's ``forward_features``/``forward_head`` are kept, so
    :func:`embed` and the callers of a plain timm model work unchanged.
    """

    def __init__(self, inner: nn.Module, eps: float = 1e-3):
        super().__init__()
        self.inner = inner
        self.eps = eps  # a blank (constant) image stays finite: all zeros

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + self.eps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(self.standardize(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.inner.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MeanLogitEnsemble(nn.Module):
    """Members of one architecture; the logit is the mean of the members' logits.

    ``forward_features`` stacks the members' feature maps on a new dimension 1, and
    ``forward_head(pre_logits=True)`` concatenates each member's pre-logit vector after
    L2-normalising it: the cosine similarity of two such embeddings is then the mean of the
    members' cosine similarities (members trained from different seeds have unrelated
    feature bases, so averaging the vectors themselves would mix incomparable coordinates).
    """

    def __init__(self, members: list[nn.Module], tta_shift: int = 0):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.tta_shift = tta_shift  # > 0: the logit is also averaged over copies shifted by this many pixels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.forward_features(x) for m in self.members], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        outs = [m.forward_head(x[:, i], pre_logits=pre_logits) for i, m in enumerate(self.members)]
        if pre_logits:
            return torch.cat([nn.functional.normalize(o.flatten(1), dim=1) for o in outs], dim=1) / len(outs) ** 0.5
        return torch.stack(outs, dim=0).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = shifted_views(x, self.tta_shift) if self.tta_shift else [x]
        return torch.stack([m(v) for v in views for m in self.members], dim=0).mean(dim=0)


@contextmanager
def single_view(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its test-time augmentation switched off for the duration (saliency maps: one view)."""
    shift = getattr(model, "tta_shift", 0)
    if shift:
        model.tta_shift = 0
    try:
        yield model
    finally:
        if shift:
            model.tta_shift = shift


def shifted_views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """x and its four copies moved by ``shift`` pixels up, down, left and right (edges replicated)."""
    h, w = x.shape[-2:]
    padded = nn.functional.pad(x, (shift,) * 4, mode="replicate")
    offsets = ((0, 0), (-shift, 0), (shift, 0), (0, -shift), (0, shift))
    return [padded[..., shift + dy : shift + dy + h, shift + dx : shift + dx + w] for dy, dx in offsets]


def create_classifier(arch: str, pretrained: bool = False, input_norm: str = "dataset") -> nn.Module:
    """Any timm architecture with one input channel and one output logit.

    ``input_norm="per_image"`` wraps it in :class:`PerImageStandardized`. ``pretrained=True``
    downloads ImageNet weights for stock timm names (timm adapts the first convolution to one
    channel); it needs internet access.
    """
    if arch not in timm.list_models() and arch not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown architecture {arch!r}; try cr_resnet_small, cr_vit_tiny or a timm model name")
    if input_norm not in ("dataset", "per_image"):
        raise ValueError(f"unknown input_norm {input_norm!r}; use dataset or per_image")
    model = timm.create_model(arch, pretrained=pretrained, in_chans=1, num_classes=1)
    return PerImageStandardized(model) if input_norm == "per_image" else model


def build_from_meta(meta: dict) -> nn.Module:
    """The (untrained) module a checkpoint's metadata describes: a single model, or an ensemble skeleton
    whose state dict matches one saved by ``casereview ensemble``."""
    input_norm = meta.get("input_norm", "dataset")
    if meta["arch"] == "ensemble":
        members = [create_classifier(meta["member_arch"], input_norm=input_norm) for _ in range(int(meta["n_members"]))]
        return MeanLogitEnsemble(members, tta_shift=int(meta.get("tta_shift", 0)))
    return create_classifier(meta["arch"], input_norm=input_norm)


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate (pre-logits) features, the classifier's view of an image."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
