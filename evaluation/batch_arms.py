"""The arms of a batch: what is run through the review graph (backend x prompt variant, and the
counterfactual probes of grounded variants) and what is derived from the same records at no model cost
(the reference arms)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import jinja2.meta

from casereview.config import Settings
from casereview.tools.reporter.evidence import ReporterError
from casereview.tools.reporter.prompts import PromptError, _env, list_variants

# Probe -> the evidence it reverses, named as the prompt templates name it.
PROBES = {"flip-classifier": "opinion", "swap-neighbours": "neighbours"}

# Reference arms: computed from every case's record (its classifier opinion and neighbours).
REFERENCE_ARMS = ("classifier-alone", "neighbour-vote", "template-follows-both",
                  "template-follows-classifier", "template-follows-neighbours")


# How a report is asked for (``--outputs``): free text, or the JSON object of ``reporter.structured_output``.
OUTPUTS = {"text": False, "json": True}


def base_name(backend: str, variant: str, output: str | None = None) -> str:
    """The name of an unperturbed arm (``output`` None: as the settings say, and not named)."""
    return f"{backend}-{variant}" + (f"+{output}" if output else "")


@dataclass(frozen=True)
class Arm:
    """One arm that runs through the graph; ``probe`` names the reversed evidence, if any; ``output``
    how the report is asked for (None: as ``reporter.structured_output`` says)."""

    backend: str
    variant: str
    probe: str | None = None
    output: str | None = None

    @property
    def name(self) -> str:
        return self.base + (f".{self.probe}" if self.probe else "")

    @property
    def base(self) -> str:
        """The unperturbed arm a probe arm is compared with."""
        return base_name(self.backend, self.variant, self.output)

    def to_dict(self) -> dict[str, str | None]:
        # no "output" key on arms without one: the plans of batches from before it stay the same
        return {k: v for k, v in asdict(self).items() if k != "output" or v} | {"name": self.name}


def parse_variants(text: str | None) -> list[str]:
    """``a,b`` -> checked variant names; ``None`` or ``all`` -> every variant in ``prompts/``."""
    known = list_variants()
    if text is None or text.strip() == "all":
        return known
    names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise PromptError(f"unknown prompt variant(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    return names


def parse_outputs(text: str | None, backend: str) -> list[str] | None:
    """``text,json`` -> checked output names (None: no output arms); JSON answers need the openai backend."""
    if text is None:
        return None
    names = list(dict.fromkeys(o.strip() for o in text.split(",") if o.strip()))
    unknown = [o for o in names if o not in OUTPUTS]
    if unknown or not names:
        raise ReporterError(f"unknown output(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(OUTPUTS)}")
    if "json" in names and backend != "openai":
        raise ReporterError(f"--outputs json asks an OpenAI-compatible server for structured output: it needs "
                          f"--backend openai, not {backend}")
    return names


@lru_cache(maxsize=None)
def evidence_used(variant: str) -> frozenset[str]:
    """The evidence names (``opinion``, ``neighbours``) a variant's template refers to."""
    env = _env()
    return frozenset(jinja2.meta.find_undeclared_variables(env.parse(env.loader.get_source(env, f"{variant}.j2")[0])))


def plan_arms(backend: str, variants: list[str], probe: bool, outputs: list[str] | None = None) -> list[Arm]:
    """Model arms (each variant in each of ``outputs``), then, with ``probe``, each probe for every variant
    whose prompt shows that evidence (reversing evidence a prompt never states tests nothing)."""
    outs = outputs or [None]
    arms = [Arm(backend, v, output=o) for v in variants for o in outs]
    if probe:
        arms += [Arm(backend, v, p, o) for p, needs in PROBES.items() for v in variants if needs in evidence_used(v)
                 for o in outs]
    return arms


def arm_settings(settings: Settings, arm: Arm) -> Settings:
    """The settings an arm's cases run with: its backend and first variant, everything else shared."""
    reporter = {"backend": arm.backend, "variant": arm.variant}
    if arm.output is not None:
        reporter["structured_output"] = OUTPUTS[arm.output]
    return settings.model_copy(update={"reporter": settings.reporter.model_copy(update=reporter)})
