"""Shared fixtures: a work folder outside the checkout for every test, the data root
(``CASEREVIEW_DATA_ROOT`` when set, else medmnist's own folder, downloading the dataset there on first
use like every command does) and a small randomly initialised classifier checkpoint built offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def workdir_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own work folder through ``CASEREVIEW_PATHS_WORKDIR``, so that a command that
    falls back to the default (``./runs``: run locks, checkpoints, caches) leaves nothing in the checkout.
    Tests that name a work folder (settings, ``--workdir``, their own environment) still use theirs."""
    workdir = tmp_path_factory.mktemp("workdir")
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(workdir))
    return workdir


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding pneumoniamnist.npz, as an absolute path (notebook kernels run elsewhere)."""
    from casereview.data import DATA_FILE, data_file, load_split

    if os.environ.get("CASEREVIEW_DATA_ROOT"):  # offline machines and CI point here
        root = Path(os.environ["CASEREVIEW_DATA_ROOT"]).resolve()
        if not (root / DATA_FILE).is_file():
            pytest.fail(f"CASEREVIEW_DATA_ROOT={root} holds no {DATA_FILE}; unset it to let medmnist download the file")
        return root
    load_split("test", None, download=True)  # medmnist downloads into its default folder (~/.medmnist) when missing
    return data_file(None).parent.resolve()


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cr_resnet_small with random weights, saved like `casereview train` saves one, with its ONNX export
    beside it (as `casereview release --export-only` writes it), so that it serves on either runtime.

    Random weights: anything computed from it is a test of code paths, never a result.
    """
    from casereview.training.checkpoint import load_classifier, save_checkpoint
    from casereview.training.export import export_onnx
    from casereview.training.models import create_classifier

    torch.manual_seed(0)
    model = create_classifier("cr_resnet_small")
    meta = {
        "arch": "cr_resnet_small",
        "calibration": {"temperature": 1.0, "threshold": 0.5, "threshold_rule": "fixed 0.5 (test fixture)"},
        "note": "random weights, test fixture",
    }
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "random.safetensors", meta)
    export_onnx(load_classifier(path, "cpu"), np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8))
    return path
