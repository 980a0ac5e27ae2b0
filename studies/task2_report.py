"""Task 2 report (``casereview report task2``): report generation with the configured reporter backend.

Built on ``casereview batch``: the prompt variants are compared, with the reference arms and
paired statistics, on a seeded random sample of the validation split (prompt choice is made on
validation data); the samples are representative test cases (both classes, confident and
uncertain, the classifier's errors). With the ``template`` backend (the default here) no
vision-language model runs: the report says so, shows the template baseline labelled as such, and
names the command that regenerates it with MedGemma.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from casereview.config import Settings
from casereview.data import load_split
from casereview.errors import CaseReviewError
from casereview.evaluation.batch_arms import REFERENCE_ARMS, Arm, plan_arms
from casereview.evaluation.batch_metrics import summarize
from casereview.evaluation.batch_records import load_rows, read_records
from casereview.evaluation.batch_report import choice, group_label, write_reports
from casereview.evaluation.batch_runner import BatchPlan, BatchRunner, split_refs
from casereview.evaluation.case_picking import pick_cases
from casereview.provenance import git_commit, sha256_text, utc_now
from casereview.records import view_png
from casereview.render import render
from casereview.schemas import PromptRecord
from casereview.tools.index_build import build_index
from casereview.tools.context import build_context
from casereview.tools.reporter.prompts import list_variants, template_sha256, template_source

REPORT_NAME = "task2_report_generation.md"
BATCH_REPORT_DIR = "task2_batch"  # the validation batch's report, committed beside this one
GPU_COMMAND = (
    "HF_TOKEN=hf_... CASEREVIEW_REPORTER_BACKEND=medgemma casereview report task2"
)


def variant_description(variant: str) -> str:
    """The one-line comment at the top of a variant's template."""
    m = re.match(r"\{#-?\s*(.*?)\s*-?#\}", template_source(f"{variant}.j2"), re.DOTALL)
    return " ".join(m.group(1).split()) if m else ""


def _run(work: Path, name: str, refs: list[str], arms: list[Arm], settings: Settings, split: str | None = None) -> Path:
    """Run (or resume) a batch under ``work/<name>-<hash of the plan>`` and return its folder: other
    settings (a new checkpoint, another model) get a folder of their own. A failed review stops the report."""
    plan = BatchPlan(work, refs, arms, settings, split=split)
    plan.out = work / f"{name}-{sha256_text(json.dumps(plan.to_dict(), sort_keys=True))[:10]}"
    outcome = BatchRunner(plan, progress=True).run()
    if outcome.failed:
        arm, ref, error = outcome.failed[0]
        raise CaseReviewError(f"{len(outcome.failed)} reviews failed in {plan.out}, the first: {ref} ({arm}): {error}")
    return plan.out


def comparison_rows(metrics: dict[str, Any], model_arms: list[str]) -> list[dict[str, Any]]:
    """The validation comparison: one row per group of arms with identical outputs (model arms first, then
    the reference arms), with intervals."""
    rows = []
    for group in metrics["identical"]:
        arm = group[0]
        m = metrics["arms"][arm]
        kinds = sorted({"model" if a in model_arms else "reference" for a in group})
        rows.append({"arm": group_label(group), "arms": group, "kind": " + ".join(kinds), "n": m["n"], "scores": m["scores"],
                     "rates": m["rates"], "classifier_agreement": m["agreement"]["classifier"]["rate"],
                     "kappa": m["agreement"]["classifier"]["kappa"],
                     "latency": m.get("latency", {}).get("generate_s")})
    return rows


def write_task2_report(settings: Settings, out_dir: Path, n_samples: int = 12, n_eval: int = 200) -> Path:
    """Write ``reports/task2_report_generation.md`` and its case images; returns the report's path.

    Two batches (``casereview batch``) under ``<workdir>/task2/``, resumable: every prompt variant
    with the configured backend on a seeded sample of ``n_eval`` validation cases (the comparison and
    the variant choice), and the representative test cases with the template and, with a VLM
    backend, every variant. Builds the case index first if it is missing or stale.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_index(settings)  # idempotent: keeps an up-to-date index, so one command regenerates the report
    backend_name = settings.reporter.backend
    vlm = backend_name != "template"
    variants = list_variants()
    default = settings.reporter.variant
    work = Path(settings.paths.workdir) / "task2"

    val_refs = split_refs(settings, "val", n_eval, settings.reporter.seed)
    val_dir = _run(work, f"val-{backend_name}", val_refs, plan_arms(backend_name, variants, probe=False), settings, "val")
    val_metrics = summarize(val_dir)
    val_rows = load_rows(val_dir)
    write_reports(val_metrics, val_rows, out_dir / BATCH_REPORT_DIR, source=val_dir)

    ctx = build_context(settings, "task2")
    picked = pick_cases(ctx, "test", n_samples)
    refs = [ref for ref, _ in picked]
    template_arm = Arm("template", default)
    sample_dir = _run(work, "samples-template", refs, [template_arm], settings)
    samples = {"template": read_records(sample_dir, template_arm.name, refs)}
    if vlm:
        vlm_arms = plan_arms(backend_name, variants, probe=False)
        vlm_dir = _run(work, f"samples-{backend_name}", refs, vlm_arms, settings)
        samples |= {a.variant: read_records(vlm_dir, a.name, refs) for a in vlm_arms}

    images = {}
    test = load_split("test", settings.data.root, settings.data.download)
    for ref in refs:
        name = f"task2_{ref.replace(':', '_')}.png"
        (out_dir / name).write_bytes(view_png(test.images[int(ref.split(":")[1])]))
        images[ref] = name
    for stale in out_dir.glob("task2_*.png"):  # case images of an earlier run's samples
        if stale.name not in images.values():
            stale.unlink()
    example = PromptRecord(**samples["template"][refs[0]]["prompt"])
    prompts = [
        {"name": v, "description": variant_description(v), "sha": template_sha256(v)[:12]}
        for v in variants
    ]
    backend = ctx.backend
    truths = [r.truth for r in val_rows.arms[REFERENCE_ARMS[0]]]
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
            classifier=ctx.classifier.clf,  # its checkpoint's sha256 and, served by ONNX Runtime, the graph's
            index=ctx.index.embedder_id,
            k=settings.graph.k,
            k_uncertain=settings.graph.k_uncertain,
            default_variant=default,
            prompts=prompts,
            example=example,
            example_case=refs[0],
            samples=[
                {"ref": ref, "why": why, "image": images[ref], "template": samples["template"][ref],
                 "vlm": {v: samples[v][ref] for v in variants if vlm}}
                for ref, why in picked
            ],
            variants=variants if vlm else [],
            rows=comparison_rows(val_metrics, val_rows.model_arms),
            comparisons=[c for c in val_metrics["comparisons"]
                         if (c["a"] in val_rows.model_arms or c["b"] in val_rows.model_arms)
                         and c["mcnemar"]["only_a_right"] + c["mcnemar"]["only_b_right"]],
            evidence=val_metrics["evidence"],
            reading=val_metrics["reading"],
            choice=choice(val_metrics, val_rows.model_arms, "val"),
            batch_report=f"{BATCH_REPORT_DIR}/report.md",
            group_label=group_label,
            n_eval=len(val_refs),
            val_pneumonia=sum(t == "pneumonia" for t in truths),
        )
    )
    return path
