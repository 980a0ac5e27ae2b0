"""PneumoniaMNIST through ``medmnist``: the three official splits, transforms and loaders.

Labels: 0 = normal, 1 = pneumonia. Images are uint8 arrays of shape (N, 28, 28).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from casereview.errors import CaseReviewError
from casereview.training.augment import augment_batch

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("normal", "pneumonia")
DATA_FILE = "pneumoniamnist.npz"

# Mean and standard deviation of the train split's pixels (scaled to [0, 1]); computed
# once by `casereview.training.data.pixel_stats` and kept as constants so that a
# checkpoint's preprocessing never depends on which copy of the data is loaded.
PIXEL_MEAN = 0.5719
PIXEL_STD = 0.1684


class DataError(CaseReviewError):
    """The dataset cannot be found or read; the message says what to do."""


@dataclass(frozen=True)
class Split:
    name: str
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def data_file(root: Path | None) -> Path:
    import medmnist.info

    return (Path(root) if root else Path(medmnist.info.DEFAULT_ROOT)) / DATA_FILE


@lru_cache(maxsize=8)
def _load_split(split: str, root: str | None, download: bool) -> Split:
    import medmnist

    path = data_file(Path(root) if root else None)
    if not path.is_file():
        if not download:
            raise DataError(
                f"{path} not found. Point the data root at the folder holding {DATA_FILE} "
                "(--data-root or CASEREVIEW_DATA_ROOT), or allow the download."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            medmnist.PneumoniaMNIST(split=split, root=str(path.parent), download=True, size=28)
        except Exception as exc:  # medmnist raises bare RuntimeErrors on network failure
            raise DataError(
                f"could not download PneumoniaMNIST into {path.parent} ({type(exc).__name__}; offline?). "
                f"Copy {DATA_FILE} there or set --data-root / CASEREVIEW_DATA_ROOT."
            ) from exc
    try:
        # download=False skips medmnist's MD5 check, which a re-ordered copy would fail.
        ds = medmnist.PneumoniaMNIST(split=split, root=str(path.parent), download=False, size=28)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(f"{path} is not a readable PneumoniaMNIST .npz file ({exc!s}).") from exc
    images = np.asarray(ds.imgs)
    labels = np.asarray(ds.labels).reshape(-1).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{path}: {split}_images should be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    return Split(split, images, labels)


def load_split(split: str, root: Path | str | None = None, download: bool = False) -> Split:
    """One official split as numpy arrays (cached per process)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return _load_split(split, str(root) if root else None, download)


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    x = images.astype(np.float64) / 255.0
    return float(x.mean()), float(x.std())


def normalize(x: torch.Tensor) -> torch.Tensor:
    """float pixels in [0, 1] -> the network's input scale."""
    return (x - PIXEL_MEAN) / PIXEL_STD


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Batch of uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28) for inference."""
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    return normalize(x.float() / 255.0)


def subset_indices(n: int, limit: int | None) -> np.ndarray:
    """All indices, or a fixed random subset of ``limit`` of them (sorted).

    Random rather than the first N: the train split's order is not guaranteed (the shared
    copy is grouped by class), and a prefix could hold one class only.
    """
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:limit])


class ImageDataset(Dataset):
    """uint8 (1, 28, 28) images and float labels; scaling and augmentation happen per batch."""

    def __init__(self, split: Split, limit: int | None = None):
        idx = subset_indices(len(split), limit)
        self.images = torch.from_numpy(split.images[idx]).unsqueeze(1)  # (N, 1, 28, 28) uint8
        self.labels = torch.from_numpy(split.labels[idx]).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def make_loader(
    split: Split,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    limit: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    ds = ImageDataset(split, limit=limit)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=False,
        num_workers=num_workers,
        generator=generator,
    )


def prepare_batch(x: torch.Tensor, augment_gen: torch.Generator | None = None) -> torch.Tensor:
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
        x = augment_batch(x, augment_gen)
    return normalize(x)
