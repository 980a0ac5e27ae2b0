"""Configuration precedence: defaults < YAML file < environment < CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from casereview.config import ConfigError, env_values, load_settings


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
    with pytest.raises(ConfigError, match=r"unknown setting train.epochz \(config file .*bad.yaml\); train has: arch,"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_settings(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train:\n  epochs: [3\n", r"is not valid YAML at line 3, column 1"),
        ("- a\n- b\n", "must hold a mapping of sections, got list"),
        ("trainz:\n  epochs: 3\n", r"unknown config section\(s\) trainz \(config file"),
        ("train: 3\n", r"invalid setting train = 3 \(config file .*\): Input should be a valid dictionary"),
        ("graph:\n  conformal_alpha: 1.5\n", r"invalid setting graph.conformal_alpha = 1.5 \(config file"),
    ],
)
def test_bad_config_files_name_what_is_wrong(tmp_path, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg)


def test_the_error_names_the_layer_that_set_the_bad_value(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("graph:\n  k: 0\n")
    with pytest.raises(ConfigError, match=r"graph.k = 0 \(config file"):
        load_settings(cfg)
    monkeypatch.setenv("CASEREVIEW_GRAPH_K", "-3")  # the environment overrides the file: it is named
    with pytest.raises(ConfigError, match=r"graph.k = '-3' \(CASEREVIEW_GRAPH_K\): Input should be greater than or equal to 1"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match=r"graph.k = 0 \(command line\)"):
        load_settings(cfg, {"graph": {"k": 0}})
    assert load_settings(cfg, {"graph": {"k": 4}}).graph.k == 4  # a good value on top masks the bad ones


@pytest.mark.parametrize(
    ("env", "value"),
    [("CASEREVIEW_TRAIN_EPOCHS", "abc"), ("CASEREVIEW_TRAIN_EPOCHS", "0"), ("CASEREVIEW_TRAIN_LR", "-1"),
     ("CASEREVIEW_INDEX_K", "0"), ("CASEREVIEW_GRAPH_MAX_ATTEMPTS", "0"), ("CASEREVIEW_GATE_FALSE_FLAG_RATE", "0"),
     ("CASEREVIEW_REPORTER_BACKEND", "gpt"), ("CASEREVIEW_GRAPH_NEIGHBOUR_MAJORITY", "2")],
)
def test_out_of_range_values_are_refused_up_front(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=f"= '{value}' \\({env}\\)"):
        load_settings()


def test_one_line_messages():
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"graph": {"k": -1, "max_attempts": 0}})
    assert "\n" not in str(info.value) and str(info.value).endswith("(and 1 more)")
