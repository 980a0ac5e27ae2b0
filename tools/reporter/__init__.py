"""The VLM reporter: prompt variants, backends, output parser.

The interface the graph uses::

    backend = get_backend(settings)                         # "template" | "medgemma" | "openai", once per process
    evidence = Evidence(case_id, image, opinion, neighbours, neighbour_images)
    prompt = render_prompt("grounded", evidence)            # PromptError when evidence is missing
    text = backend.generate([prompt])[0].text               # raw, untrusted
    parsed = parse_report(text)                             # ParsedReport: impression | None, status, ...

or with provenance: ``generate(backend, [prompt, ...])`` for rendered prompts (what the graph's
report node does).
"""

from casereview.tools.reporter.backends import BACKENDS, Generation, ReporterBackend, get_backend
from casereview.tools.reporter.evidence import Evidence, ReporterError
from casereview.tools.reporter.parser import ParsedReport, parse_report
from casereview.tools.reporter.prompts import PromptError, RenderedPrompt, list_variants, render_prompt, template_sha256
from casereview.tools.reporter.reporting import ReportResult, generate

__all__ = [
    "BACKENDS",
    "Evidence",
    "Generation",
    "ParsedReport",
    "PromptError",
    "RenderedPrompt",
    "ReportResult",
    "ReporterBackend",
    "ReporterError",
    "generate",
    "get_backend",
    "list_variants",
    "parse_report",
    "render_prompt",
    "template_sha256",
]
