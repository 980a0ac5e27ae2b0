"""``casereview report TASK``: regenerate a task report under reports/ from its Jinja template."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from casereview.cli.common import add_common_options, path_arg, settings_from_args
from casereview.paths import check_folder

# task -> "module:function"; each function takes (settings, out_dir) and returns the report's path.
REPORTS = {
    "task1": "casereview.studies.task1_report:write_task1_report",
    "task2": "casereview.studies.task2_report:write_task2_report",
    "task3": "casereview.studies.task3_report:write_task3_report",
    "gate": "casereview.studies.gate_report:write_gate_report",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="regenerate a task report (Markdown + figures) under reports/",
        description="Regenerate a task report from its template in templates/, recomputing every figure it shows.",
    )
    p.add_argument("task", choices=sorted(REPORTS), help="which report")
    p.add_argument("--out", type=path_arg, default=Path("reports"), help="output folder (default: reports/)")
    add_common_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module, func = REPORTS[args.task].split(":")
    settings = settings_from_args(args)
    path = getattr(importlib.import_module(module), func)(settings, check_folder(args.out, "--out"))
    print(f"wrote {path}")
    return 0
