"""Reports for named or representative cases, written as per-case JSON and Markdown (``report-gen``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from casereview.data import Case, case_id, load_case
from casereview.config import Settings
from casereview.tools.reporter.backends import get_backend
from casereview.tools.reporter.evidence import ReporterError
from casereview.tools.reporter.gather import EvidenceSources, pick_representative, require
from casereview.tools.reporter.prompts import PromptError
from casereview.tools.reporter.records import CaseReport, write_case_report
from casereview.tools.reporter.reporting import generate_reports
from casereview.data import load_split
from casereview.training.predict import predict_proba


def picked_cases(settings: Settings, sources: EvidenceSources, n: int, split: str = "test") -> list[tuple[Case, str]]:
    """``n`` representative cases of ``split`` (see :func:`pick_representative`) with why each was picked."""
    require(sources, "classifier", "--pick (it selects by the classifier's confidence and errors)")
    clf = sources.classifier.clf
    data = load_split(split, settings.data.root)
    chosen = pick_representative(data.labels, predict_proba(clf, data.images), clf.threshold, n)
    return [
        (Case(case_id(split, i), data.images[i], int(data.labels[i]), split, i), why) for i, why in chosen
    ]


def report_cases(
    settings: Settings,
    out_dir: Path,
    *,
    refs: Sequence[str] | None = None,
    pick: int | None = None,
    split: str = "test",
    sources: EvidenceSources | None = None,
) -> list[CaseReport]:
    """Generate and write reports for ``refs`` (case refs or image files) or ``pick`` representative cases.

    Uses ``settings.reporter`` for the backend and variant, the classifier and the case index
    where they load; a variant whose evidence is missing fails with the reason.
    """
    if (refs is None) == (pick is None):
        raise ReporterError("give either case refs or a number of cases to pick")
    sources = sources or EvidenceSources.load(settings)
    if pick is not None:
        chosen = picked_cases(settings, sources, pick, split)
    else:
        chosen = [(load_case(ref, settings.data.root), None) for ref in refs]
    if not chosen:
        raise ReporterError("no cases to report on")
    cases = [c for c, _ in chosen]
    evidence = sources.evidence(cases, settings)
    variant = settings.reporter.variant
    try:
        results = generate_reports(get_backend(settings), evidence, variant, progress=True)
    except PromptError as exc:
        raise PromptError(f"{exc}. {sources.explain()}" if sources.missing else str(exc)) from exc
    records = []
    for (case, why), ev, result in zip(chosen, evidence, results, strict=True):
        record = CaseReport(
            case_id=case.case_id,
            ground_truth=case.label_name,
            pick_reason=why,
            classifier=ev.opinion,
            neighbours=list(ev.neighbours) if ev.neighbours is not None else None,
            image_file="",
            report=result,
        )
        records.append(write_case_report(record, case.image, Path(out_dir)))
    return records
