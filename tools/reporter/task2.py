"""Task 2 report (``casereview report task2``): report generation with the configured reporter backend.

Samples are representative test cases (both classes, confident and uncertain, the
classifier's errors); the prompt variants are compared on a seeded random sample of the
validation split (prompt choice is made on validation data). With the ``template`` backend
(the default here) no vision-language model runs: the report says so, shows the template
baseline labelled as such, and names the command that regenerates it with MedGemma.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from casereview.data import Case, case_id
from casereview.config import Settings
from casereview.provenance import git_commit, utc_now
from casereview.tools.reporter.backends import get_backend
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.gather import EvidenceSources, require
from casereview.tools.reporter.generate import picked_cases
from casereview.tools.reporter.prompts import list_variants, render_prompt, template_sha256, template_source
from casereview.render import render
from casereview.tools.reporter.records import file_stem, save_view_image
from casereview.tools.reporter.reporting import ReportResult, generate_reports
from casereview.data import load_split

REPORT_NAME = "task2_report_generation.md"
GPU_COMMAND = (
    "HF_TOKEN=hf_... CASEREVIEW_REPORTER_BACKEND=medgemma casereview report task2 --data-root ../shared/data"
)


@dataclass
class Metrics:
    """Report impressions scored against ground truth and the classifier on one set of cases."""

    backend: str
    model_id: str
    variant: str
    n: int
    accuracy: float  # impression == truth; indeterminate and unparsed count as wrong
    sensitivity: float  # pneumonia impressions among pneumonia cases
    specificity: float  # normal impressions among normal cases
    pneumonia_rate: float
    indeterminate_rate: float
    unparsed_rate: float
    classifier_agreement: float
    hedges_per_report: float
    seconds_per_report: float


def score(results: list[ReportResult], truths: list[str], evidence: list[Evidence]) -> Metrics:
    imp = [r.parsed.impression for r in results]
    truth = np.array(truths)
    said = np.array([i or "none" for i in imp])

    def rate(mask: np.ndarray) -> float:
        return float(mask.mean()) if mask.size else float("nan")

    return Metrics(
        backend=results[0].backend,
        model_id=results[0].model_id,
        variant=results[0].variant,
        n=len(results),
        accuracy=rate(said == truth),
        sensitivity=rate(said[truth == "pneumonia"] == "pneumonia"),
        specificity=rate(said[truth == "normal"] == "normal"),
        pneumonia_rate=rate(said == "pneumonia"),
        indeterminate_rate=rate(said == "indeterminate"),
        unparsed_rate=rate(np.array([r.parsed.status != "ok" for r in results])),
        classifier_agreement=rate(said == np.array([ev.opinion.label for ev in evidence])),
        hedges_per_report=float(np.mean([len(r.parsed.hedging) for r in results])),
        seconds_per_report=float(np.mean([r.provenance["generate_s"] for r in results])),
    )


def variant_description(variant: str) -> str:
    """The one-line comment at the top of a variant's template."""
    m = re.match(r"\{#-?\s*(.*?)\s*-?#\}", template_source(f"{variant}.j2"), re.DOTALL)
    return " ".join(m.group(1).split()) if m else ""


def _val_sample(settings: Settings, n: int) -> list[Case]:
    data = load_split("val", settings.data.root)
    rng = np.random.default_rng(settings.reporter.seed)
    chosen = np.sort(rng.choice(len(data), size=min(n, len(data)), replace=False))
    return [Case(case_id("val", int(i)), data.images[i], int(data.labels[i]), "val", int(i)) for i in chosen]


def write_task2_report(settings: Settings, out_dir: Path, n_samples: int = 12, n_eval: int = 60) -> Path:
    """Write ``reports/task2_report_generation.md`` and its case images; returns the report's path.

    Builds the case index first if it is missing or stale (``casereview index build``).
    """
    from casereview.tools.case_index import build_index

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_index(settings)  # idempotent: keeps an up-to-date index, so one command regenerates the report
    sources = EvidenceSources.load(settings)
    require(sources, "classifier", "the task-2 report")
    require(sources, "index", "the task-2 report")
    template = get_backend(settings, "template")
    backend = get_backend(settings)
    vlm = backend.name != "template"
    variants = list_variants() if vlm else []
    default = settings.reporter.variant

    picked = picked_cases(settings, sources, n_samples, "test")
    cases = [c for c, _ in picked]
    evidence = sources.evidence(cases, settings)
    samples = {"template": generate_reports(template, evidence, default)}
    for v in variants:
        samples[v] = generate_reports(backend, evidence, v, progress=True)

    val_cases = _val_sample(settings, n_eval)
    val_evidence = sources.evidence(val_cases, settings)
    truths = [c.label_name for c in val_cases]
    rows = [score(generate_reports(template, val_evidence, default), truths, val_evidence)]
    for v in variants:
        rows.append(score(generate_reports(backend, val_evidence, v, progress=True), truths, val_evidence))

    images = {}
    for case in cases:
        name = f"task2_{file_stem(case.case_id)}.png"
        save_view_image(case.image, out_dir / name)
        images[case.case_id] = name
    rendered = {v: render_prompt(v, evidence[0]) for v in list_variants()}
    prompts = [
        {
            "name": v,
            "description": variant_description(v),
            "sha": template_sha256(v)[:12],
            "n_images": len(p.images),
            "chars": len(p.system) + len(p.text),
        }
        for v, p in rendered.items()
    ]
    path = out_dir / REPORT_NAME
    path.write_text(
        render(
            "task2_report_generation.md.j2",
            created=utc_now(),
            commit=git_commit(),
            backend=backend,
            backend_info=backend.describe(),
            vlm=vlm,
            machine={"gpu": torch.cuda.is_available(), "hf_token": bool(os.environ.get("HF_TOKEN"))},
            gpu_command=GPU_COMMAND,
            classifier_sha=sources.classifier.clf.sha256,
            index=sources.index.embedder_id,
            k=settings.index.k,
            default_variant=default,
            prompts=prompts,
            example=rendered[default],
            samples=[
                {"case": c, "why": why, "evidence": ev, "image": images[c.case_id],
                 "template": samples["template"][i], "vlm": {v: samples[v][i] for v in variants}}
                for i, ((c, why), ev) in enumerate(zip(picked, evidence, strict=True))
            ],
            variants=variants,
            rows=rows,
            n_eval=len(val_cases),
            val_pneumonia=sum(t == "pneumonia" for t in truths),
        )
    )
    return path
