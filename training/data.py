"""Model-input transforms and loaders over the PneumoniaMNIST splits of :mod:`casereview.data`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from casereview.data import Split, subset_indices
from casereview.training.augment import AugmentConfig, augment_batch

# Mean and standard deviation of the train split's pixels (scaled to [0, 1]), kept as
# constants so that a checkpoint's preprocessing never depends on which copy of the data is loaded.
PIXEL_MEAN = 0.5719
PIXEL_STD = 0.1684


def normalize(x: torch.Tensor) -> torch.Tensor:
    """float pixels in [0, 1] -> the network's input scale."""
    return (x - PIXEL_MEAN) / PIXEL_STD


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Batch of uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28) for inference."""
    x = torch.tensor(np.asarray(images)).unsqueeze(1)  # a copy: cached splits are read-only
    return normalize(x.float() / 255.0)


def make_loader(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0, limit: int | None = None,
                num_workers: int = 0) -> DataLoader:
    """Batches of uint8 (B, 1, 28, 28) images and float labels (a fixed random subset of ``limit`` cases
    when given); scaling and augmentation happen per batch, in :func:`prepare_batch`."""
    idx = subset_indices(len(split), limit)
    images = torch.from_numpy(split.images[idx]).unsqueeze(1)
    labels = torch.from_numpy(split.labels[idx]).float()
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed))


def prepare_batch(
    x: torch.Tensor, augment_gen: torch.Generator | None = None, augment_cfg: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """uint8 batch -> network input; augmented when a generator is given (training).

    Augmentations stay inside what a paediatric AP/PA chest film can look like:
    - small rotations, shifts and zoom: patient positioning varies from film to film;
    - brightness/contrast jitter: exposure and processing vary between machines;
    - no horizontal flip: the heart, aortic knob and liver are lateralised, flipped films
      do not occur in practice, and the test set has none;
    - no vertical flip, strong crops or elastic warps: they break chest anatomy at 28 px.
    """
    x = x.float() / 255.0
    if augment_gen is not None:
        x = augment_batch(x, augment_gen, augment_cfg)
    return normalize(x)
