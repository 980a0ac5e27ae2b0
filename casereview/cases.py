"""Case references and images: ``test:42`` (a MedMNIST split and index) or an image file.

Image files are brought to the classifier's input the way MedMNIST made its images:
grayscale, centre crop to a square of the short edge, resize to 28x28.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from casereview.training.data import CLASS_NAMES, SPLITS, load_split
from casereview.errors import CaseReviewError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_REF = re.compile(r"^(train|val|test):(-?\d+)$")


class CaseError(CaseReviewError, ValueError):
    """A case reference or image that cannot be used; the message says why."""


@dataclass(frozen=True)
class Case:
    case_id: str  # "test:42" or the image path as given
    image: np.ndarray  # uint8 (28, 28)
    label: int | None = None  # ground truth when known (0 normal, 1 pneumonia)
    split: str | None = None
    index: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. preprocessing warnings

    @property
    def label_name(self) -> str | None:
        return None if self.label is None else CLASS_NAMES[self.label]


def case_id(split: str, index: int) -> str:
    return f"{split}:{index}"


def parse_ref(ref: str) -> tuple[str, int] | None:
    """``"test:42"`` -> ``("test", 42)``; anything else (a path) -> ``None``."""
    m = _REF.match(ref.strip())
    return (m.group(1), int(m.group(2))) if m else None


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    # Every node and tool loads the case again; the user needs to read this once per process.
    warnings.warn(message, stacklevel=3)


def load_image_file(path: Path | str, size: int = 28) -> np.ndarray:
    """An image file as MedMNIST-style uint8 (size, size) grayscale."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"image not found: {path}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CaseError(f"{path}: not a PNG or JPEG file (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CaseError(f"{path}: unreadable image ({exc})") from exc
    w, h = img.size
    if min(w, h) < 8:
        raise CaseError(f"{path}: image of {w}x{h} px is too small to be a chest X-ray")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.array(img, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)


def load_case(ref: str, data_root: Path | str | None = None, download: bool = False) -> Case:
    """Resolve ``split:index`` against the dataset, or read an image file."""
    parsed = parse_ref(ref)
    if parsed is None:
        if re.match(r"^\w+:\S*$", ref) and not Path(ref).exists():
            raise CaseError(f"bad case reference {ref!r}: use <split>:<index> with split in {SPLITS}, or an image path")
        image = load_image_file(ref)
        note = (
            "image file brought to 28x28 grayscale (centre crop, resize); the classifier has only "
            "seen MedMNIST-style images, so treat its output on other images with caution"
        )
        _warn_once(note)
        return Case(case_id=str(ref), image=image, notes=(note,))
    split, index = parsed
    data = load_split(split, data_root, download)
    if not 0 <= index < len(data):
        raise CaseError(f"case {ref} out of range: the {split} split has indices 0..{len(data) - 1}")
    return Case(case_id(split, index), data.images[index], int(data.labels[index]), split, index)
