"""Typed configuration: defaults in code, then a YAML file, then the environment, then the CLI.

Every setting lives in one section (``data``, ``train``, ``classifier``, ``index``,
``reporter``, ``graph``, ``paths``). The environment uses ``CASEREVIEW_<SECTION>_<FIELD>``,
for example ``CASEREVIEW_DATA_ROOT=../shared/data`` or ``CASEREVIEW_TRAIN_EPOCHS=3``.
A YAML file has the same shape (``train: {epochs: 3}``) and is named by ``--config`` or
``CASEREVIEW_CONFIG``. CLI flags are passed to :func:`load_settings` as ``overrides``.

Secrets (``HF_TOKEN``, the OpenAI-compatible server's API key) are deliberately not
settings: they are read from the environment where they are used and never saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "CASEREVIEW_"
CONFIG_ENV = "CASEREVIEW_CONFIG"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where PneumoniaMNIST lives. ``root=None`` means medmnist's default (~/.medmnist)."""

    root: Path | None = None
    download: bool = True  # only used when the file is missing under ``root``
    size: int = 28


class TrainConfig(Section):
    """Hyperparameters of ``casereview train`` (the released checkpoint uses these defaults)."""

    arch: str = "cr_resnet_small"
    pretrained: bool = False
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    loss: Literal["bce"] = "bce"
    class_weighting: Literal["balanced", "none"] = "balanced"
    label_smoothing: float = 0.0
    augment: bool = True
    augment_preset: Literal["standard", "robust"] = "standard"  # see training/augment.py
    input_norm: Literal["dataset", "per_image"] = "dataset"  # per_image: each image standardised inside the model
    ema_decay: float = 0.99  # weight EMA that is validated and saved; 0 turns it off
    early_stopping_metric: Literal["val_loss", "val_auc", "none"] = "val_loss"  # none: fixed length, last epoch
    patience: int = 10
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    limit: int | None = None  # train/validate on a fixed random subset of N images (tests, smoke runs)
    device: str = "auto"


class ClassifierConfig(Section):
    """Which checkpoint the rest of the system uses; ``None`` means the released one."""

    checkpoint: Path | None = None
    device: str = "auto"
    batch_size: int = 256


class IndexConfig(Section):
    """The case index (``casereview index build``, ``search``, ``evaluate-retrieval``)."""

    embedder: str = "cnn"  # cnn | clip | pixels
    clip_model: str = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    clip_pretrained: str | None = None  # open_clip pretrained tag or weights file (built-in model names only)
    device: str = "auto"  # where the clip embedder runs (cnn uses classifier.device)
    pixels_pca_components: int = 64
    chroma_path: Path | None = None  # None: <paths.workdir>/chroma
    chroma_url: str | None = None  # http://host:port of a `chroma run` server
    k: int = 5
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 200
    batch_size: int = 256
    limit: int | None = None  # index a fixed random subset of N images of each split (tests, smoke runs)
    report_embedders: list[str] = ["cnn", "pixels"]  # evaluated by `casereview report task3`


class ReporterConfig(Section):
    backend: Literal["template", "medgemma", "openai"] = "template"
    variant: str = "grounded"
    model_id: str = "google/medgemma-4b-it"
    device: str = "auto"
    max_new_tokens: int = 300
    batch_size: int = 4
    base_url: str = "http://127.0.0.1:8000/v1"
    api_model: str | None = None  # model name sent to the server; None: model_id
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable holding the key, never the key
    timeout_s: float = 120.0
    retries: int = 3
    seed: int = 0
    # Which evidence the template backend's impression follows: "both" (the classifier, unless it is
    # uncertain or the neighbours' majority disagrees), or one source alone ("neighbours" is a kNN-vote
    # report baseline, "classifier" a CNN-only one).
    template_follows: Literal["both", "classifier", "neighbours"] = "both"


class GraphConfig(Section):
    """The case-review workflow (``casereview review``)."""

    k: int = 5  # neighbours retrieved as evidence
    k_uncertain: int = 15  # neighbours when the classifier is uncertain
    case_base: Literal["train", "train+val"] = "train"  # never test: test cases must not ground reports
    max_attempts: int = 2  # report attempts, the first included
    strict_variant: str = "grounded_skeptical"  # prompt variant of a retry after a contradiction
    conformal_alpha: float = 0.05  # miscoverage of the split-conformal set that flags uncertain cases
    neighbour_majority: float = 0.6  # vote share the neighbours need before a report can contradict them
    checkpointer: Literal["sqlite", "memory", "none"] = "sqlite"


class PathsConfig(Section):
    workdir: Path = Path("runs")


class Settings(Section):
    """All settings of the project. Build with :func:`load_settings`."""

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    index: IndexConfig = IndexConfig()
    reporter: ReporterConfig = ReporterConfig()
    graph: GraphConfig = GraphConfig()
    paths: PathsConfig = PathsConfig()


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Settings named in the environment as ``CASEREVIEW_<SECTION>_<FIELD>`` (pydantic coerces the strings)."""
    environ = os.environ if environ is None else environ
    out: dict[str, dict[str, str]] = {}
    for section, field in Settings.model_fields.items():
        for name in field.annotation.model_fields:
            key = f"{ENV_PREFIX}{section}_{name}".upper()
            if key in environ:
                out.setdefault(section, {})[name] = environ[key]
    return out


def load_settings(
    config_file: Path | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Settings from defaults < YAML file < environment < ``overrides`` (CLI flags).

    ``overrides`` maps section -> {field: value}; ``None`` values are ignored so that
    unset CLI flags do not mask the file or the environment.
    """
    config_file = config_file or os.environ.get(CONFIG_ENV)
    file_values = read_yaml(Path(config_file)) if config_file else {}
    cli_values = {
        section: {k: v for k, v in fields.items() if v is not None}
        for section, fields in (overrides or {}).items()
    }
    merged = _deep_merge(_deep_merge(file_values, env_values()), cli_values)
    unknown = set(merged) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"unknown config section(s): {sorted(unknown)}; known: {sorted(Settings.model_fields)}")
    return Settings.model_validate(merged)
