"""``casereview batch``: the review graph over a split x prompt variants, resumable, with statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from casereview.cli.common import add_common_options, add_runtime_option, path_arg, settings_from_args
from casereview.errors import CaseReviewError
from casereview.paths import check_folder, check_writable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="compare prompt variants over a split: one review per (case, variant), resumable, with statistics",
        description=(
            "Run the case-review graph on every case x prompt variant (an arm per variant) with one backend, "
            "save one record per (case, arm) under --out, then write metrics.json (per arm: scores with paired "
            "bootstrap intervals, McNemar tests, kappa, retries, review flags, latency) and report.md/report.html. "
            "Reference arms (classifier alone, neighbour vote, template following both/classifier/neighbours) come "
            "from the same records. Rerunning the same command resumes: finished (case, arm) pairs are skipped."
        ),
    )
    add_common_options(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", choices=["val", "test"], help="review every case of this split (choose variants on val)")
    which.add_argument("--cases", nargs="+", metavar="CASE", help="or these cases: test:42, image files, folders")
    which.add_argument("--summarize", type=path_arg, metavar="DIR",
                       help="only recompute metrics.json and the reports from the records in DIR")
    p.add_argument("--sample", type=int, metavar="N", help="a seeded random sample of N cases of the split (batch.sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default: 0)")
    p.add_argument("--variants", help="comma-separated prompt variants (default: all in prompts/)")
    p.add_argument("--backend", choices=["template", "medgemma", "openai"], help="reporter backend (default: template)")
    p.add_argument("--outputs", metavar="text,json",
                   help="compare how reports are asked for, as arms: free text and/or the structured JSON answer "
                        "(reporter.structured_output; openai backend)")
    p.add_argument("--model-id", help="VLM model id or local folder (medgemma/openai backends)")
    p.add_argument("--base-url", help="OpenAI-compatible server URL (openai backend)")
    p.add_argument("--chroma-url", help="http://host:port of a `chroma run` server holding the case index")
    p.add_argument("--checkpoint", type=path_arg, help="classifier checkpoint (default: the released one)")
    add_runtime_option(p)
    p.add_argument("--max-attempts", type=int, help="report attempts per case including the strict retry (default: 2)")
    p.add_argument("--probe", choices=["flip"],
                   help="also run grounded variants with the classifier flipped and, separately, the neighbours' labels swapped")
    p.add_argument("--concurrency", type=int,
                   help="reviews in flight at once (threads; speeds up server backends; default 1; batch.concurrency)")
    p.add_argument("--batch-size", type=int, help="prompts per generate call of the local medgemma backend "
                   "(with --concurrency of at least this many)")
    p.add_argument("--checkpointer", choices=["none", "sqlite"], default="none",
                   help="none (default): a pair interrupted mid-graph reruns from its start; sqlite: it resumes at its last node")
    p.add_argument("--out", type=path_arg, help="batch folder (default: <workdir>/batches/<split>-<backend>); rerun to resume")
    p.add_argument("--note", help="a note shown at the top of the report (e.g. that the model is a random test model)")
    p.add_argument("--max-errors", type=int, help="stop after this many failed reviews (default: 20; batch.max_errors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    from casereview.evaluation.batch_metrics import summarize
    from casereview.evaluation.batch_records import load_rows, save_failures, set_aside_corrupt
    from casereview.evaluation.batch_report import write_reports

    if args.summarize:
        out = check_folder(args.summarize, "--summarize")
        _report_corrupt(set_aside_corrupt(out))
    else:
        out, outcome = _run(args)
        save_failures(out, outcome.failed)
        print(f"{outcome.done} reviews run in {outcome.seconds:.1f} s, {outcome.skipped} finished earlier, "
              f"{len(outcome.failed)} failed", file=sys.stderr)
    metrics = summarize(out)
    for reason in metrics["failed"]["by_reason"]:
        print(f"  failed {reason['n']}x: {reason['reason']}", file=sys.stderr)
    md, page = write_reports(metrics, load_rows(out), out)
    print(comparison_text(metrics))
    print(f"wrote {out / 'metrics.json'}, {md}, {page}")
    return 0 if args.summarize or not outcome.failed else 2


def _report_corrupt(moved: list[tuple[Path, str]]) -> None:
    for path, why in moved:
        print(f"warning: record {path} is corrupt ({why}); moved to {path.name}.corrupt, its review will be redone",
              file=sys.stderr)


def _run(args: argparse.Namespace):
    from casereview.evaluation.batch_arms import parse_outputs, parse_variants, plan_arms
    from casereview.evaluation.batch_records import set_aside_corrupt
    from casereview.evaluation.batch_runner import BatchPlan, BatchRunner, split_refs
    from casereview.graphs.review import expand_case_refs
    from casereview.tools.case_index import require_index_folder

    settings = settings_from_args(
        args,
        reporter={"backend": args.backend, "model_id": args.model_id, "base_url": args.base_url,
                  "batch_size": args.batch_size},
        graph={"max_attempts": args.max_attempts, "checkpointer": args.checkpointer},
        index={"chroma_url": args.chroma_url},
        classifier={"checkpoint": args.checkpoint},
        batch={"sample": args.sample, "concurrency": args.concurrency, "max_errors": args.max_errors},
    )
    variants = parse_variants(args.variants)  # a bad name fails before anything loads
    outputs = parse_outputs(args.outputs, settings.reporter.backend)
    if args.split:
        refs = split_refs(settings, args.split, settings.batch.sample, args.seed)
    elif args.cases:
        if settings.batch.sample is not None:
            raise CaseReviewError("--sample draws from a --split; with --cases, name the cases")
        refs = expand_case_refs(args.cases, settings)
    else:
        raise CaseReviewError("give --split val|test, --cases ..., or --summarize DIR")
    backend = settings.reporter.backend
    out = check_folder(args.out or settings.paths.workdir / "batches" / f"{args.split or 'cases'}-{backend}", "--out")
    check_writable(settings.paths.workdir, "--workdir", "the batch's locks and checkpoints")
    plan = BatchPlan(out, refs, plan_arms(backend, variants, probe=args.probe == "flip", outputs=outputs), settings,
                     split=args.split, note=args.note)
    require_index_folder(settings)  # before the gate is fitted
    _report_corrupt(set_aside_corrupt(out))  # before the pending pairs are counted: a corrupt record is redone
    print(f"batch {out}: {len(refs)} cases x {len(plan.arms)} arms ({', '.join(a.name for a in plan.arms)})",
          file=sys.stderr)
    return out, BatchRunner(plan, settings.batch.concurrency, settings.batch.max_errors, progress=not args.no_progress).run()


def comparison_text(metrics: dict) -> str:
    """The comparison table as plain text (for the terminal)."""
    if not any(m["scores"] for m in metrics["arms"].values()):
        return "nothing to score: no arm has a finished review of a case with a known label"
    lines = [f"{'arm':42s} {'n':>5s}  {'accuracy':>22s}  {'balanced accuracy':>22s}"]
    for group in metrics["identical"]:  # arms with the same outputs on every case: one row, named together
        m = metrics["arms"][group[0]]
        if not m["scores"]:
            continue
        cells = [f"{s['value']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
                 for s in (m["scores"]["accuracy"], m["scores"]["balanced_accuracy"])]
        lines.append(f"{' = '.join(group):42s} {m['n']:5d}  {cells[0]:>22s}  {cells[1]:>22s}")
    for name, p in metrics["probe"].items():
        lines.append(f"probe {name:36s} n={p['n']:4d}  anchoring {p['anchoring_rate']:.3f}  changed {p['changed_rate']:.3f}")
    return "\n".join(lines)
