"""Running the review graph on cases: checkpointed threads, resumption, saved records, stepping."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from casereview.agents.clock import GraphClock
from casereview.agents.evidence import batch_evidence
from casereview.agents.nodes import rendered_prompt, report_update
from casereview.config import Settings
from casereview.data import check_refs, expand_folders, load_case, parse_ref
from casereview.errors import CaseReviewError
from casereview.graphs.graph import NODE_ORDER, make_checkpointer, thread_config, with_checkpointer
from casereview.locks import LockBusyError, hold_lock
from casereview.provenance import sha256_text, utc_now
from casereview.records import is_saved, record_stem, save_case_record
from casereview.schemas import CaseEvidence
from casereview.tools.context import RunContext, build_context, fingerprint, fingerprint_fields
from casereview.tools.reporter.reporting import generate

class SettingsChangedError(CaseReviewError):
    """A case of this run was started with other settings; resuming it would mix two configurations."""

    resumable = False


class RunInUseError(CaseReviewError):
    """Another process is working on this run id."""


RUN_IN_USE = "run {run_id} is in use by {holder}; wait for it to finish, or start a new run (omit --run-id)"


def lock_run(workdir: Path, run_id: str, in_use: str = RUN_IN_USE) -> Path:
    """Hold the run id's lock for the rest of this process, or raise :class:`RunInUseError` with the message
    ``in_use`` (``{run_id}`` and ``{holder}`` filled in: the caller knows what the user can do instead);
    see :func:`casereview.locks.hold_lock`."""
    path = Path(workdir) / "locks" / f"{sha256_text(run_id)[:16]}.lock"
    try:
        return hold_lock(path, in_use.replace("{run_id}", run_id))
    except LockBusyError as exc:
        raise RunInUseError(str(exc)) from None


def expand_case_refs(items: list[str], settings: Settings) -> list[str]:
    """Case references from CLI arguments; folders expand to their images. Everything is checked
    (existence, range, readable header) before any model loads, so a bad input never leaves a
    half-finished run behind."""
    refs = check_refs(expand_folders(items), settings.data.root, settings.data.download)
    unique: dict[str, str] = {}  # a case named twice (also as ./a.png and a.png) is reviewed once
    for ref in refs:
        unique.setdefault(record_stem(ref), ref)
    return list(unique.values())


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


class InputRefusedError(CaseReviewError):
    """The graph refused the case's input (its run ended with an ``error``)."""


class ReviewRun:
    """One run (run id) of the review graph over any number of cases, checkpointed per case; the graph
    writes each case's record under ``out``."""

    def __init__(self, settings: Settings, run_id: str, out: Path, context: RunContext | None = None,
                 in_use: str = RUN_IN_USE):
        self.settings, self.run_id, self.out = settings, run_id, out
        lock_run(settings.paths.workdir, run_id, in_use)  # before any model loads: a second process exits at once
        # before the models load: a disk too full for the checkpoints fails at once
        self.checkpointer = make_checkpointer(settings.graph.checkpointer, settings.paths.workdir / "checkpoints.sqlite")
        self.context = replace(context or build_context(settings, run_id), run_id=run_id, out=out)
        self.graph = with_checkpointer(self.checkpointer)
        self.evidence: dict[str, CaseEvidence] = {}  # evidence computed ahead, per case ref (graph input, in process)

    def prefetch(self, refs: list[str]) -> None:
        """Classify the dataset cases among ``refs`` and retrieve their neighbours in one batched pass
        ahead of their reviews, as graph input (each review's nodes then skip that work). Image files
        are left to the graph (decoded once, there)."""
        dataset = [ref for ref in refs if parse_ref(ref)]
        if len(dataset) > 1:
            cases = [load_case(ref, self.settings.data.root, self.settings.data.download) for ref in dataset]
            self.evidence = dict(zip(dataset, batch_evidence(self.context, cases)))

    def _check_settings(self, values: dict[str, Any], ref: str) -> None:
        if "settings" not in values:
            return
        now = fingerprint_fields(self.context.settings)
        if values.get("fingerprint") != fingerprint(now):
            fields = changed_fields(values["settings"], now)
            raise SettingsChangedError(
                f"{ref} was started in run {self.run_id} with other settings ({', '.join(fields)} differ); "
                "rerun with the run's original settings, or start a new run (omit --run-id)"
            )

    def review(self, ref: str, precomputed: CaseEvidence | None = None) -> dict[str, Any]:
        """Review one case (see :meth:`review_many`); a failure raises."""
        [(_, outcome)] = self.review_many([ref], {ref: precomputed} if precomputed else None)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def review_many(self, refs: list[str], inputs: dict[str, CaseEvidence] | None = None,
                    concurrency: int = 1) -> Iterator[tuple[str, dict[str, Any] | CaseReviewError]]:
        """Review cases, ``concurrency`` at a time (LangGraph's ``batch``), yielding each case's saved
        record, or its :class:`CaseReviewError`, as it finishes (a case waiting for a reviewer: its
        ``preliminary`` record). ``inputs[ref]``: evidence given as graph input (default: what
        :meth:`prefetch` computed). A case already finished (or waiting) in this run is returned as
        saved (and its files written if they are missing); one interrupted mid-way resumes from its
        last checkpoint."""
        inputs = self.evidence if inputs is None else inputs
        todo: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = []
        for ref in refs:
            cfg = self._config(ref, concurrency)
            snap = self.graph.get_state(cfg) if self.checkpointer is not None else None
            values = snap.values if snap is not None else {}
            try:
                self._check_settings(values, ref)
            except CaseReviewError as exc:
                yield ref, exc
                continue
            if values.get("record") and (not snap.next or snap.interrupts):
                record = values["record"].model_dump()
                self.ensure_saved(record, values["image"])
                yield ref, record
                continue
            given = {"precomputed": inputs[ref]} if ref in inputs else {}
            todo.append((ref, None if values else {"case_ref": ref} | given, cfg))
        if not todo:
            return
        # Checkpoint when the graph exits (finished, failed or interrupted), not after every node:
        # a failure still resumes at the failed node; a kill -9 loses only the cases in flight,
        # which rerun from their start. Per-node writes were a third of a review's time.
        backend = self.context.backend
        if backend.name == "medgemma" and backend.cfg.batch_size > 1 and len(todo) > 1:
            done = self._in_rounds([i for _, i, _ in todo], [c for _, _, c in todo])
        else:
            durability = {"durability": "exit"} if self.checkpointer is not None else {}
            done = self.graph.batch_as_completed([i for _, i, _ in todo], [c for _, _, c in todo],
                                                 context=self.context, return_exceptions=True, **durability)
        for i, state in done:
            ref, _, cfg = todo[i]
            if isinstance(state, CaseReviewError):
                # Keep the failure in the case's thread: a rerun with the same run id resumes at the
                # node that failed (its predecessors' results are checkpointed) and the record lists it.
                if self.checkpointer is not None and self.graph.get_state(cfg).next:
                    self.graph.update_state(cfg, {"errors": [f"{utc_now()} {type(state).__name__}: {state}"]})
                yield ref, state
                continue
            if isinstance(state, BaseException):
                raise state
            if "error" in state:
                yield ref, InputRefusedError(state["error"])
                continue
            yield ref, state["record"].model_dump()

    def _in_rounds(self, inputs: list[dict[str, Any] | None], configs: list[dict[str, Any]]) -> Iterator[tuple[int, Any]]:
        """A local model generates the waiting prompts together: every case runs to the report node and
        pauses there; the prompts are generated in batches of ``reporter.batch_size`` and written into
        each case's state as the report node's update; the cases resume, in rounds (a retry is a
        round more) until each is final. Yields (position, final state or error)."""
        if self.checkpointer is None:  # pausing needs one; this run's threads need not outlive it
            self.checkpointer = make_checkpointer("memory")
            self.graph = with_checkpointer(self.checkpointer)
        active = list(range(len(inputs)))
        while active:
            outs = self.graph.batch([inputs[i] for i in active], [configs[i] for i in active], context=self.context,
                                    interrupt_before=["report"], durability="exit", return_exceptions=True)
            waiting = []
            for i, out in zip(active, outs):
                snap = None if isinstance(out, BaseException) else self.graph.get_state(configs[i])
                if snap is not None and snap.next == ("report",):
                    waiting.append((i, snap.values))
                else:
                    yield i, out
            try:
                results = generate(self.context.backend, [rendered_prompt(v, self.context) for _, v in waiting])
            except CaseReviewError as exc:
                for i, _ in waiting:
                    yield i, exc
                return
            for (i, values), result in zip(waiting, results):
                update = report_update(values, result) | {"timings": {"report": result.provenance["generate_s"]}}
                self.graph.update_state(configs[i], update, as_node="report")
                inputs[i] = None
            active = [i for i, _ in waiting]

    def _config(self, ref: str, concurrency: int) -> dict[str, Any]:
        return thread_config(self.run_id, ref) | {"callbacks": [GraphClock()], "max_concurrency": concurrency}

    def step_through(self, ref: str, ask: Callable[[str, dict[str, Any]], bool],
                     show: Callable[[str, dict[str, Any]], None]) -> dict[str, Any] | None:
        """Run one case pausing before every node: ``show(node, update)`` gets what each node added,
        ``ask(next_node, values)`` is asked before the next node (False stops: returns None; the case
        stays resumable by run id)."""
        if self.checkpointer is None:
            self.checkpointer = make_checkpointer("memory")
            self.graph = with_checkpointer(self.checkpointer)
        cfg = thread_config(self.run_id, ref)
        values = self.graph.get_state(cfg).values
        self._check_settings(values, ref)
        inp: dict[str, Any] | None = None if values else {"case_ref": ref}
        while True:
            for chunk in self.graph.stream(inp, cfg, context=self.context, stream_mode="updates",
                                           interrupt_before=list(NODE_ORDER), durability="sync"):
                for node, update in chunk.items():
                    if node != "__interrupt__" and update:
                        show(node, update)
            inp = None
            snap = self.graph.get_state(cfg)
            if "error" in snap.values:
                raise InputRefusedError(snap.values["error"])
            if not snap.next or snap.interrupts:  # done, or waiting for a reviewer
                break
            if not ask(snap.next[0], snap.values):
                return None
        return snap.values["record"].model_dump()

    def save(self, record: dict[str, Any], image: Any) -> Path:
        return save_case_record(record, np.asarray(image, dtype=np.uint8), self.out)

    def ensure_saved(self, record: dict[str, Any], image: Any) -> None:
        """Write a finished case's files if they are not on disk as this run's record (its graph ended, its
        save did not); another run's record in their place is refused by the save, never replaced."""
        if not is_saved(record, self.out):
            self.save(record, image)
