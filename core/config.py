"""Typed configuration: defaults in code, then a YAML file, then the environment, then the CLI.

Every setting lives in one section (``data``, ``train``, ``classifier``, ``index``,
``reporter``, ``graph``, ``gate``, ``paths``, ``batch``). The environment uses ``CASEREVIEW_<SECTION>_<FIELD>``,
for example ``CASEREVIEW_DATA_ROOT=/data/medmnist`` or ``CASEREVIEW_TRAIN_EPOCHS=3``.
A YAML file has the same shape (``train: {epochs: 3}``) and is named by ``--config`` or
``CASEREVIEW_CONFIG``. CLI flags are passed to :func:`load_settings` as ``overrides``. The model's constraints are the
one place settings and options are checked, so every layer gets the same one-line error; an unknown
``CASEREVIEW_*`` variable is warned about with the closest setting's name.

Secrets (``HF_TOKEN``, the OpenAI-compatible server's API key) are deliberately not
settings: they are read from the environment where they are used and never saved.
"""

from __future__ import annotations

import difflib
import os
import reprlib
import warnings
from importlib import resources
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from casereview.errors import CaseReviewError, shown
from casereview.paths import file_in_the_way
from casereview.provenance import redact_url

ENV_PREFIX = "CASEREVIEW_"
EmbedderName = Literal["cnn", "clip", "pixels"]  # the registry of casereview.tools.embedders
CONFIG_ENV = "CASEREVIEW_CONFIG"
# CASEREVIEW_* variables that are not settings (the notebook's clone URL); any other unknown one is warned about
OTHER_ENV = frozenset({CONFIG_ENV, "CASEREVIEW_REPO_URL"})


class ConfigError(CaseReviewError, ValueError):
    """A setting, config file or environment variable that cannot be used; the message names it and its source."""

    resumable = False  # the same run with the same settings fails the same way


class Section(BaseModel):
    # inf and nan are no numbers of seconds, rates or sizes: `timeout_s: .inf` would wait forever
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's `k: true` is not a count: pydantic would read it as 1
        field = cls.model_fields[info.field_name]
        kinds = get_args(field.annotation) or (field.annotation,)
        if isinstance(value, bool) and bool not in kinds and (int in kinds or float in kinds):
            raise ValueError("a number is needed, not true/false")
        return value


def _not_empty(value: Any) -> Any:
    """An empty path would mean the current folder: refuse it (``--out ''`` is a slip, not a choice)."""
    if isinstance(value, (str, Path)) and not str(value).strip():
        raise ValueError("an empty path; give a folder (use . for the current one)")
    return value


def check_http_url(url: str, what: str, query: bool = True) -> str:
    """``url`` if it is an http(s) URL with a host and a numeric port (or none); a ``ValueError`` saying
    what is wrong otherwise (checked when the settings load, not on the first request). ``query=False``:
    a query string is refused (a client that appends a path to the URL puts it after the query)."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        parts.port  # raises for a port that is not a number or out of range
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc}); use http://host:port/path") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host, like http://127.0.0.1:8000")
    if parts.query and not query:
        raise ValueError(f"{what} carries a query string (?...); the client appends "
                         "/chat/completions after it, so no request could reach the server. Give the URL without "
                         "it and put an API key in the environment variable named by reporter.api_key_env")
    return url


def _prompt_variants() -> set[str]:
    """The prompt variants shipped in ``casereview.prompts`` (package data, not code: read by name here)."""
    return {p.name[:-3] for p in resources.files("casereview.prompts").iterdir()
            if p.name.endswith(".j2") and not p.name.startswith("_")}


def _known_variant(value: str) -> str:
    """A variant name the review would only find missing at its first prompt (or, for the strict one, at a retry)."""
    if value not in (known := _prompt_variants()):
        raise ValueError(f"no prompt variant {value!r}; known: {', '.join(sorted(known))}")
    return value


class DataConfig(Section):
    """Where PneumoniaMNIST lives. ``root=None`` means medmnist's default (~/.medmnist)."""

    root: Path | None = None
    download: bool = True  # only used when the file is missing under ``root``
    size: int = Field(default=28, ge=8)

    _root = field_validator("root", mode="before")(lambda cls, v: _not_empty(v))


class TrainConfig(Section):
    """Hyperparameters of ``casereview train`` (the released checkpoint uses these defaults)."""

    arch: str = "cr_resnet_small"
    pretrained: bool = False
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    loss: Literal["bce"] = "bce"
    class_weighting: Literal["balanced", "none"] = "balanced"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: bool = True
    augment_preset: Literal["standard", "robust"] = "standard"  # see training/augment.py
    input_norm: Literal["dataset", "per_image"] = "dataset"  # per_image: each image standardised inside the model
    ema_decay: float = Field(default=0.99, ge=0, lt=1)  # weight EMA that is validated and saved; 0 turns it off
    early_stopping_metric: Literal["val_loss", "val_auc", "none"] = "val_loss"  # none: fixed length, last epoch
    patience: int = Field(default=10, ge=1)
    seed: int = 0
    num_workers: int = Field(default=0, ge=0)
    threads: int | None = Field(default=None, ge=1)  # torch.set_num_threads; None keeps torch's default
    limit: int | None = Field(default=None, ge=1)  # train/validate on a fixed random subset of N images (tests, smoke runs)
    device: str = "auto"


class ClassifierConfig(Section):
    """Which checkpoint the rest of the system uses; ``None`` means the released one."""

    checkpoint: Path | None = None
    # onnx: the checkpoint's ONNX export on ONNX Runtime (no torch import); torch: the checkpoint itself
    runtime: Literal["onnx", "torch"] = "onnx"
    device: str = "auto"  # torch runtime only (ONNX Runtime serves on the CPU)
    batch_size: int = Field(default=256, ge=1)
    # CPU threads (ONNX Runtime or torch, and BLAS) while reviewing: one image at a time gains nothing from a second thread,
    # and on a shared 2-core machine two threads made one forward pass 50x slower (150 ms against 3 ms)
    threads: int | None = Field(default=1, ge=1)


class IndexConfig(Section):
    """The case index (``casereview index build``, ``search``, ``evaluate-retrieval``)."""

    embedder: EmbedderName = "cnn"
    clip_model: str = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    clip_pretrained: str | None = None  # open_clip pretrained tag or weights file (built-in model names only)
    device: str = "auto"  # where the clip embedder runs (cnn uses classifier.device)
    pixels_pca_components: int = Field(default=64, ge=1)
    chroma_path: Path | None = None  # None: <paths.workdir>/chroma
    chroma_url: str | None = None  # http://host:port of a `chroma run` server
    # total seconds one request to a Chroma server may take (connect, send, wait, read): a server that
    # accepts connections and never answers fails a search after this long
    chroma_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    k: int = Field(default=5, ge=1)
    hnsw_m: int = Field(default=32, ge=2)
    hnsw_ef_construction: int = Field(default=200, ge=1)
    hnsw_ef_search: int = Field(default=200, ge=1)
    batch_size: int = Field(default=256, ge=1)
    limit: int | None = Field(default=None, ge=1)  # index a fixed random subset of N images of each split (tests, smoke runs)
    report_embedders: list[EmbedderName] = ["cnn", "pixels"]  # evaluated by `casereview report task3`

    @field_validator("chroma_url")
    @classmethod
    def _chroma_url(cls, value: str | None) -> str | None:
        return value and check_http_url(value, "the Chroma URL")


class ReporterConfig(Section):
    backend: Literal["template", "medgemma", "openai"] = "template"
    variant: str = "grounded"
    model_id: str = "google/medgemma-4b-it"
    device: str = "auto"
    # medgemma backend: "auto" is bf16 on GPUs with native bf16, 4-bit NF4 on older ones (a T4), fp32 on CPU
    precision: Literal["auto", "bf16", "fp32", "4bit"] = "auto"
    max_new_tokens: int = Field(default=300, ge=1)
    batch_size: int = Field(default=4, ge=1)
    base_url: str = "http://127.0.0.1:8000/v1"
    api_model: str | None = None  # model name sent to the server; None: model_id
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable holding the key, never the key
    # seconds one request may take in total (connect, send, wait, read the whole answer): a server that
    # trickles its answer or never answers fails the request after this long
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # seconds one prompt's requests may take together, retries and their back-off included
    total_timeout_s: float = Field(default=120.0, gt=0, le=7200)
    retries: int = Field(default=3, ge=0)
    seed: int = 0
    # openai backend: ask the server for a JSON object {findings, impression} (response_format json_schema);
    # a server that refuses it is told once and the run falls back to free text
    structured_output: bool = False
    # Which evidence the template backend's impression follows: "both" (the classifier, unless it is
    # uncertain or the neighbours' majority disagrees), or one source alone ("neighbours" is a kNN-vote
    # report baseline, "classifier" a CNN-only one).
    template_follows: Literal["both", "classifier", "neighbours"] = "both"

    _variant = field_validator("variant")(lambda cls, v: _known_variant(v))

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_http_url(value, "the server URL", query=False)


class GraphConfig(Section):
    """The case-review workflow (``casereview review``)."""

    # neighbours retrieved as evidence; at most 1,000 (the case base has 4,708 cases; a report can weigh a few)
    k: int = Field(default=5, ge=1, le=1000)
    k_uncertain: int = Field(default=15, ge=1, le=1000)  # neighbours when the classifier is uncertain
    case_base: Literal["train", "train+val"] = "train"  # never test: test cases must not ground reports
    max_attempts: int = Field(default=2, ge=1)  # report attempts, the first included
    strict_variant: str = "grounded_skeptical"  # prompt variant of a retry after a contradiction
    conformal_alpha: float = Field(default=0.05, gt=0, lt=1)  # miscoverage of the split-conformal set that flags uncertain cases
    neighbour_majority: float = Field(default=0.6, gt=0, le=1)  # vote share the neighbours need before a report can contradict them
    checkpointer: Literal["sqlite", "memory", "none"] = "sqlite"
    # Which finished reviews pause for a reviewer's decision (the sign_off node): none, the flagged
    # ones, or all. Batch runs with it off.
    sign_off: Literal["off", "flagged", "all"] = "off"
    reviewer: str | None = None  # who signs (default: the login name)
    # A served graph's callers send images as bytes; image paths they name are read only inside these
    # folders (none by default: a caller never names a file on the server's disk).
    caller_folders: list[Path] = []
    caller_image_max_bytes: int = Field(default=8_000_000, ge=1_000)  # an image a caller sends, decoded

    _strict_variant = field_validator("strict_variant")(lambda cls, v: _known_variant(v))


class GateConfig(Section):
    """The input gate (graph node ``check_input``): fitted on train, thresholds set on validation."""

    # Share of in-distribution validation cases the gate may flag; the image statistics and the
    # feature-space distance get half of it each, so their union stays within it.
    false_flag_rate: float = Field(default=0.02, gt=0, lt=0.5)
    # Share of validation images, served as full-size files, flagged as unstable under the resize.
    resize_false_flag_rate: float = Field(default=0.01, gt=0, lt=0.5)
    fit_limit: int | None = Field(default=None, ge=20)  # fit on a fixed random subset of N train and val images (tests)


class PathsConfig(Section):
    workdir: Path = Path("runs")

    _workdir = field_validator("workdir", mode="before")(lambda cls, v: _not_empty(v))

    @field_validator("workdir")
    @classmethod
    def _a_folder(cls, value: Path) -> Path:
        # a file here would surface as a FileExistsError or sqlite error deep inside a run, after model loading
        if (existing := file_in_the_way(value)) is not None:
            raise ValueError(f"{existing} is a file; the workdir must be a folder (or not exist yet)")
        return value


class BatchConfig(Section):
    """How ``casereview batch`` runs (none of these changes a review's result)."""

    sample: int | None = Field(default=None, ge=0)  # a seeded random sample of N cases of the split
    concurrency: int = Field(default=1, ge=1)  # reviews in flight at once
    max_errors: int = Field(default=20, ge=1)  # stop after this many failed reviews


class Settings(Section):
    """All settings of the project. Build with :func:`load_settings`."""

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    index: IndexConfig = IndexConfig()
    reporter: ReporterConfig = ReporterConfig()
    graph: GraphConfig = GraphConfig()
    gate: GateConfig = GateConfig()
    paths: PathsConfig = PathsConfig()
    batch: BatchConfig = BatchConfig()


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML config file as a mapping of sections; a :class:`ConfigError` saying what is wrong otherwise."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                          f"position {exc.start}); save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deep to be a config (sections hold settings, "
                          "settings hold values)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{line}: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def env_name(section: str, name: str) -> str:
    return f"{ENV_PREFIX}{section}_{name}".upper()


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Settings named in the environment as ``CASEREVIEW_<SECTION>_<FIELD>`` (pydantic coerces the strings)."""
    environ = os.environ if environ is None else environ
    out: dict[str, dict[str, str]] = {}
    for section, field in Settings.model_fields.items():
        for name in field.annotation.model_fields:
            if env_name(section, name) in environ:
                out.setdefault(section, {})[name] = environ[env_name(section, name)]
    return out


def warn_unknown_env(environ: Mapping[str, str] | None = None, also_known: set[str] = frozenset()) -> list[str]:
    """Warn about each ``CASEREVIEW_*`` variable that names no setting (a typo would otherwise be ignored),
    naming the closest setting's variable; returns the unknown names."""
    environ = os.environ if environ is None else environ
    known = {env_name(section, name) for section, field in Settings.model_fields.items()
             for name in field.annotation.model_fields}
    # names are matched exactly: a lower-case casereview_graph_k is not read, so it is warned about too
    unknown = sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k not in known
                     and k not in OTHER_ENV and k not in also_known)
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "settings are CASEREVIEW_<SECTION>_<FIELD>"
        name = shown(name, 60)
        warnings.warn(f"environment variable {name} is not a setting and is ignored; {hint}", stacklevel=2)
    return unknown


def _source(section: str, name: str | None, layers: list[tuple[str, dict[str, Any]]]) -> str:
    """Which layer set ``section.name`` last (the one whose value failed)."""
    for label, values in reversed(layers):
        in_section = values.get(section)
        if isinstance(in_section, dict) and (name is None or name in in_section) or (name is None and section in values):
            return env_name(section, name) if label == "environment" and name else label
    return "default"


def _describe(error: dict[str, Any], layers: list[tuple[str, dict[str, Any]]]) -> str:
    """One line for one pydantic error: the setting, its value, where it came from, what is wrong."""
    loc = [str(x) for x in error["loc"]]
    section, name = loc[0], (loc[1] if len(loc) > 1 else None)
    source = _source(section, name, layers)
    if error["type"] == "extra_forbidden" and name:
        known = ", ".join(Settings.model_fields[section].annotation.model_fields)
        return f"unknown setting {section}.{name} ({source}); {section} has: {known}"
    setting = ".".join(loc)
    value = error.get("input")
    if isinstance(value, str) and "://" in value or section == "reporter" and name == "base_url" \
            or section == "index" and name == "chroma_url":
        value = redact_url(str(value))  # a URL's credentials never reach a message
    # a value can be huge (a YAML of nested anchors expands 1 KB into megabytes; its full repr would take
    # longer than the run): reprlib writes only its first levels and items, and the message stays one line
    text = _BRIEF.repr(str(value) if isinstance(value, Path) else value)
    return f"invalid setting {setting} = {shown(text, 100)} ({source}): {shown(error['msg'], 300)}"


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 3, 100, 100


def load_settings(
    config_file: Path | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Settings from defaults < YAML file < environment < ``overrides`` (CLI flags).

    ``overrides`` maps section -> {field: value}; ``None`` values are ignored so that
    unset CLI flags do not mask the file or the environment. Anything invalid raises a
    :class:`ConfigError` naming the setting and where its value came from.
    """
    config_file = config_file or os.environ.get(CONFIG_ENV)
    file_values = read_yaml(Path(config_file)) if config_file else {}
    cli_values = {  # a section with no flag set stays out, so that it does not mask the file's value
        section: given for section, fields in (overrides or {}).items()
        if (given := {k: v for k, v in fields.items() if v is not None})
    }
    layers = [(f"config file {config_file}", file_values), ("environment", env_values()), ("command line", cli_values)]
    merged: dict[str, Any] = {}
    for _, values in layers:
        merged = _deep_merge(merged, values)
    unknown = sorted(set(merged) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(unknown)} ({_source(unknown[0], None, layers)}); "
                          f"known: {', '.join(Settings.model_fields)}")
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], layers) + more) from exc
    warn_unknown_env(also_known={settings.reporter.api_key_env})
    return settings
