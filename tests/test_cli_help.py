"""Every command's --help (command groups and `casereview --help` too) ends with examples that parse as
written and name no private path; renamed options keep working."""

from __future__ import annotations

import argparse
import importlib
import shlex

import pytest

from casereview.cli import build_parser
from casereview.cli.examples import EXAMPLES as CLI_EXAMPLES
from casereview.studies.commands import EXAMPLES as STUDY_EXAMPLES, REPORTS

EXAMPLES = CLI_EXAMPLES | STUDY_EXAMPLES  # the studies' commands come through the casereview.commands entry point


def leaf_commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{path} {name}".strip()
                out |= leaf_commands(sub, key) or {key: sub}
    return out


def all_commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every parser with a --help: ``casereview`` itself (key ""), command groups and commands."""
    out = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= all_commands(sub, f"{path} {name}".strip())
    return out


LEAVES = leaf_commands(build_parser())
COMMANDS = all_commands(build_parser())


def test_there_are_commands_and_no_stale_examples():
    assert len(LEAVES) > 15 and {"", "index", "search"} <= set(COMMANDS) - set(LEAVES)
    assert set(EXAMPLES) <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_examples_without_private_paths(command):
    text = COMMANDS[command].format_help()
    assert text.count("examples:") == 1 and f"casereview {command}".strip() in text.split("examples:")[1]
    assert "../shared" not in text and "/work/" not in text


def test_report_gen_takes_model_id_and_the_old_name_still_works(capsys):
    parser = build_parser()
    assert parser.parse_args(["report-gen", "--pick", "2", "--model-id", "m1"]).model_id == "m1"
    old = parser.parse_args(["report-gen", "--pick", "2", "--api-model", "m2"])
    assert old.model_id == "m2" and "--api-model is deprecated; use --model-id" in capsys.readouterr().err
    assert "--api-model" not in COMMANDS["report-gen"].format_help()
    for command in ("review", "report-gen", "batch"):  # one name for one thing
        assert "--model-id" in COMMANDS[command].format_help()


@pytest.mark.parametrize("line", [line for lines in EXAMPLES.values() for line in lines])
def test_every_example_parses(line):
    words = shlex.split(line.split("  #")[0].split(" > ")[0])
    assert words[0] == "casereview"
    build_parser().parse_args(words[1:])  # argparse exits on anything it cannot parse


@pytest.mark.parametrize("task", sorted(REPORTS))
def test_every_report_names_a_writer_that_imports(task):
    module, func = REPORTS[task].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_building_the_parser_imports_no_model_library():
    """Every command's start builds the whole parser: it must not pull in torch (seconds) or the graph."""
    import subprocess
    import sys

    code = ("import sys; from casereview.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'timm', 'chromadb', 'langgraph', 'casereview.graphs.graph') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
