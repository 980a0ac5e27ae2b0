"""``casereview review``: run the case-review graph on cases; ``casereview graph``: show it."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, get_args

from casereview.cli.common import add_common_options, add_runtime_option, path_arg, settings_from_args
from casereview.cli.signoff import add_review_options, check_sign_off, reviewer_name, sign_waiting
from casereview.config import EmbedderName
from casereview.errors import CaseReviewError, printable
from casereview.paths import check_folder, check_name, check_writable, resolve_inside


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="review cases end to end: classify, retrieve similar cases, report, verify",
        description=(
            "Run the LangGraph case-review workflow on each case: classify (calibrated), retrieve similar train "
            "cases as evidence, prompt the reporter, verify the report against the evidence (one retry with a "
            "stricter prompt after a contradiction), and save the record as JSON and Markdown. CASES are "
            "split:index references (test:42), PNG/JPEG files of any size, or folders of them."
        ),
    )
    add_common_options(p)
    p.add_argument("cases", nargs="+", metavar="CASE", help="test:42, path/to/image.png or folder/")
    p.add_argument("--backend", choices=["template", "medgemma", "openai"], help="reporter backend (default: template)")
    p.add_argument("--variant", help="first prompt variant (default: grounded)")
    p.add_argument("--model-id", help="VLM model id or local folder (medgemma/openai backends)")
    p.add_argument("--base-url", help="OpenAI-compatible server URL (openai backend)")
    p.add_argument("-k", type=int, help="similar cases retrieved (default: 5; more when the classifier is uncertain)")
    p.add_argument("--embedder", choices=get_args(EmbedderName), help="case-index embedder (default: cnn)")
    p.add_argument("--checkpoint", type=path_arg, help="classifier checkpoint (default: the released one)")
    add_runtime_option(p)
    p.add_argument("--max-attempts", type=int, help="report attempts including the first (default: 2)")
    p.add_argument("--out", type=path_arg, help="where records go (default: <workdir>/reviews/<run id>)")
    p.add_argument("--run-id", help="resume or extend this run (default: a new id)")
    p.add_argument("--json", action="store_true", help="print the record(s) as JSON instead of a summary")
    p.add_argument("--step", action="store_true", help="pause before each node to inspect the state (interactive)")
    p.add_argument("--timings", action="store_true", help="print per-node timings and the graph overhead")
    add_review_options(p)
    p.set_defaults(func=run_review)

    p = sub.add_parser("graph", help="print the review graph", description="Print the case-review graph.")
    p.add_argument("--mermaid", action="store_true", help="Mermaid source (default: ASCII)")
    p.set_defaults(func=run_graph)

    p = sub.add_parser("schema", help="print the JSON schema of a case record",
                       description="Print the JSON schema of the case record (<case>.json) that `review` writes.")
    p.set_defaults(func=run_schema)


def run_schema(args: argparse.Namespace) -> int:
    from casereview.schemas import CaseReview

    print(json.dumps(CaseReview.model_json_schema(), indent=2))
    return 0


def run_graph(args: argparse.Namespace) -> int:
    from casereview.graphs.graph import graph

    g = graph.get_graph()
    print(g.draw_mermaid() if args.mermaid else g.draw_ascii())
    return 0


def run_review(args: argparse.Namespace) -> int:
    from casereview.cli import present  # (imports the graph: not for every command's start)
    from casereview.graphs.review import ReviewRun, expand_case_refs
    from casereview.records import claim_records
    from casereview.tools.case_index import require_index_folder

    settings = settings_from_args(
        args,
        reporter={"backend": args.backend, "variant": args.variant, "model_id": args.model_id, "base_url": args.base_url},
        graph={"k": args.k, "max_attempts": args.max_attempts, "sign_off": args.sign_off, "reviewer": args.reviewer},
        index={"embedder": args.embedder},
        classifier={"checkpoint": args.checkpoint},
    )
    if args.step and not sys.stdin.isatty():
        raise CaseReviewError("--step pauses for Enter between nodes and needs a terminal; run without --step, "
                              "or step through the graph in the notebook")
    check_sign_off(settings, reviewer_name(args.reviewer, settings), sys.stdin.isatty())
    run_id = check_name(args.run_id, "--run-id") if args.run_id is not None else uuid.uuid4().hex[:12]
    out = args.out or resolve_inside(settings.paths.workdir / "reviews", run_id, what="--run-id")
    check_folder(out, "--out", "the records")
    check_writable(settings.paths.workdir, "--workdir", "the run's checkpoints and locks")
    refs = expand_case_refs(args.cases, settings)  # every input checked before any model loads
    claim_records(out, refs, run_id)  # a folder holding another run's record of a case is not this run's
    require_index_folder(settings)
    run = ReviewRun(settings, run_id, out)
    if not args.step:
        run.prefetch(refs)
    records, reviewed, failed, resumable = [], [], {}, False  # reviewed: the cases of records; failed: reason -> cases
    for ref, record in _outcomes(run, refs, args.step):
        if isinstance(record, CaseReviewError):  # one failing case does not stop the others
            failed.setdefault(f"{type(record).__name__}: {record}".replace(ref, "<case>"), []).append(ref)
            resumable |= record.resumable
            continue
        if record is None:  # q while stepping: end the run, keep what finished
            print(f"stopped; {printable(ref)} can be resumed with --run-id {run_id}", file=sys.stderr)
            break
        records.append(record)
        reviewed.append(ref)
        if not args.json:
            print(present.summary(record, timings=args.timings))
    if settings.graph.sign_off != "off" and records:
        signed, waiting = sign_waiting(run, reviewed, reviewer_name(args.reviewer, settings), sys.stdin.isatty())
        records = [signed.get(ref, record) for ref, record in zip(reviewed, records)]
        if waiting:
            print(f"{waiting} case(s) waiting for sign-off: `casereview sign-off list`, then "
                  f"`casereview sign-off CASE --run-id {run_id} --accept | --edit FILE | --reject --reason TEXT`",
                  file=sys.stderr)
    if args.json and records:
        print(json.dumps(records[0] if len(refs) == 1 else records, indent=2))
    if args.timings and len(records) > 1:
        print(present.timing_summary(records))
    flagged = sum(r["needs_review"] for r in records)
    if records:
        print(f"{len(records)} of {len(refs)} case(s) reviewed, {flagged} flagged for review; "
              f"records in {printable(out)} (run id {run_id})", file=sys.stderr)
    for reason, cases in failed.items():  # one line per cause, not per case
        more = f" (and {len(cases) - 1} more case{'s' if len(cases) > 2 else ''})" if len(cases) > 1 else ""
        print(printable(f"error: {cases[0]}{more}: {reason.split(': ', 1)[1].replace('<case>', cases[0])}"),
              file=sys.stderr)
    if failed:
        n = sum(map(len, failed.values()))
        print(f"{n} of {len(refs)} case(s) failed" + (f"; fix the cause and rerun with --run-id {run_id} to resume "
              "them where they stopped" if resumable else ""), file=sys.stderr)
        return 2
    return 0


def _outcomes(run, refs: list[str], step: bool):
    """(case, record | None when stepping stopped | its CaseReviewError), case by case."""
    from casereview.cli import present

    if not step:
        yield from _in_given_order(run.review_many(refs), refs)
        return
    for ref in refs:
        try:
            yield ref, run.step_through(ref, ask=lambda node, values: present.step_pause(node, values, input),
                                        show=lambda node, update: print(present.describe_update(node, update)))
        except CaseReviewError as exc:
            yield ref, exc


def _in_given_order(outcomes: Iterable[tuple[str, Any]], refs: list[str]) -> Iterator[tuple[str, Any]]:
    """``outcomes`` (which come as cases finish, those finished in an earlier run first) in the order of
    ``refs``, each as soon as every case before it is out."""
    pending: dict[str, Any] = {}
    order = iter(refs)
    want = next(order, None)
    for ref, outcome in outcomes:
        pending[ref] = outcome
        while want in pending:
            yield want, pending.pop(want)
            want = next(order, None)
