"""Evidence -> rendered prompt -> backend -> parsed report, with provenance for every output."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from tqdm.auto import tqdm

from casereview.provenance import PACKAGES, package_versions, utc_now
from casereview.tools.reporter.backends import ReporterBackend
from casereview.tools.reporter.evidence import Evidence
from casereview.tools.reporter.parser import ParsedReport, parse_report
from casereview.tools.reporter.prompts import RenderedPrompt, render_prompt


class ReportResult(BaseModel):
    """One generated report: the prompt as sent, the model's raw text, its parse and its provenance."""

    case_id: str
    variant: str
    backend: str
    model_id: str
    system_prompt: str
    prompt: str  # the user message, ``<image: REF>`` where each image went
    image_refs: list[str]
    raw: str  # untrusted model output, verbatim
    parsed: ParsedReport
    provenance: dict[str, Any]


@lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    return package_versions(PACKAGES + ("openai", "pillow"))


def generate_reports(
    backend: ReporterBackend,
    evidence: Sequence[Evidence],
    variant: str,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[ReportResult]:
    """Reports for several cases with one prompt variant, in order.

    All prompts are rendered first, so missing evidence fails before any model runs.
    """
    return generate(backend, [render_prompt(variant, ev) for ev in evidence], batch_size=batch_size, progress=progress)


def generate(
    backend: ReporterBackend,
    prompts: Sequence[RenderedPrompt],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[ReportResult]:
    """Reports for rendered prompts, exactly as given, in order; ``batch_size`` prompts go to the
    backend at a time (default: the backend's configured batch size)."""
    step = max(1, batch_size or backend.cfg.batch_size)
    results: list[ReportResult] = []
    bar = tqdm(total=len(prompts), desc=f"{backend.name}", unit="case", disable=not progress)
    for i in range(0, len(prompts), step):
        batch = prompts[i : i + step]
        generations = backend.generate(batch)
        info = backend.describe()
        for prompt, gen in zip(batch, generations, strict=True):
            results.append(
                ReportResult(
                    case_id=prompt.evidence.case_id,
                    variant=prompt.variant,
                    backend=backend.name,
                    model_id=backend.model_id,
                    system_prompt=prompt.system,
                    prompt=prompt.text,
                    image_refs=[p.ref for p in prompt.parts if not isinstance(p, str)],
                    raw=gen.text,
                    parsed=parse_report(gen.text),
                    provenance=info
                    | {
                        "variant": prompt.variant,
                        "template_sha256": prompt.template_sha256,
                        "seed": backend.cfg.seed,
                        "generate_s": round(gen.seconds, 4),
                        "generate_batch_size": gen.batch_size,
                        "completion_tokens": gen.completion_tokens,
                        "created": utc_now(),
                        "packages": _versions(),
                    },
                )
            )
        bar.update(len(batch))
    bar.close()
    return results
