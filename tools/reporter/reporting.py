"""Evidence -> rendered prompt -> backend -> parsed report, with provenance for every output."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from casereview.provenance import PACKAGES, package_versions, utc_now
from casereview.tools.reporter.backends import ReporterBackend
from casereview.tools.reporter.parser import ParsedReport, parse_report
from casereview.tools.reporter.prompts import RenderedPrompt


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


def generate(backend: ReporterBackend, prompts: Sequence[RenderedPrompt]) -> list[ReportResult]:
    """Reports for rendered prompts, exactly as given, in order (a local model generates them
    ``reporter.batch_size`` at a time)."""
    generations = backend.generate(prompts)
    info = backend.describe()
    return [
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
                "truncated_from": gen.truncated_from,
                "created": utc_now(),
                "packages": _versions(),
            },
        )
        for prompt, gen in zip(prompts, generations, strict=True)
    ]
