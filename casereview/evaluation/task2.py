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
from typing import Any

import numpy as np
import torch

from casereview.config import Settings
from casereview.data import load_split
from casereview.evaluation.picking import pick_cases
from casereview.graphs.review import ReviewRun
from casereview.provenance import git_commit, utc_now
from casereview.records import view_png
from casereview.render import render
from casereview.schemas import PromptRecord
from casereview.tools.case_index import build_index
from casereview.tools.context import RunContext
from casereview.tools.reporter.prompts import list_variants, template_sha256, template_source

REPORT_NAME = "task2_report_generation.md"
GPU_COMMAND = (
    "HF_TOKEN=hf_... CASEREVIEW_REPORTER_BACKEND=medgemma casereview report task2"
)


@dataclass
class Metrics:
    """Report impressions scored against ground truth and the classifier on one set of case records."""

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


def score(records: list[dict[str, Any]]) -> Metrics:
    reports = [r["report"] for r in records]
    truth = np.array([r["ground_truth"] for r in records])
    said = np.array([rep["impression"] or "none" for rep in reports])

    def rate(mask: np.ndarray) -> float:
        return float(mask.mean()) if mask.size else float("nan")

    return Metrics(
        backend=reports[0]["backend"],
        model_id=reports[0]["model_id"],
        variant=reports[0]["variant"],
        n=len(records),
        accuracy=rate(said == truth),
        sensitivity=rate(said[truth == "pneumonia"] == "pneumonia"),
        specificity=rate(said[truth == "normal"] == "normal"),
        pneumonia_rate=rate(said == "pneumonia"),
        indeterminate_rate=rate(said == "indeterminate"),
        unparsed_rate=rate(np.array([rep["status"] != "ok" for rep in reports])),
        classifier_agreement=rate(said == np.array([r["classifier"]["label"] for r in records])),
        hedges_per_report=float(np.mean([len(rep["hedging"]) for rep in reports])),
        seconds_per_report=float(np.mean([r["provenance"]["reporter"]["generate_s"] for r in records])),
    )


def variant_description(variant: str) -> str:
    """The one-line comment at the top of a variant's template."""
    m = re.match(r"\{#-?\s*(.*?)\s*-?#\}", template_source(f"{variant}.j2"), re.DOTALL)
    return " ".join(m.group(1).split()) if m else ""


def _arm(settings: Settings, backend: str, variant: str) -> Settings:
    """Settings of one arm: one backend and variant, one attempt (each variant measured on its own)."""
    return settings.model_copy(update={
        "reporter": settings.reporter.model_copy(update={"backend": backend, "variant": variant}),
        "graph": settings.graph.model_copy(update={"max_attempts": 1, "checkpointer": "none"}),
    })


def _review(settings: Settings, refs: list[str], name: str, ctx: RunContext) -> list[dict[str, Any]]:
    """Records of ``refs`` through the review graph (shared resources of ``ctx``; backend per arm)."""
    run = ReviewRun(settings, name, Path(settings.paths.workdir) / "task2" / name, context=ctx.sharing(settings, name))
    return [run.review(ref) for ref in refs]


def write_task2_report(settings: Settings, out_dir: Path, n_samples: int = 12, n_eval: int = 60) -> Path:
    """Write ``reports/task2_report_generation.md`` and its case images; returns the report's path.

    Every case goes through the review graph. Builds the case index first if it is missing or stale.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_index(settings)  # idempotent: keeps an up-to-date index, so one command regenerates the report
    ctx = RunContext(settings, "task2")
    vlm = settings.reporter.backend != "template"
    variants = list_variants() if vlm else []
    default = settings.reporter.variant

    picked = pick_cases(ctx, "test", n_samples)
    refs = [ref for ref, _ in picked]
    samples = {"template": _review(_arm(settings, "template", default), refs, "samples-template", ctx)}
    for v in variants:
        samples[v] = _review(_arm(settings, settings.reporter.backend, v), refs, f"samples-{v}", ctx)

    val = load_split("val", settings.data.root, settings.data.download)
    rng = np.random.default_rng(settings.reporter.seed)
    val_refs = [f"val:{i}" for i in np.sort(rng.choice(len(val), size=min(n_eval, len(val)), replace=False))]
    val_template = _review(_arm(settings, "template", default), val_refs, "val-template", ctx)
    rows = [score(val_template)]
    for v in variants:
        rows.append(score(_review(_arm(settings, settings.reporter.backend, v), val_refs, f"val-{v}", ctx)))
    truths = [r["ground_truth"] for r in val_template]

    images = {}
    test = load_split("test", settings.data.root, settings.data.download)
    for ref in refs:
        name = f"task2_{ref.replace(':', '_')}.png"
        (out_dir / name).write_bytes(view_png(test.images[int(ref.split(":")[1])]))
        images[ref] = name
    example = PromptRecord(**samples["template"][0]["prompt"])
    prompts = [
        {"name": v, "description": variant_description(v), "sha": template_sha256(v)[:12]}
        for v in list_variants()
    ]
    backend = ctx.backend
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
            classifier_sha=ctx.classifier.clf.sha256,
            index=ctx.index.embedder_id,
            k=settings.graph.k,
            default_variant=default,
            prompts=prompts,
            example=example,
            example_case=refs[0],
            samples=[
                {"ref": ref, "why": why, "image": images[ref], "template": samples["template"][i],
                 "vlm": {v: samples[v][i] for v in variants}}
                for i, (ref, why) in enumerate(picked)
            ],
            variants=variants,
            rows=rows,
            n_eval=len(val_refs),
            val_pneumonia=sum(t == "pneumonia" for t in truths),
        )
    )
    return path
