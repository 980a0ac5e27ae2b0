"""The arms of a batch: what is run through the review graph (backend x prompt variant, and the
counterfactual probes of grounded variants) and what is derived from the same records at no model cost
(the reference arms)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import jinja2.meta

from casereview.config import Settings
from casereview.tools.reporter.prompts import PromptError, _env, list_variants

# Probe -> the evidence it reverses, named as the prompt templates name it.
PROBES = {"flip-classifier": "opinion", "swap-neighbours": "neighbours"}

# Reference arms: computed from every case's record (its classifier opinion and neighbours).
REFERENCE_ARMS = ("classifier-alone", "neighbour-vote", "template-follows-both",
                  "template-follows-classifier", "template-follows-neighbours")


@dataclass(frozen=True)
class Arm:
    """One arm that runs through the graph; ``probe`` names the reversed evidence, if any."""

    backend: str
    variant: str
    probe: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.variant}" + (f".{self.probe}" if self.probe else "")

    @property
    def base(self) -> str:
        """The unperturbed arm a probe arm is compared with."""
        return f"{self.backend}-{self.variant}"

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self) | {"name": self.name}


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


@lru_cache(maxsize=None)
def evidence_used(variant: str) -> frozenset[str]:
    """The evidence names (``opinion``, ``neighbours``) a variant's template refers to."""
    env = _env()
    return frozenset(jinja2.meta.find_undeclared_variables(env.parse(env.loader.get_source(env, f"{variant}.j2")[0])))


def plan_arms(backend: str, variants: list[str], probe: bool) -> list[Arm]:
    """Model arms, then, with ``probe``, each probe for every variant whose prompt shows that evidence
    (reversing evidence a prompt never states tests nothing)."""
    arms = [Arm(backend, v) for v in variants]
    if probe:
        arms += [Arm(backend, v, p) for p, needs in PROBES.items() for v in variants if needs in evidence_used(v)]
    return arms


def arm_settings(settings: Settings, arm: Arm) -> Settings:
    """The settings an arm's cases run with: its backend and first variant, everything else shared."""
    return settings.model_copy(update={
        "reporter": settings.reporter.model_copy(update={"backend": arm.backend, "variant": arm.variant}),
    })
