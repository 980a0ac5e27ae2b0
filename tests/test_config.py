"""Configuration precedence: defaults < YAML file < environment < CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from casereview.config import env_values, load_settings


def test_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 7\n  lr: 0.01\n  seed: 5\ndata:\n  root: /from/yaml\n")
    monkeypatch.setenv("CASEREVIEW_TRAIN_LR", "0.02")
    monkeypatch.setenv("CASEREVIEW_TRAIN_BATCH_SIZE", "64")
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", "/from/env")
    s = load_settings(cfg, {"train": {"seed": 9, "epochs": None}})
    assert s.train.epochs == 7  # YAML over default; a None CLI flag does not mask it
    assert s.train.lr == 0.02  # environment over YAML
    assert s.train.batch_size == 64  # environment, multi-word field
    assert s.train.seed == 9  # CLI over everything
    assert s.data.root == Path("/from/env")
    assert s.train.weight_decay == load_settings().train.weight_decay  # untouched default


def test_env_reader_ignores_unrelated_variables():
    assert env_values({"CASEREVIEW_TRAIN_EPOCHS": "3", "CASEREVIEW_NOPE_X": "1", "PATH": "/bin"}) == {"train": {"epochs": "3"}}


def test_bad_config_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        load_settings(bad)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")
