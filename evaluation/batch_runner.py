"""Running a batch: every (case, arm) through the review graph once, resumable from its records.

Layout of a batch folder ``DIR``::

    DIR/batch.json              the plan: cases, arms and each arm's settings fingerprint
    DIR/arms/<arm>/<case>.json  one case record per (case, arm), with its .md and .png

A record's JSON is written last and atomically (``casereview.records``): a pair whose JSON exists
is finished, anything else is run again. So a crash, ``kill -9`` or Ctrl-C loses only the pairs in
flight, and a rerun of the same command neither repeats nor duplicates a finished one.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from casereview.agents.evidence import PROBE_TRANSFORMS, batch_evidence
from casereview.config import Settings
from casereview.data import load_case, load_split
from casereview.errors import CaseReviewError, one_line
from casereview.evaluation.batch_arms import Arm, arm_settings
from casereview.graphs.review import ReviewRun
from casereview.provenance import sha256_text
from casereview.records import record_stem, write_atomic
from casereview.tools.context import build_context, fingerprint, fingerprint_fields

# A batch's arms run under ids made from its folder, which the user never typed.
BATCH_IN_USE = ("another `casereview batch` ({holder}) is using this batch folder; wait for it to finish, "
                "or give another --out")
PLAN_FILE = "batch.json"
ARMS_DIR = "arms"


class BatchError(CaseReviewError):
    """The batch cannot go on (or start); what finished is kept."""


@dataclass
class BatchPlan:
    """The cases and arms of one batch folder."""

    out: Path
    refs: list[str]
    arms: list[Arm]
    settings: Settings
    split: str | None = None  # the split the cases were drawn from (None: cases named one by one)
    note: str | None = None  # shown at the top of the report (e.g. "random model: its text is not a result")

    def fingerprints(self) -> dict[str, str]:
        """Each arm's settings fingerprint (the same one its records carry)."""
        return {a.name: fingerprint(fingerprint_fields(arm_settings(self.settings, a))) for a in self.arms}

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "note": self.note, "refs": self.refs, "arms": [a.to_dict() for a in self.arms],
                "fingerprints": self.fingerprints(), "neighbour_majority": self.settings.graph.neighbour_majority}

    def record_path(self, arm: Arm | str, ref: str) -> Path:
        return arm_dir(self.out, arm if isinstance(arm, str) else arm.name) / f"{record_stem(ref)}.json"

    def pending(self) -> list[tuple[Arm, str]]:
        """(arm, case) pairs without a finished record, case by case (all arms of a case together,
        so an interrupted batch still holds paired results)."""
        return [(a, r) for r in self.refs for a in self.arms if not self.record_path(a, r).is_file()]


def arm_dir(out: Path, arm: str) -> Path:
    return out / ARMS_DIR / arm


def split_refs(settings: Settings, split: str, sample: int | None, seed: int) -> list[str]:
    """Every case of ``split``, or a seeded random sample of ``sample`` of them (in split order)."""
    n = len(load_split(split, settings.data.root, settings.data.download))
    idx = np.arange(n) if sample is None or sample >= n else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    return [f"{split}:{i}" for i in idx]


def check_plan(plan: BatchPlan) -> bool:
    """Whether ``out`` already holds this batch (a rerun resumes it); a :class:`BatchError` if it holds
    another. Checked before anything loads, and nothing is written: a batch that fails its checks
    leaves no ``batch.json`` that would refuse the corrected command."""
    if not (plan.out / PLAN_FILE).is_file():
        return False
    old, mine = load_plan(plan.out), plan.to_dict()
    changed = [k for k in mine if old.get(k) != mine[k]]
    if changed:
        raise BatchError(
            f"{plan.out} holds a batch with other {', '.join(changed)} "
            f"({'settings of an arm' if 'fingerprints' in changed else 'a different plan'}); "
            "rerun with the same options to resume it, or give a new --out"
        )
    return True


def save_plan(plan: BatchPlan) -> None:
    """Write ``batch.json`` (once the batch's models have loaded), unless the folder holds this batch already."""
    if not check_plan(plan):
        plan.out.mkdir(parents=True, exist_ok=True)
        write_atomic(plan.out / PLAN_FILE, json.dumps(plan.to_dict(), indent=2) + "\n")


def load_plan(out: Path) -> dict[str, Any]:
    path = out / PLAN_FILE
    if not path.is_file():
        raise BatchError(f"{out} holds no batch ({PLAN_FILE} missing); run `casereview batch --out {out} ...` first")
    try:
        plan = json.loads(path.read_bytes())
        if not isinstance(plan, dict) or not all(isinstance(plan.get(k), list) for k in ("refs", "arms")):
            raise ValueError("not a batch plan: no lists of refs and arms")
        for arm in plan["arms"]:
            if not isinstance(arm, dict) or not isinstance(arm.get("name"), str):
                raise ValueError("an arm without a name")
    except (ValueError, RecursionError) as exc:
        raise BatchError(f"{path} is not a readable batch plan ({type(exc).__name__}: {one_line(str(exc))}); the "
                         f"records under {out / ARMS_DIR} are kept: move {PLAN_FILE} aside and rerun the batch "
                         "command that made this folder to write it again") from None
    return plan


@dataclass
class BatchOutcome:
    done: int = 0  # reviews run now
    skipped: int = 0  # finished in an earlier run
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (arm, case, error)
    seconds: float = 0.0


class BatchRunner:
    """Runs a plan's pending pairs: per arm, ``concurrency`` reviews at a time through LangGraph's ``batch``."""

    def __init__(self, plan: BatchPlan, concurrency: int = 1, max_errors: int = 20, progress: bool = True):
        self.plan, self.concurrency, self.max_errors, self.progress = plan, max(1, concurrency), max_errors, progress
        # Checkpoint threads are named by run id and case: the folder's id keeps two batches apart.
        self._folder_id = sha256_text(str(plan.out.resolve()))[:10]

    def run(self) -> BatchOutcome:
        check_plan(self.plan)
        pending = self.plan.pending()
        outcome = BatchOutcome(skipped=len(self.plan.refs) * len(self.plan.arms) - len(pending))
        if not pending:
            save_plan(self.plan)
            return outcome
        s = self.plan.settings
        s = s.model_copy(update={"graph": s.graph.model_copy(update={"sign_off": "off"})})  # no case waits for a reviewer
        base = build_context(s, "batch")  # the models load once, for every arm
        save_plan(self.plan)  # the checks passed and the models loaded: this folder now holds this batch
        # Every case of the plan, not just the pending ones: the batched forward pass then sees the same
        # batches in a resumed run as in one that ran through, so the numbers match to the last bit.
        cases = [load_case(ref, s.data.root, s.data.download) for ref in self.plan.refs]
        evidence = dict(zip(self.plan.refs, batch_evidence(base, cases)))
        runs = {}
        for arm in self.plan.arms:
            arm_s, run_id = arm_settings(s, arm), f"batch-{self._folder_id}-{arm.name}"
            # the arm's backend comes from its settings (get_backend: one instance per configuration)
            ctx = replace(base, settings=arm_s, run_id=run_id)
            runs[arm.name] = ReviewRun(arm_s, run_id, arm_dir(self.plan.out, arm.name), context=ctx, in_use=BATCH_IN_USE)
        self._tidy()
        start = time.perf_counter()
        bar = tqdm(total=len(pending), desc="batch", unit="review", disable=not self.progress, file=sys.stderr)
        try:
            # A few cases at a time, every arm of them before the next cases: an interrupted batch
            # still holds paired results.
            step = 4 * self.concurrency
            case_order = list(dict.fromkeys(ref for _, ref in pending))
            for at in range(0, len(case_order), step):
                chunk = set(case_order[at : at + step])
                for arm in self.plan.arms:
                    refs = [ref for a, ref in pending if a == arm and ref in chunk]
                    probe = PROBE_TRANSFORMS[arm.probe] if arm.probe else (lambda ev: ev)
                    inputs = {ref: probe(evidence[ref]) for ref in refs}
                    for ref, result in runs[arm.name].review_many(refs, inputs, self.concurrency):
                        self._account(outcome, arm, ref, result)
                        bar.update(1)
        except OSError as exc:  # a record could not be written (disk full, permissions): nothing more can be saved
            raise BatchError(
                f"cannot write the records under {self.plan.out}: {exc}. {outcome.done} reviews finished now and "
                "are kept (every saved record is complete); free space and rerun the same command"
            ) from exc
        finally:
            bar.close()
            outcome.seconds = time.perf_counter() - start
        return outcome

    def _tidy(self) -> None:
        """Delete the temporary files a killed writer left behind (never a record: records are renamed
        into place whole). Called once the arms' review runs exist: each holds its run id's lock."""
        for arm in self.plan.arms:
            folder = arm_dir(self.plan.out, arm.name)
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                tmp.unlink(missing_ok=True)

    def _account(self, outcome: BatchOutcome, arm: Arm, ref: str, result: dict[str, Any] | CaseReviewError) -> None:
        if not isinstance(result, CaseReviewError):
            outcome.done += 1
            return
        outcome.failed.append((arm.name, ref, f"{type(result).__name__}: {result}"))  # this pair failed; the others go on
        if len(outcome.failed) >= self.max_errors:
            raise BatchError(
                f"stopped after {len(outcome.failed)} failed reviews; the last: {ref} ({arm.name}): {result}. "
                f"{outcome.done} reviews finished now and are kept; fix the cause and rerun the same command"
            ) from result
