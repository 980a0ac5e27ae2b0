"""Options shared by subcommands and the bridge from parsed flags to :class:`Settings`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from casereview.config import Settings, load_settings
from casereview.errors import CaseReviewError


class DeprecatedAlias(argparse.Action):
    """An old option name that still works (sets its new option's ``dest``) and says which name to use.
    Give it ``help=argparse.SUPPRESS`` so that ``--help`` shows only the new name."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"warning: {option_string} is deprecated; use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def path_arg(text: str) -> Path:
    """An option's path; an empty one is refused (``Path("")`` is the current folder, which ``--out ''``
    never means)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a folder or file (use . for the current folder)")
    return Path(text)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=path_arg, help="YAML config file (default: $CASEREVIEW_CONFIG)")
    parser.add_argument(
        "--data-root", type=path_arg, help="folder holding pneumoniamnist.npz (default: $CASEREVIEW_DATA_ROOT, else ~/.medmnist)"
    )
    parser.add_argument("--workdir", type=path_arg, help="where indexes and runs are kept (default: runs/)")


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=("onnx", "torch"),
                        help="what serves the classifier: its ONNX export on ONNX Runtime (default; no torch import) "
                             "or the checkpoint on torch ($CASEREVIEW_CLASSIFIER_RUNTIME)")


def settings_from_args(args: argparse.Namespace, **sections: dict[str, Any]) -> Settings:
    """Defaults < YAML < environment < these flags (``None`` flags leave lower layers alone)."""
    overrides: dict[str, dict[str, Any]] = {
        "data": {"root": getattr(args, "data_root", None)},
        "paths": {"workdir": getattr(args, "workdir", None)},
        "classifier": {"runtime": getattr(args, "runtime", None)},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(getattr(args, "config", None), overrides)


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """A one-line error for integer flags that must be at least 1 (checked before any work starts)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CaseReviewError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
