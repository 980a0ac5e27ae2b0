"""Reading a batch folder's case records back as one row per (arm, case), the reference arms
included: they are derived from each case's classifier opinion and neighbours, at no model cost."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from casereview.agents.gate import review_reasons
from casereview.agents.verify import neighbour_vote, verify_report
from casereview.errors import one_line
from casereview.evaluation.batch_arms import REFERENCE_ARMS
from casereview.evaluation.batch_runner import ARMS_DIR, arm_dir, load_plan
from casereview.records import record_stem, write_atomic
from casereview.schemas import CaseReview, ClassifierOpinion, ClassifierResult, InputCheck, Neighbour
from casereview.tools.reporter.backends import TemplateBackend
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.parser import parse_report

BLANK = np.zeros((28, 28), np.uint8)  # TemplateBackend.write reads the opinion and the neighbours only
FAILED_FILE = "failed.json"  # the reviews that failed in the latest run, with their reasons
CORRUPT_SUFFIX = ".corrupt"


def set_aside_corrupt(out: Path) -> list[tuple[Path, str]]:
    """Move every record JSON under ``out/arms/`` that does not parse (a truncated file, from a full disk
    or a copy cut short) or is not a case record (fields missing or of the wrong type) to
    ``<name>.json.corrupt``, so that its pair counts as pending and is redone; returns each record's
    path and why it was moved. Records are renamed into place whole, so only damage from outside gets here."""
    moved = []
    for path in sorted((out / ARMS_DIR).glob("*/*.json")):
        try:
            CaseReview.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(x) for x in error["loc"])
            why = f"JSONDecodeError: {error['msg']}" if error["type"] == "json_invalid" else f"{where}: {error['msg']}"
            path.replace(path.with_name(path.name + CORRUPT_SUFFIX))
            moved.append((path, one_line(why, 160).strip("'\"")))
    return moved


def save_failures(out: Path, failed: list[tuple[str, str, str]]) -> None:
    """Write the (arm, case, reason) of the reviews that failed in this run to ``FAILED_FILE``."""
    write_atomic(out / FAILED_FILE, json.dumps([{"arm": a, "ref": r, "error": e} for a, r, e in failed], indent=1) + "\n")


NO_FAILURES = {"n": 0, "not_run": 0, "by_arm": {}, "by_reason": []}  # what failure_summary says of a clean batch


def failure_summary(out: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """The reviews without a record, and why: those that failed in the latest run counted by reason (the
    case's own name taken out, so that one cause is one line) and per arm with the first reason; the rest
    were not run (a run stopped early)."""
    path = out / FAILED_FILE
    failed = json.loads(path.read_text()) if path.is_file() else []
    failed = [f for f in failed if not (arm_dir(out, f["arm"]) / f"{record_stem(f['ref'])}.json").is_file()]
    missing = sum(not (arm_dir(out, a["name"]) / f"{record_stem(r)}.json").is_file() for a in plan["arms"] for r in plan["refs"])
    by_arm: dict[str, dict[str, Any]] = {}
    for f in failed:
        by_arm.setdefault(f["arm"], {"n": 0, "first": f"{f['ref']}: {f['error']}"})["n"] += 1
    reasons = Counter(f["error"].replace(f["ref"], "<case>") for f in failed)
    return {"n": len(failed), "not_run": missing - len(failed), "by_arm": by_arm,
            "by_reason": [{"reason": k, "n": n} for k, n in reasons.most_common()]}


@dataclass(frozen=True)
class Row:
    """What the metrics need of one case in one arm."""

    ref: str
    truth: str | None
    impression: str | None  # None: unparseable, or no diagnosis (blank image)
    first_impression: str | None  # of the first attempt (differs after a retry that changed it)
    verdict: str | None
    attempts: int
    needs_review: bool
    classifier_label: str | None
    classifier_uncertain: bool  # inside the conformal uncertainty band
    margin: float  # |p - threshold| of the classifier: small is risky
    vote: str | None  # the neighbours' majority label (None: no clear majority)
    generate_s: float | None
    graph_s: float | None
    chars: int | None  # length of the raw report
    tokens: int | None = None  # tokens generated for the report, where the backend counts them
    read_tier: int | None = None  # 1: contract line, 2: the report's language, None: unread or no report
    has_report: bool = False


def read_records(out: Path, arm: str, refs: list[str]) -> dict[str, dict[str, Any]]:
    """The finished records of ``arm`` for ``refs`` (cases without a record are absent)."""
    paths = {ref: arm_dir(out, arm) / f"{record_stem(ref)}.json" for ref in refs}
    return {ref: json.loads(path.read_text()) for ref, path in paths.items() if path.is_file()}


def _vote(record: dict[str, Any], majority: float) -> str | None:
    return neighbour_vote([n["label"] for n in record["neighbours"]], majority)[0]


def model_row(ref: str, r: dict[str, Any], majority: float) -> Row:
    clf, rep, log = r["classifier"], r["report"], r["attempt_log"]
    return Row(
        ref=ref, truth=r["ground_truth"], impression=rep["impression"] if rep else None,
        first_impression=log[0]["impression"] if log else None,
        verdict=r["verification"]["verdict"] if r["verification"] else None, attempts=r["attempts"],
        needs_review=r["needs_review"], classifier_label=clf["label"] if clf else None,
        classifier_uncertain=bool(clf and clf["uncertain"]), margin=abs(clf["prob_pneumonia"] - clf["threshold"]) if clf else 0.0, vote=_vote(r, majority),
        generate_s=r["provenance"]["reporter"].get("generate_s"), graph_s=r["provenance"].get("graph_total_s"),
        chars=len(rep["raw"]) if rep else None, tokens=r["provenance"]["reporter"].get("completion_tokens"),
        # records from before tier 2 were read by the contract line alone
        read_tier=rep.get("read_by_tier", 1 if rep["impression"] else None) if rep else None, has_report=rep is not None,
    )


def template_impression(record: dict[str, Any], follows: str) -> str | None:
    """The template backend's impression on this record's evidence, following ``follows``."""
    clf = record["classifier"]
    if clf is None:
        return None
    opinion = ClassifierOpinion(**{k: v for k, v in clf.items() if k in ClassifierOpinion.model_fields})
    evidence = Evidence(record["case_id"], BLANK, opinion, tuple(Neighbour(**n) for n in record["neighbours"]))
    return parse_report(TemplateBackend.write(evidence, follows)).impression


def review_flag(record: dict[str, Any], impression: str | None, majority: float) -> bool:
    """The needs-review flag the graph's finalize would raise on this record's evidence had its report said
    ``impression``: the gate's reasons, the classifier's uncertainty, classifier against neighbours, and the
    verification of that impression. A reference arm thus flags exactly where a model arm with the same
    impression does."""
    state = {"input_check": InputCheck(**record["input_check"]),
             "neighbours": [Neighbour(**n) for n in record["neighbours"]]}
    if record["classifier"] is not None:
        state["classifier"] = ClassifierResult(**record["classifier"])
        state["verification"] = verify_report(impression, state["classifier"], state["neighbours"], majority)
    return bool(review_reasons(state))


def reference_row(ref: str, r: dict[str, Any], arm: str, majority: float) -> Row:
    """A reference arm's row: its impression from the record's evidence; no report, no retry."""
    clf = r["classifier"]
    if arm == "classifier-alone":
        said = clf["label"] if clf else None
    elif arm == "neighbour-vote":
        said = (_vote(r, majority) or "indeterminate") if clf else None
    else:
        said = template_impression(r, arm.removeprefix("template-follows-"))
    return Row(ref=ref, truth=r["ground_truth"], impression=said, first_impression=said, verdict=None, attempts=0,
               needs_review=review_flag(r, said, majority),
               classifier_label=clf["label"] if clf else None, classifier_uncertain=bool(clf and clf["uncertain"]),
               margin=abs(clf["prob_pneumonia"] - clf["threshold"]) if clf else 0.0, vote=_vote(r, majority),
               generate_s=None, graph_s=None, chars=None)


@dataclass
class BatchRows:
    """Rows of every arm run and of the reference arms, in the plan's case order."""

    plan: dict[str, Any]
    arms: dict[str, list[Row]]  # model (and probe) arms, then the reference arms
    records: dict[str, dict[str, dict[str, Any]]]  # arm -> ref -> record (arms that ran)

    @property
    def model_arms(self) -> list[str]:
        return [a["name"] for a in self.plan["arms"] if not a["probe"]]


def load_rows(out: Path) -> BatchRows:
    """Every finished record of the batch in ``out`` as rows; reference arms from the first model arm's
    records (every arm sees the same opinion and neighbours: only the prompt and backend differ), and
    reference rows of each probe arm from its own (reversed) evidence."""
    plan = load_plan(out)
    refs, majority = plan["refs"], plan["neighbour_majority"]
    records = {a["name"]: read_records(out, a["name"], refs) for a in plan["arms"]}
    arms = {name: [model_row(ref, r, majority) for ref, r in recs.items()] for name, recs in records.items()}
    first = plan["arms"][0]["name"]
    for ref_arm in REFERENCE_ARMS:
        arms[ref_arm] = [reference_row(ref, r, ref_arm, majority) for ref, r in records[first].items()]
    for a in plan["arms"]:
        if a["probe"] and f"{REFERENCE_ARMS[0]}.{a['probe']}" not in arms:  # the same reversed evidence in every variant
            for ref_arm in REFERENCE_ARMS:
                arms[f"{ref_arm}.{a['probe']}"] = [reference_row(ref, r, ref_arm, majority)
                                                   for ref, r in records[a["name"]].items()]
    return BatchRows(plan, arms, records)
