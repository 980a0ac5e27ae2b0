"""Signing a paused case in a terminal: the evidence and the draft, then accept, edit in ``$EDITOR``, or
reject with a reason. The answer is a resume value for the ``sign_off`` interrupt (``SignOffDecision``'s
fields), or None when the reviewer leaves the case pending.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from casereview.cli.present import gate_text, neighbours_text, opinion_text, plain, wrap
from casereview.errors import CaseReviewError, printable
from casereview.graphs.signing import NO_TRIAGE_REASON
from casereview.render import fence

KEYS = "[a]ccept, [e]dit in $EDITOR, [r]eject, [l]eave pending"


def case_view(payload: dict[str, Any]) -> str:
    """What a reviewer decides from: the case, why it was flagged, the evidence and the model's draft
    (fenced: model text is shown as written, never interpreted)."""
    p = plain(payload)
    lines = [printable(f"=== sign-off: {p['case_id']} (run {p['run_id']}, status {p['status']}) ===")]
    if p.get("signed_before"):
        s = p["signed_before"]
        lines.append(f"  signed before: {s['decision']} by {s['reviewer']} at {s['at']} (signing again amends it)")
    reasons = p.get("review_reasons") or [NO_TRIAGE_REASON]
    lines += ["why it needs you:"] + [wrap(printable(r), indent=4, first="  - ") for r in reasons]
    if p.get("input_check") and gate_text(p["input_check"]):
        lines.append(wrap(gate_text(p["input_check"]), indent=4, first="  input:      "))
    if p.get("classifier"):
        lines.append("  classifier: " + opinion_text(p["classifier"]))
    lines.append("  neighbours: " + neighbours_text(p.get("neighbours") or []))
    report = p.get("draft")
    if report:
        lines += [f"  draft impression: {report.get('impression') or 'none (unreadable)'} "
                  f"({report.get('backend')}, not signed)", "draft report:", fence(wrap(_lines(report["raw"])))]
    else:
        lines.append("  no draft report (nothing for the model to judge)")
    return "\n".join(lines)


def _lines(text: str) -> str:
    """Model text for a terminal: its lines kept, every other control character escaped (no escape
    sequence a model wrote reaches the terminal)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def editor_command() -> list[str]:
    """``$VISUAL``, else ``$EDITOR``, else vi (split like a shell would: ``EDITOR="code --wait"`` works)."""
    return shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")


def edit_text(draft: str) -> str:
    """``draft`` opened in the reviewer's editor; the file's text when the editor exits."""
    with tempfile.TemporaryDirectory(prefix="casereview-sign-off-") as folder:
        path = Path(folder) / "report.txt"
        path.write_text(draft, encoding="utf-8")
        try:
            done = subprocess.run([*editor_command(), str(path)])
        except OSError as exc:
            raise CaseReviewError(f"cannot start the editor {editor_command()[0]!r} ({exc.strerror}); "
                                  "set $EDITOR, or sign with `casereview sign-off CASE --edit FILE`") from None
        if done.returncode != 0:
            raise CaseReviewError(f"the editor exited with status {done.returncode}; nothing was signed")
        return path.read_text(encoding="utf-8")


def ask_decision(payload: dict[str, Any], reviewer: str, read_edit: Callable[[str], dict[str, Any]],
                 ask: Callable[[str], str] = input, show: Callable[[str], None] = print,
                 edit: Callable[[str], str] = edit_text) -> dict[str, Any] | None:
    """Show the case, then ask until the reviewer decides. ``read_edit(text)`` turns the edited text
    into the edit's fields (impression and text); a text it refuses (:class:`CaseReviewError`) is
    explained and asked again."""
    show(case_view(payload))
    draft = (plain(payload).get("draft") or {}).get("raw", "")
    while True:
        answer = ask(f"{KEYS}: ").strip().lower()
        if answer in ("a", "accept"):
            return {"decision": "accept", "reviewer": reviewer}
        if answer in ("e", "edit"):
            try:
                return {"decision": "edit", "reviewer": reviewer} | read_edit(edit(draft))
            except CaseReviewError as exc:
                show(f"not signed: {exc}")
                continue
        if answer in ("r", "reject"):
            reason = ask("reason (one line; empty to go back): ").strip()
            if reason:
                return {"decision": "reject", "reviewer": reviewer, "reason": reason}
            continue
        if answer in ("l", "leave", "q"):
            return None
        show(f"keys: {KEYS}")
