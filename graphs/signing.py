"""Signing from outside a running review: the cases paused in ``sign_off`` in a workdir's checkpoints,
and resuming one of them with a reviewer's decision.

Paused cases are read from the checkpoints alone (no graph is compiled, no model loads), so that
``casereview sign-off list`` answers at once and keeps answering after the process that paused them
was killed: a pause is an ``__interrupt__`` write on the thread's latest checkpoint, and LangGraph
keeps pending writes on disk with the checkpoint they belong to. Signing resumes the thread with
``Command(resume=decision)`` through the same compiled graph as every front end; the nodes after the
pause record the decision and write the record, and none of them needs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.constants import INTERRUPT

from casereview.config import Settings
from casereview.errors import CaseReviewError
from casereview.records import record_stem

if TYPE_CHECKING:  # (the graph and the context import the capabilities: only signing needs them)
    from langgraph.graph.state import CompiledStateGraph

    from casereview.tools.context import RunContext


# what a front end shows as the reason of a case that waits only because every case does
NO_TRIAGE_REASON = "no triage reason (every case waits: graph.sign_off all)"


@dataclass(frozen=True)
class PendingCase:
    """One paused thread: its run and case (the thread id is ``<run id>/<case>``), since when, and what
    the paused node gave the reviewer (``payload``: the interrupt's value)."""

    run_id: str
    case: str
    paused_at: datetime
    payload: Any

    def age(self, now: datetime | None = None) -> str:
        """How long the case has waited, to the minute ("3 d 4 h", "2 h 5 min", "12 min")."""
        minutes = int(((now or datetime.now(timezone.utc)) - self.paused_at).total_seconds() // 60)
        days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
        if days:
            return f"{days} d {hours} h"
        return f"{hours} h {mins} min" if hours else f"{mins} min"


def _candidate_threads(saver: BaseCheckpointSaver) -> list[str]:
    """Thread ids that were ever paused: one query over the writes table of LangGraph's SQLite saver
    (a run's database also holds every finished case; restoring each of their checkpoints would cost
    a second per thousand cases), else every thread the saver lists."""
    connection = getattr(saver, "conn", None)
    if connection is not None:
        rows = connection.execute("SELECT DISTINCT thread_id FROM writes WHERE channel = ? AND checkpoint_ns = ''",
                                  (INTERRUPT,))
        return sorted(row[0] for row in rows)
    return sorted({c.config["configurable"]["thread_id"] for c in saver.list(None)})


def pending_cases(saver: BaseCheckpointSaver, run_id: str | None = None) -> list[PendingCase]:
    """The paused threads of ``saver`` (those of ``run_id`` only, when given), longest waiting first."""
    found = []
    for thread_id in _candidate_threads(saver):
        run, _, case = thread_id.partition("/")
        if not case or (run_id is not None and run != run_id):
            continue  # not a review run's thread (those are <run id>/<case>)
        latest = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        interrupts = [value for _, channel, value in (latest.pending_writes or []) if channel == INTERRUPT] if latest else []
        if not interrupts:
            continue  # signed since (or resumed past its pause)
        paused = datetime.fromisoformat(latest.checkpoint["ts"])
        found.append(PendingCase(run, case, paused, interrupts[0][0].value))
    return sorted(found, key=lambda p: p.paused_at)


class DecisionError(CaseReviewError):
    """A reviewer's decision that the ``sign_off`` node would refuse."""


def check_decision(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` validated as the ``sign_off`` node validates it (``SignOffDecision``), without its unset
    fields; a :class:`DecisionError` of one line otherwise. Front ends check before resuming, so that
    a typo is answered at once and the paused thread never sees it."""
    from pydantic import ValidationError

    from casereview.schemas import SignOffDecision

    try:
        return SignOffDecision.model_validate(value).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise DecisionError(f"decision refused: {where + ': ' if where else ''}"
                            f"{first['msg'].removeprefix('Value error, ')}") from None


def checkpoints_file(settings: Settings) -> Path:
    """Where review runs keep their checkpoints (every run of a workdir in one SQLite file)."""
    return settings.paths.workdir / "checkpoints.sqlite"


def reading_saver(path: Path) -> BaseCheckpointSaver:
    """The run checkpoints at ``path``, to read: LangGraph's SQLite saver restoring the state's records
    with the graph's own serializer (:data:`casereview.graphs.checkpoints.SERDE`; importing the graph
    module, with the nodes and what they import, would be most of ``sign-off list``'s time)."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    from casereview.graphs.checkpoints import SERDE

    saver = SqliteSaver(sqlite3.connect(str(path), check_same_thread=False), serde=SERDE)
    try:
        saver.setup()  # (its tables, should the file hold none yet)
    except sqlite3.DatabaseError as exc:
        raise CaseReviewError(f"cannot read the run checkpoints {path} ({exc})") from None
    return saver


def pending_in_workdir(settings: Settings, run_id: str | None = None) -> list[PendingCase]:
    """The paused cases of every run in the settings' workdir (of ``run_id`` only, when given)."""
    path = checkpoints_file(settings)
    return pending_cases(reading_saver(path), run_id) if path.is_file() else []


def case_to_sign(settings: Settings, run_id: str, case: str) -> tuple[str, bool]:
    """The case of run ``run_id`` that ``case`` names (as in the review, or another path to the same file)
    and whether it was signed before: a paused case, or a signed one (signing it again amends it).
    A :class:`CaseReviewError` saying what waits instead otherwise."""
    from casereview.graphs.graph import thread_config

    path = checkpoints_file(settings)
    saver = reading_saver(path) if path.is_file() else None
    waiting = pending_cases(saver, run_id) if saver is not None else []
    for p in waiting:
        if p.case == case or record_stem(p.case) == record_stem(case):
            return p.case, False
    latest = saver.get_tuple(thread_config(run_id, case)) if saver is not None else None
    record = latest.checkpoint["channel_values"].get("record") if latest is not None else None
    if record is not None and record.sign_off is not None:
        return case, True
    others = f"; waiting in that run: {', '.join(p.case for p in waiting[:5])}" if waiting else ""
    raise CaseReviewError(f"{case} is not waiting for sign-off in run {run_id} (not flagged, or not reviewed "
                          f"there){others}; see `casereview sign-off list`")


def resume(graph: CompiledStateGraph, context: RunContext, case: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Resume the paused thread of ``case`` in the context's run with ``decision`` (a ``SignOffDecision``'s
    fields); the signed record as JSON values. The graph validates the decision again: a refused one
    raises and leaves the case paused."""
    from langgraph.types import Command

    from casereview.graphs.graph import thread_config

    state = graph.invoke(Command(resume=decision), thread_config(context.run_id, case), context=context,
                         durability="sync")
    return state["record"].model_dump(mode="json")


def sign(settings: Settings, run_id: str, case: str, decision: dict[str, Any], out: Path | None = None,
         again: bool = False) -> dict[str, Any]:
    """:func:`resume` from a new process: the run's checkpoints, a context of values (no model loads;
    the nodes after the pause need none). ``again``: the case was signed before; it is made to wait
    once more first (its new status: amended, or entered-in-error). ``out``: the run's records folder,
    if not the default."""
    from casereview.graphs.graph import make_checkpointer, reopen_for_sign_off, thread_config, with_checkpointer
    from casereview.tools.context import RunContext

    graph = with_checkpointer(make_checkpointer("sqlite", checkpoints_file(settings)))
    context = RunContext(settings, run_id, decision["reviewer"], out)
    if again:
        config = thread_config(run_id, case)
        reopen_for_sign_off(graph, config)
        graph.invoke(None, config, context=context, durability="sync")  # to the pause in sign_off
    return resume(graph, context, case, decision)
