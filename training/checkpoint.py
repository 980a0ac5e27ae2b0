"""Classifier checkpoints: safetensors weights with their config and calibration as metadata.

One file holds everything needed to rebuild and use a model: the architecture, the
training config, the data file's checksum, the git commit, the temperature and decision
threshold fitted on validation, and the validation metrics they came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from casereview.devices import resolve_device
from casereview.provenance import sha256_file
from casereview.training.models import build_from_meta
from casereview.errors import CaseReviewError

META_KEY = "casereview"


class CheckpointError(CaseReviewError):
    """A checkpoint is missing or unreadable; the message says how to make one."""


def released_checkpoint() -> Path:
    """The checkpoint the system uses by default (committed; see released/MODEL_CARD.md)."""
    from importlib import resources

    return Path(str(resources.files("casereview") / "released" / "classifier.safetensors"))


@dataclass
class Classifier:
    """A loaded classifier: model in eval mode plus the calibration it ships with."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path
    sha256: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def temperature(self) -> float:
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("calibration", {}).get("threshold", 0.5))


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True, default=str)})
    tmp.replace(path)  # never leave a half-written checkpoint under the final name
    return path


def read_meta(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get(META_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without casereview metadata")
    return json.loads(raw)


def load_classifier(path: Path | str | None = None, device: str = "auto") -> Classifier:
    """Load a checkpoint written by ``casereview train`` (``None``: the released one)."""
    path = Path(path) if path else released_checkpoint()
    if not path.is_file() and path == released_checkpoint():
        raise CheckpointError(
            f"the released checkpoint is missing from this installation ({path}); reinstall casereview, "
            "or train one with `casereview train --out DIR` and pass --checkpoint DIR/classifier.safetensors."
        )
    if not path.is_file():
        raise CheckpointError(
            f"classifier checkpoint not found: {path}. Train one with `casereview train --out DIR` "
            "or omit --checkpoint to use the released model."
        )
    try:
        meta = read_meta(path)
        state = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable casereview checkpoint ({exc})") from exc
    model = build_from_meta(meta)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match architecture {meta['arch']!r} ({exc})") from exc
    dev = resolve_device(device)
    # Channels-last runs the CPU convolutions and max-pool of a batch 1.5-2x faster (outputs equal to ~2e-6).
    model = model.to(dev, memory_format=torch.channels_last).eval()
    return Classifier(model, meta, path, sha256_file(path), dev)
