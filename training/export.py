"""Export of a checkpoint to the one ONNX graph that serves it (see :mod:`casereview.training.classifier`).

The graph takes what the review path has, a batch of uint8 (N, 28, 28) images, and gives what it
needs from one pass: the raw logit (N,) and the pre-logit features (N, D) that the case index and
the input gate use. The scaling to the network's input is inside the graph, so serving needs only
numpy and ONNX Runtime. The export is checked against torch before it is kept.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from casereview.training.checkpoint import TorchClassifier
from casereview.training.classifier import SOURCE_KEY, CheckpointError, load_onnx_classifier, onnx_file
from casereview.training.data import PIXEL_MEAN, PIXEL_STD
from casereview.training.predict import predict_logits_and_embeddings

OPSET = 17
PARITY_LOGIT = 1e-4  # largest logit difference from torch an export may show on the check images
PARITY_COSINE = 0.99999  # smallest cosine between its embedding and torch's


class ServingGraph(nn.Module):
    """uint8 images -> (logit, pre-logit features), as :meth:`TorchClassifier.forward` computes them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.to(torch.float32).unsqueeze(1) / 255.0 - PIXEL_MEAN) / PIXEL_STD
        features = self.model.forward_features(x)
        pooled = self.model.forward_head(features, pre_logits=True).flatten(1)
        logit = self.model(x) if getattr(self.model, "tta_shift", 0) else self.model.forward_head(features)
        return logit.reshape(-1), pooled


def require_onnx() -> None:
    """The export's one extra package, checked before any model or data loads."""
    if importlib.util.find_spec("onnx") is None:
        raise CheckpointError("exporting to ONNX needs the onnx package: pip install onnx (the project's [export] extra)")


def export_onnx(clf: TorchClassifier, check_images: np.ndarray) -> tuple[Path, dict[str, float]]:
    """Write ``clf``'s ONNX export beside its checkpoint, naming the checkpoint's sha256 in its metadata,
    and check it against torch on ``check_images`` (uint8 (N, 28, 28)): the path and the :func:`parity`."""
    require_onnx()
    import onnx

    out = onnx_file(clf.path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    graph = ServingGraph(clf.model).to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.zeros((2, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(graph, (example,), str(tmp), input_names=["images"], output_names=["logit", "embedding"],
                          dynamic_axes={"images": {0: "n"}, "logit": {0: "n"}, "embedding": {0: "n"}},
                          dynamo=False, opset_version=OPSET)
    clf.model.to(clf.device, memory_format=torch.channels_last)  # as load_classifier left it
    model = onnx.load(str(tmp))
    onnx.helper.set_model_props(model, {SOURCE_KEY: clf.checkpoint_sha256, "casereview.arch": clf.arch})
    onnx.save(model, str(tmp))
    tmp.replace(out)
    got = parity(clf, check_images)
    if got["max_abs_logit_diff"] > PARITY_LOGIT or got["min_cosine"] < PARITY_COSINE or got["label_changes"]:
        out.unlink()
        raise CheckpointError(f"the ONNX export of {clf.path} differs from torch beyond tolerance: {got}")
    return out, got


def parity(clf: TorchClassifier, images: np.ndarray) -> dict[str, float]:
    """How far the ONNX export of ``clf`` is from torch on ``images``: largest logit difference,
    smallest embedding cosine, and how many labels change at the shipped threshold."""
    served = load_onnx_classifier(clf.path, threads=0)
    (lt, et), (lo, eo) = predict_logits_and_embeddings(clf, images), predict_logits_and_embeddings(served, images)
    t = np.log(clf.threshold / (1 - clf.threshold)) * clf.temperature  # the threshold on the raw logit
    return {"n": len(images), "max_abs_logit_diff": float(np.abs(lt - lo).max()),
            "min_cosine": float((et * eo).sum(axis=1).min()), "label_changes": int(((lt >= t) != (lo >= t)).sum())}

