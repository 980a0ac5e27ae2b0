"""``casereview release``: export a trained checkpoint to ONNX and install it, with its model card, at the
released location. The evaluations the card shows are computed above this layer (the CLI runs
``casereview.evaluation``) and passed in, so training never imports the evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from casereview.config import Settings
from casereview.data import load_split
from casereview.provenance import sha256_file
from casereview.render import render
from casereview.training.checkpoint import load_classifier
from casereview.training.classifier import onnx_file, read_meta, released_checkpoint
from casereview.training.export import OPSET, export_onnx, require_onnx


def export(settings: Settings, checkpoint: Path) -> tuple[Path, dict[str, Any]]:
    """Write ``checkpoint``'s ONNX export beside it, checked against torch on the validation split."""
    require_onnx()
    val = load_split("val", settings.data.root, settings.data.download)
    return export_onnx(load_classifier(checkpoint, "cpu"), val.images)


def serving(settings: Settings, checkpoint: Path) -> Settings:
    """``settings`` with ``checkpoint`` as the classifier, served as every command serves it."""
    return settings.model_copy(update={"classifier": settings.classifier.model_copy(update={"checkpoint": checkpoint})})


def install(checkpoint: Path, exported: Path, parity: dict[str, Any], evals: list[dict[str, Any]]) -> Path:
    """Copy ``checkpoint`` and its ONNX export ``exported`` to the released location and write MODEL_CARD.md
    from the checkpoint's metadata, the export's parity check and ``evals`` (the metrics of
    ``casereview.evaluation.classifier_evaluation.evaluate`` on val and test)."""
    target = released_checkpoint()
    target.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint.resolve() != target.resolve():
        shutil.copyfile(checkpoint, target)
        shutil.copyfile(exported, onnx_file(target))
    meta = read_meta(target)
    onnx = {"sha256": sha256_file(onnx_file(target)), "opset": OPSET, "parity": parity}
    card = render("model_card.md.j2", meta=meta, cal=meta["calibration"], sha256=sha256_file(target), evals=evals,
                  onnx=onnx)
    (target.parent / "MODEL_CARD.md").write_text(card)
    return target
