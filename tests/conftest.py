"""Shared fixtures: the data root (../shared/data unless CASEREVIEW_DATA_ROOT says otherwise)
and a small randomly initialised classifier checkpoint built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("CASEREVIEW_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.fail(f"pneumoniamnist.npz not found under {root}; set CASEREVIEW_DATA_ROOT")
    return root


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cr_resnet_small with random weights, saved like `casereview train` saves one.

    Random weights: anything computed from it is a test of code paths, never a result.
    """
    from casereview.training.checkpoint import save_checkpoint
    from casereview.training.models import create_classifier

    torch.manual_seed(0)
    model = create_classifier("cr_resnet_small")
    meta = {
        "arch": "cr_resnet_small",
        "calibration": {"temperature": 1.0, "threshold": 0.5, "threshold_rule": "fixed 0.5 (test fixture)"},
        "note": "random weights, test fixture",
    }
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "random.safetensors", meta)
