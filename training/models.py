"""Classifiers for 1x28x28 images, built through timm's factory and registry.

The ``cr_*`` architectures are registered with timm (``@register_model``) so that every
model, ours or any stock timm name, is built by one call: ``timm.create_model``.
All models output one logit: log-odds of pneumonia.
"""

from __future__ import annotations

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


def create_classifier(arch: str, pretrained: bool = False) -> nn.Module:
    """Any timm architecture with one input channel and one output logit.

    ``pretrained=True`` downloads ImageNet weights for stock timm names (timm adapts the
    first convolution to one channel); it needs internet access.
    """
    if arch not in timm.list_models() and arch not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown architecture {arch!r}; try cr_resnet_small, cr_vit_tiny or a timm model name")
    return timm.create_model(arch, pretrained=pretrained, in_chans=1, num_classes=1)


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate (pre-logits) features, the classifier's view of an image."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
