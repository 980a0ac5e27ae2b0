"""Per-case report records (JSON) and their Markdown rendering from ``templates/report_case.md.j2``.

Model output is untrusted: the template shows it only through ``fence`` and ``md_inline``
(see :mod:`casereview.render`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel

from casereview.render import render
from casereview.schemas import ClassifierOpinion, Label, Neighbour
from casereview.tools.reporter.reporting import ReportResult

VIEW_SCALE = 8  # a 28x28 image is saved at 224x224 (nearest neighbour: the pixels as the models get them)


class CaseReport(BaseModel):
    """Everything shown for one case: ground truth, the evidence given, and the report."""

    case_id: str
    ground_truth: Label | None
    pick_reason: str | None = None
    classifier: ClassifierOpinion | None
    neighbours: list[Neighbour] | None
    image_file: str  # relative to the record's folder
    report: ReportResult


def save_view_image(image: np.ndarray, path: Path) -> Path:
    """Save a 28x28 case image enlarged for viewing."""
    h, w = image.shape
    Image.fromarray(image).resize((w * VIEW_SCALE, h * VIEW_SCALE), Image.Resampling.NEAREST).save(path)
    return path


def file_stem(case_id: str) -> str:
    """A file name for a case id (``test:42`` -> ``test_42``; paths -> their safe characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id).strip("_.") or "case"


def record_stem(record: CaseReport) -> str:
    """File stem of a record: case, variant and backend (one case may be reported several ways)."""
    return f"{file_stem(record.case_id)}_{record.report.variant}_{record.report.backend}"


def write_case_report(record: CaseReport, image: np.ndarray, out_dir: Path) -> CaseReport:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir``; returns the record as saved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = record_stem(record)
    save_view_image(image, out_dir / f"{stem}.png")
    record = record.model_copy(update={"image_file": f"{stem}.png"})
    (out_dir / f"{stem}.json").write_text(record.model_dump_json(indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(render("report_case.md.j2", r=record))
    return record
