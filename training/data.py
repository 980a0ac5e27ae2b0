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
from torchvision.transforms import v2
from casereview.errors import CaseReviewError

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
                f"could not download PneumoniaMNIST into {path.parent} ({exc}). "
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


def eval_transform() -> v2.Compose:
    """uint8 (H, W) -> float (1, H, W), normalised with the train statistics."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([PIXEL_MEAN], [PIXEL_STD])])


def train_transform() -> v2.Compose:
    """Augmentations that stay inside what a paediatric AP/PA chest film can look like.

    - small rotations, shifts and zoom: patient positioning varies from film to film;
    - brightness/contrast jitter: exposure and processing vary between machines;
    - no horizontal flip: the heart, aortic knob and liver are lateralised, flipped films
      do not occur in practice, and the test set has none;
    - no vertical flip, strong crops or elastic warps: they break chest anatomy at 28 px.
    """
    return v2.Compose(
        [
            v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.9, 1.1)),
            v2.ToDtype(torch.float32, scale=True),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.Normalize([PIXEL_MEAN], [PIXEL_STD]),
        ]
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Batch of uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28) for inference."""
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    return eval_transform()(x)


class ImageDataset(Dataset):
    def __init__(self, split: Split, transform: v2.Compose | None = None, limit: int | None = None):
        n = len(split) if limit is None else min(limit, len(split))
        self.images = torch.from_numpy(split.images[:n]).unsqueeze(1)  # (N, 1, 28, 28) uint8
        self.labels = torch.from_numpy(split.labels[:n]).float()
        self.transform = transform or eval_transform()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def make_loader(
    split: Split,
    batch_size: int,
    train: bool,
    seed: int = 0,
    limit: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    ds = ImageDataset(split, train_transform() if train else eval_transform(), limit=limit)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        drop_last=False,
        num_workers=num_workers,
        generator=generator,
    )
