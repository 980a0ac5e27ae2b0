"""Synthetic input shifts for measuring the input gate: what a scanner, an export or a user can do to a film.

Array shifts transform uint8 (N, 28, 28) images directly; file shifts write each image as a real
file (16-bit PNG, full-size 8-bit PNG) and read it back through the one decoding function, so
they measure what a user's file becomes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from casereview.data import decode_image
from casereview.tools.input_gate import EXTERNAL_SIDE, as_external_file

SEED = 0
BIT12 = 16  # 8-bit values x 16: a 12-bit film in a 16-bit PNG, as detectors export them


@dataclass(frozen=True)
class Shifted:
    images: np.ndarray  # uint8 (N, 28, 28) as the classifier sees them
    views: list[np.ndarray | None]  # resize views per image (files of another size), else None


def contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Each image's deviation from its own mean scaled by ``factor`` (any intensity scale)."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * factor + mean


def noise(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    """Additive Gaussian noise of std ``sigma``, the same draw every call: every model sees the same noisy films."""
    return lambda x: x + np.random.default_rng(SEED).normal(0, sigma, x.shape)


ARRAY_SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none (the images as they are)": lambda x: x,
    "blank white": lambda x: np.full_like(x, 255),
    "blank black": lambda x: np.zeros_like(x),
    "constant grey (128)": lambda x: np.full_like(x, 128),
    "inverted": lambda x: 255 - x,
    "brighter (+60)": lambda x: x + 60,
    "darker (-40)": lambda x: x - 40,
    "darker (-80)": lambda x: x - 80,
    "contrast x0.5": lambda x: contrast(x, 0.5),
    "contrast x2": lambda x: contrast(x, 2.0),
    "gamma 0.5 (lighter mid-tones)": lambda x: 255 * (x / 255) ** 0.5,
    "gamma 2 (darker mid-tones)": lambda x: 255 * (x / 255) ** 2,
    "blur (sigma 1 px)": lambda x: gaussian_filter(x, (0, 1, 1)),
    "blur (sigma 1.5 px)": lambda x: gaussian_filter(x, (0, 1.5, 1.5)),
    "noise (sigma 8)": noise(8),
    "noise (sigma 20)": noise(20),
    "rotated 90 degrees": lambda x: np.rot90(x, axes=(1, 2)),
}


def array_shift(name: str, images: np.ndarray) -> Shifted:
    shifted = np.clip(np.round(ARRAY_SHIFTS[name](np.asarray(images, dtype=np.float64))), 0, 255).astype(np.uint8)
    return Shifted(shifted, [None] * len(shifted))


def _write_16bit(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image.astype(np.uint16) * BIT12).save(path)  # mode I;16
    return path


def _decoded(paths: list[Path]) -> Shifted:
    decoded = [decode_image(p) for p in paths]
    return Shifted(np.stack([d.image for d in decoded]), [d.views for d in decoded])


def png16(images: np.ndarray, folder: Path) -> Shifted:
    """12-bit values in 16-bit PNGs, read by the decoder (rescaled by their value range)."""
    return _decoded([_write_16bit(im, folder / f"{i}.png") for i, im in enumerate(images)])


def png16_clipped(images: np.ndarray, folder: Path) -> Shifted:
    """The same files read the naive way (``convert("L")`` clips 16-bit values): what the old decoder gave."""
    paths = [_write_16bit(im, folder / f"c{i}.png") for i, im in enumerate(images)]
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.array(im.convert("L"), dtype=np.uint8))
    return Shifted(np.stack(out), [None] * len(out))


def external_files(images: np.ndarray, folder: Path) -> Shifted:
    """Full-size 8-bit files (upsampled films), read by the decoder: resize views included."""
    paths = []
    for i, im in enumerate(images):
        as_external_file(im).save(folder / f"x{i}.png")
        paths.append(folder / f"x{i}.png")
    return _decoded(paths)


FILE_SHIFTS: dict[str, Callable[[np.ndarray, Path], Shifted]] = {
    "16-bit PNG (12-bit values), decoded by value range": png16,
    "16-bit PNG read naively (clipped to white: the old bug)": png16_clipped,
    f"full-size {EXTERNAL_SIDE} px file (resize views checked)": external_files,
}
