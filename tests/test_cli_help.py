"""Every command's --help ends with examples that parse as written and name no private path."""

from __future__ import annotations

import argparse
import importlib
import shlex

import pytest

from casereview.cli import build_parser
from casereview.cli.examples import EXAMPLES
from casereview.cli.report import REPORTS


def leaf_commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{path} {name}".strip()
                out |= leaf_commands(sub, key) or {key: sub}
    return out


LEAVES = leaf_commands(build_parser())


def test_there_are_commands_and_no_stale_examples():
    assert len(LEAVES) > 15 and set(EXAMPLES) <= set(LEAVES)


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_help_has_examples_without_private_paths(command):
    text = LEAVES[command].format_help()
    assert "examples:" in text and f"casereview {command}" in text.split("examples:")[1]
    assert "../shared" not in text and "/work/" not in text


@pytest.mark.parametrize("line", [line for lines in EXAMPLES.values() for line in lines])
def test_every_example_parses(line):
    words = shlex.split(line.split("  #")[0].split(" > ")[0])
    assert words[0] == "casereview"
    build_parser().parse_args(words[1:])  # argparse exits on anything it cannot parse


@pytest.mark.parametrize("task", sorted(REPORTS))
def test_every_report_names_a_writer_that_imports(task):
    module, func = REPORTS[task].split(":")
    assert callable(getattr(importlib.import_module(module), func))
