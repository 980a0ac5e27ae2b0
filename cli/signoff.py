"""``casereview sign-off``: the cases waiting for a reviewer (``list``), and one reviewer's decision on one
of them (``CASE --run-id R --accept | --edit FILE | --reject --reason TEXT``).

A decision resumes the case's paused thread in the run's checkpoints (``Command(resume=...)``); the
graph records it and writes the signed record. Everything is checked before the graph is touched, and
nothing here loads a model: signing is a checkpoint read, a validation and a record write.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any, Callable

from casereview.cli.common import add_common_options, path_arg, settings_from_args
from casereview.config import Settings
from casereview.errors import CaseReviewError, printable
from casereview.paths import check_name

if TYPE_CHECKING:
    from casereview.graphs.review import ReviewRun

LIST = "list"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sign-off",
        help="list the cases waiting for a reviewer, or sign one (accept, edit, reject)",
        description=(
            "`casereview sign-off list` lists the cases paused for sign-off in every run of the workdir "
            "(run id, case, why, how long). `casereview sign-off CASE --run-id R` with one decision signs "
            "CASE (as it was named in the review) in run R: --accept signs the draft as it is; --edit FILE "
            "replaces it with your report text (its IMPRESSION: line, or --impression, gives the impression; "
            "the draft stays in the record); --reject --reason TEXT marks it entered in error. A signed case "
            "can be signed again (status amended). A case named `list` is given as ./list."
        ),
    )
    add_common_options(p)
    p.add_argument("case", metavar="CASE|list", help="the case to sign (as it was reviewed: test:42, films/a.png), or `list`")
    p.add_argument("--run-id", help="the run the case was reviewed in (see `casereview sign-off list`)")
    p.add_argument("--accept", action="store_true", help="sign the model's draft as the final report")
    p.add_argument("--edit", type=path_arg, metavar="FILE", help="sign your report text (UTF-8 file) instead of the draft")
    p.add_argument("--reject", action="store_true", help="mark the report entered in error (needs --reason)")
    p.add_argument("--impression", choices=("normal", "pneumonia", "indeterminate"),
                   help="the impression of an --edit (default: read from its IMPRESSION: line)")
    p.add_argument("--reason", help="why (required with --reject; optional otherwise)")
    p.add_argument("--reviewer", help="who signs (default: the settings' graph.reviewer, else your login name)")
    p.add_argument("--out", type=path_arg, help="the run's records folder, if the review was given --out "
                                           "(default: <workdir>/reviews/<run id>)")
    p.set_defaults(func=run_sign_off)


def reviewer_name(given: str | None, settings: Settings) -> str:
    """Who signs: ``--reviewer``, else the settings' ``graph.reviewer``, else the login name."""
    return (given if given is not None else settings.graph.reviewer or getpass.getuser()).strip()


def edit_fields(text: str, impression: str | None = None) -> dict[str, Any]:
    """A reviewer's report text as an edit's ``impression`` and ``text``: the impression given, else the
    one its ``IMPRESSION:`` line names (read by the same parser as a model's report, its first tier)."""
    from casereview.tools.reporter.parser import parse_report

    if not text.strip():
        raise CaseReviewError("the edited report is empty; nothing was signed")
    if impression is None:
        parsed = parse_report(text)
        # only the contract line (tier 1): what a person signs is stated, never inferred from its prose
        if parsed.impression is None or parsed.tier != 1:
            raise CaseReviewError("the edited report names no impression: end it with a line "
                                  "'IMPRESSION: normal | pneumonia | indeterminate' (or give --impression)")
        impression = parsed.impression
    return {"impression": impression, "text": text.strip()}


def decision_from_args(args: argparse.Namespace, reviewer: str) -> dict[str, Any]:
    """The resume value the flags ask for, validated like the graph validates it; one line otherwise."""
    from casereview.graphs.signing import check_decision

    chosen = [flag for flag, given in (("--accept", args.accept), ("--edit", args.edit is not None),
                                       ("--reject", args.reject)) if given]
    if len(chosen) != 1:
        raise CaseReviewError("give exactly one decision: --accept, --edit FILE or --reject --reason TEXT"
                              + (f" (got {' and '.join(chosen)})" if chosen else ""))
    if args.impression is not None and args.edit is None:
        raise CaseReviewError("--impression goes with --edit FILE (accept signs the draft's own impression)")
    decision: dict[str, Any] = {"decision": chosen[0][2:], "reviewer": reviewer}
    if args.edit is not None:
        try:
            text = args.edit.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CaseReviewError(f"--edit {args.edit}: cannot read it ({why})") from None
        decision |= edit_fields(text, args.impression)
    if args.reason is not None:
        decision["reason"] = args.reason.strip()
    return check_decision(decision)


def run_sign_off(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.case == LIST:
        if any((args.accept, args.edit, args.reject, args.reason, args.impression, args.reviewer)):
            raise CaseReviewError("`sign-off list` takes no decision; sign with `casereview sign-off CASE --run-id R ...`")
        return list_pending(settings, args.run_id)
    if args.run_id is None:
        raise CaseReviewError("--run-id is required to sign a case (see `casereview sign-off list`)")
    run_id = check_name(args.run_id, "--run-id")
    decision = decision_from_args(args, reviewer_name(args.reviewer, settings))
    from casereview.graphs.signing import case_to_sign, sign  # the graph: only once the decision is valid

    case, again = case_to_sign(settings, run_id, args.case)
    record = sign(settings, run_id, case, decision, args.out, again)
    print(signed_line(case, run_id, record))
    return 0


def list_pending(settings: Settings, run_id: str | None) -> int:
    from casereview.graphs.signing import NO_TRIAGE_REASON, pending_in_workdir

    cases = pending_in_workdir(settings, run_id)
    if not cases:
        print("no case is waiting for sign-off" + (f" in run {run_id}" if run_id else ""), file=sys.stderr)
        return 0
    # names from file systems and text from the graph: no control character reaches the terminal
    rows = [(p.run_id, printable(p.case), p.age(),
             printable("; ".join(p.payload.get("review_reasons") or [NO_TRIAGE_REASON]))) for p in cases]
    widths = [max(len(r[i]) for r in rows + [("RUN", "CASE", "AGE", "")]) for i in range(3)]
    print(f"{'RUN':<{widths[0]}}  {'CASE':<{widths[1]}}  {'AGE':<{widths[2]}}  REASONS")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    print(f"{len(rows)} case(s) waiting; sign one with `casereview sign-off CASE --run-id RUN --accept | "
          "--edit FILE | --reject --reason TEXT`", file=sys.stderr)
    return 0


# --- `casereview review --sign-off` ---------------------------------------------------------------

def add_review_options(parser: argparse.ArgumentParser) -> None:
    """``review``'s sign-off options."""
    parser.add_argument("--sign-off", nargs="?", const="flagged", choices=("flagged", "all"),
                        help="pause the flagged cases (or all) for a reviewer: in a terminal you are asked at once; "
                             "otherwise they wait, with preliminary records, for `casereview sign-off` "
                             "(default: graph.sign_off, off)")
    parser.add_argument("--reviewer", help="who signs (default: the settings' graph.reviewer, else your login name)")


def check_sign_off(settings: Settings, reviewer: str, interactive: bool) -> None:
    """Before any model loads: the reviewer's name is one the record takes, and cases that wait past
    this process have checkpoints on disk to wait in."""
    from casereview.graphs.signing import check_decision

    if settings.graph.sign_off == "off":
        return
    check_decision({"decision": "accept", "reviewer": reviewer})
    if settings.graph.checkpointer == "none":
        raise CaseReviewError("sign-off pauses cases in their checkpoints: set graph.checkpointer to sqlite (the default)")
    if not interactive and settings.graph.checkpointer != "sqlite":
        raise CaseReviewError(f"--sign-off without a terminal leaves cases waiting for `casereview sign-off`, which needs "
                              f"graph.checkpointer sqlite (it is {settings.graph.checkpointer})")


def sign_waiting(run: ReviewRun, refs: list[str], reviewer: str, interactive: bool,
                 ask: Callable[[str], str] = input,
                 show: Callable[[str], None] = print) -> tuple[dict[str, dict[str, Any]], int]:
    """After a review: in a terminal, ask for a decision on each of ``refs`` that waits in ``run`` and
    sign it. Returns the signed records by case and how many cases are left waiting."""
    from dataclasses import replace

    from casereview.cli.signoff_terminal import ask_decision
    from casereview.graphs.signing import check_decision, pending_cases, resume

    waiting = [p for p in pending_cases(run.checkpointer, run.run_id) if p.case in refs] if run.checkpointer else []
    signed: dict[str, dict[str, Any]] = {}
    if not interactive:
        return signed, len(waiting)
    for p in waiting:
        decision = ask_decision(p.payload, reviewer, edit_fields, ask=ask, show=show)
        if decision is None:
            continue
        decision = check_decision(decision)  # (one line if refused; the case keeps waiting)
        record = resume(run.graph, replace(run.context, reviewer=reviewer), p.case, decision)
        show(signed_line(p.case, run.run_id, record))
        signed[p.case] = record
    return signed, len(waiting) - len(signed)


def signed_line(case: str, run_id: str, record: dict[str, Any]) -> str:
    entry = record["sign_off"]
    return printable(f"{case} (run {run_id}): {record['status']}, {entry['decision']} by {entry['reviewer']} at {entry['at']}")
