"""A loaded classifier, whichever runtime serves it, and how to open one.

Train with torch, serve with ONNX Runtime. A checkpoint (``classifier.safetensors``: weights plus
calibration in its metadata) is what training writes; ``casereview release`` also exports it to
one ONNX graph beside it (``classifier.onnx``: uint8 images in, the logit and the embedding out)
that names the checkpoint's sha256 in its own metadata. The review path opens that graph with
ONNX Runtime and never imports torch; ``--runtime torch`` opens the checkpoint with torch and
timm (:mod:`casereview.training.checkpoint`), as training, saliency and the studies do.

This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from casereview.errors import CaseReviewError
from casereview.provenance import sha256_file

META_KEY = "casereview"  # the checkpoint's metadata entry
SOURCE_KEY = "casereview.checkpoint_sha256"  # the ONNX graph's metadata entry naming its checkpoint
Runtime = Literal["onnx", "torch"]


class CheckpointError(CaseReviewError):
    """A checkpoint or its ONNX export is missing or unreadable; the message says how to make one."""


def released_checkpoint() -> Path:
    """The checkpoint the system uses by default (committed; see released/MODEL_CARD.md)."""
    from importlib import resources

    return Path(str(resources.files("casereview") / "released" / "classifier.safetensors"))


def onnx_file(checkpoint: Path) -> Path:
    """Where the ONNX export of ``checkpoint`` lives: beside it, same name, ``.onnx``."""
    return checkpoint.with_suffix(".onnx")


def export_command(checkpoint: Path) -> str:
    return f"casereview release {checkpoint} --export-only"


def read_meta(path: Path) -> dict[str, Any]:
    """The casereview metadata of a checkpoint (architecture, calibration, training record)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
        meta = None if raw is None else json.loads(raw)
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable casereview checkpoint ({exc})") from exc
    if meta is None:
        raise CheckpointError(f"{path} is a safetensors file without casereview metadata")
    return meta


def checkpoint_path(path: Path | str | None) -> Path:
    """``path`` (``None``: the released checkpoint), checked to exist."""
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
    return path


@dataclass
class Classifier:
    """A loaded classifier: its checkpoint's metadata (architecture, calibration) and what serves it.

    ``sha256`` is the file that computes the numbers (the checkpoint under torch, its ONNX export
    under ONNX Runtime): indexes, cached gates and settings fingerprints follow it.
    ``checkpoint_sha256`` is always the checkpoint's: opinions and records name the trained weights.
    """

    meta: dict[str, Any]
    path: Path
    checkpoint_sha256: str
    sha256: str

    runtime = "none"

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def temperature(self) -> float:
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("calibration", {}).get("threshold", 0.5))

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (N,) and pre-logit features (N, D), float32, of one batch of uint8 (N, 28, 28) images."""
        raise NotImplementedError

    @contextmanager
    def all_cores(self) -> Iterator[None]:
        """Every core for a batched pass (index build, gate fit, a batch's evidence), then back to
        ``classifier.threads``, which suits one image at a time."""
        yield


@dataclass
class OnnxClassifier(Classifier):
    """A checkpoint served by ONNX Runtime from its export (CPU)."""

    onnx_path: Path = Path()
    threads: int | None = 1
    _sessions: dict[int, Any] = field(default_factory=dict, init=False, repr=False)  # by thread count, made on first use
    _wide: bool = field(default=False, init=False, repr=False)  # inside all_cores()

    runtime = "onnx"

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        if threads not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, every core
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # its warnings are about graph optimisations, not about the user's input
            self._sessions[threads] = ort.InferenceSession(str(self.onnx_path), options,
                                                           providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        session = self._session(0 if self._wide else (self.threads or 0))
        logits, features = session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})
        return logits, features

    @contextmanager
    def all_cores(self) -> Iterator[None]:
        self._wide = True
        try:
            yield
        finally:
            self._wide = False


def load_onnx_classifier(path: Path | str | None = None, threads: int | None = 1) -> OnnxClassifier:
    """The ONNX export beside checkpoint ``path`` (``None``: the released one), checked to come from it."""
    path = checkpoint_path(path)
    exported = onnx_file(path)
    if not exported.is_file():
        raise CheckpointError(f"{path} has no ONNX export beside it ({exported.name}); write it with "
                              f"`{export_command(path)}`, or serve with --runtime torch")
    meta = read_meta(path)
    clf = OnnxClassifier(meta, path, sha256_file(path), sha256_file(exported), onnx_path=exported, threads=threads)
    try:
        source = clf._session(threads or 0).get_modelmeta().custom_metadata_map.get(SOURCE_KEY)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types for a damaged file
        raise CheckpointError(f"{exported} is not a readable ONNX graph ({str(exc).splitlines()[0]}); rewrite it "
                              f"with `{export_command(path)}`") from exc
    if source != clf.checkpoint_sha256:
        raise CheckpointError(f"{exported} was exported from another checkpoint (sha256 {str(source)[:12]}), not "
                              f"{path.name} (sha256 {clf.checkpoint_sha256[:12]}); export it again with "
                              f"`{export_command(path)}`")
    return clf


def open_classifier(path: Path | str | None = None, runtime: Runtime = "onnx", device: str = "auto",
                    threads: int | None = None) -> Classifier:
    """The checkpoint at ``path`` (``None``: the released one), served by ``runtime``.

    ``threads``: CPU threads for one image at a time (``None``: the runtime's default).
    """
    if runtime == "onnx":
        return load_onnx_classifier(path, threads)
    from casereview.training.checkpoint import load_classifier

    clf = load_classifier(path, device)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return clf
