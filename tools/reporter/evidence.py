"""What a report is written from: the case image and, for the grounded variants, the evidence records."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from casereview.errors import CaseReviewError
from casereview.schemas import ClassifierOpinion, Neighbour


class ReporterError(CaseReviewError):
    """The reporter cannot do what was asked (model not loadable, server unreachable, bad evidence)."""


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ReporterError(f"{what}: expected a uint8 grayscale image (H, W), got {image.dtype} {image.shape}")
    return image


@dataclass(frozen=True)
class Evidence:
    """One case as the reporter sees it.

    ``opinion`` and ``neighbours`` are what the grounded variants state in the prompt;
    ``neighbour_images`` (same order as ``neighbours``) is what the visual few-shot variant
    shows. Fields left ``None`` are absent: a variant that needs them fails to render.
    """

    case_id: str
    image: np.ndarray  # uint8 (28, 28)
    opinion: ClassifierOpinion | None = None
    neighbours: tuple[Neighbour, ...] | None = None
    neighbour_images: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", _check_image(self.image, self.case_id))
        if self.neighbours is not None:
            object.__setattr__(self, "neighbours", tuple(self.neighbours))
        if self.neighbour_images is not None:
            images = tuple(_check_image(im, f"{self.case_id} neighbour image") for im in self.neighbour_images)
            if self.neighbours is None or len(images) != len(self.neighbours):
                raise ReporterError(
                    f"{self.case_id}: {len(images)} neighbour images for "
                    f"{0 if self.neighbours is None else len(self.neighbours)} neighbours; give one image per neighbour"
                )
            object.__setattr__(self, "neighbour_images", images)


def to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 grayscale array as an RGB PIL image (what image processors and servers expect)."""
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def png_data_url(image: np.ndarray) -> str:
    """The image as a ``data:image/png;base64,...`` URL for chat-completions image content."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
