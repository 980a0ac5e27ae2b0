"""The research commands, added to ``casereview`` as a plugin (the ``casereview.commands`` entry-point group
in pyproject.toml): ``report TASK`` regenerates a task report under reports/ from its Jinja template,
``study`` runs the architecture and seed study, ``robustness`` the synthetic-shift table.

The product's CLI never imports this package; it finds these commands through the entry point."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from casereview.cli.common import add_common_options, path_arg, settings_from_args
from casereview.cli.examples import add_examples
from casereview.errors import CaseReviewError
from casereview.paths import check_folder

# task -> "module:function"; each function takes (settings, out_dir) and returns the report's path.
REPORTS = {
    "task1": "casereview.studies.task1_report:write_task1_report",
    "task2": "casereview.studies.task2_report:write_task2_report",
    "task3": "casereview.studies.task3_report:write_task3_report",
    "gate": "casereview.studies.gate_report:write_gate_report",
}
EXAMPLES: dict[str, list[str]] = {
    "report": ["casereview report task1", "casereview report task3 --out reports"],
    "study": ["casereview study --out runs/study --seeds 0 1 2"],
    "robustness": ["casereview robustness --split val --checkpoint released=released --out runs/robustness_val.json"],
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
    p.set_defaults(func=run_report)

    p = sub.add_parser(
        "study",
        help="architecture comparison on validation and the seed study of the chosen one",
        description=(
            "Train seed 0 of each architecture (the default config otherwise), choose on validation, train the "
            "other seeds of the choice, evaluate those on test, and write a JSON summary. Runs that already "
            "have a checkpoint under --out are reused, so an interrupted study resumes."
        ),
    )
    add_common_options(p)
    p.add_argument("--out", type=path_arg, default=Path("runs/study"), help="one folder per run (default: runs/study)")
    p.add_argument("--archs", nargs="+", default=["cr_resnet_small", "cr_vit_tiny"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--summary", type=Path, default=Path("reports/task1_study.json"), help="summary JSON path")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(func=run_study)

    p = sub.add_parser(
        "robustness",
        help="metrics under synthetic brightness, contrast, gamma, blur and noise shifts",
        description=(
            "Evaluate checkpoints on a split under synthetic acquisition shifts (studies/robustness.py) "
            "with their own temperature and threshold; writes a JSON table (one entry per --checkpoint NAME=PATH)."
        ),
    )
    add_common_options(p)
    p.add_argument("--checkpoint", dest="checkpoints", action="append", required=True, metavar="NAME=PATH",
                   help="a named checkpoint; repeat to compare (PATH 'released' means the released one)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--out", type=path_arg, required=True, help="JSON file to write")
    p.set_defaults(func=run_robustness)
    for name in EXAMPLES:
        add_examples(sub.choices[name], name, EXAMPLES)


def run_report(args: argparse.Namespace) -> int:
    module, func = REPORTS[args.task].split(":")
    settings = settings_from_args(args)
    path = getattr(importlib.import_module(module), func)(settings, check_folder(args.out, "--out"))
    print(f"wrote {path}")
    return 0


def _named_checkpoints(pairs: list[str]) -> dict[str, Path | None]:
    named: dict[str, Path | None] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise CaseReviewError(f"--checkpoint expects NAME=PATH, got {pair!r}")
        named[name] = None if path == "released" else Path(path)
    return named


def run_study(args: argparse.Namespace) -> int:
    from casereview.studies.architecture_study import run_study, write_summary

    settings = settings_from_args(args, train={"threads": args.threads})
    summary = run_study(settings, check_folder(args.out, "--out"), args.archs, args.seeds)
    path = write_summary(summary, args.summary)
    print(f"chosen on validation: {summary['chosen_arch']} (ranking {summary['ranking_on_val']})")
    for k, v in summary["test_mean_std"].items():
        print(f"  test {k:18s} {v['mean']:.4f} +- {v['std']:.4f}")
    print(f"wrote {path}")
    return 0


def run_robustness(args: argparse.Namespace) -> int:
    from casereview.data import load_split
    from casereview.studies.robustness import robustness_rows, summary

    settings = settings_from_args(args)
    data = load_split(args.split, settings.data.root, settings.data.download)
    table = {}
    for name, path in _named_checkpoints(args.checkpoints).items():
        rows = robustness_rows(path, data.images, data.labels, settings.classifier.device)
        table[name] = {"checkpoint": str(path or "released"), "rows": rows, "summary": summary(rows)}
        s = table[name]["summary"]
        print(f"{name}: mean AUC under shifts {s['mean_auc']:.4f}, min AUC {s['min_auc']:.4f}, "
              f"min sensitivity {s['min_sensitivity']:.3f}, min specificity {s['min_specificity']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"split": args.split, "checkpoints": table}, indent=1))
    print(f"wrote {args.out}")
    return 0
