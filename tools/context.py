"""The run context: the typed resources of one run, each built once per process, and the
settings that shape a result.

Nodes reach the capabilities through it (``ctx.classifier``, ``ctx.index``, ``ctx.backend``);
the langchain-core tools (``ctx.tool(name)``) are built over the very same resources, so an
external agent that calls them by name gets the same models. The context is never saved in
checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool

from casereview.config import Settings
from casereview.provenance import sha256_file, sha256_text
from casereview.tools.case_index import CaseIndex, open_index, parse_splits
from casereview.tools.classifier_tool import CaseClassifier, load_case_classifier
from casereview.tools.input_gate import InputGate, load_input_gate
from casereview.tools.reporter.backends import ReporterBackend, get_backend
from casereview.training.checkpoint import released_checkpoint


@dataclass
class RunContext:
    settings: Settings
    run_id: str = "adhoc"
    _tools: dict[str, BaseTool] = field(default_factory=dict, repr=False)

    @cached_property
    def classifier(self) -> CaseClassifier:
        return load_case_classifier(self.settings)

    @cached_property
    def gate(self) -> InputGate:
        """The input gate over the classifier's model (fitted once per checkpoint, then cached on disk)."""
        return load_input_gate(self.settings, self.classifier.clf)

    @cached_property
    def index(self) -> CaseIndex:
        """The case index; the cnn embedder reuses the classifier's loaded model."""
        shared = self.classifier.clf if self.settings.index.embedder == "cnn" else None
        return open_index(self.settings, classifier=shared)

    @cached_property
    def backend(self) -> ReporterBackend:
        return get_backend(self.settings)

    def case_vector(self, image: np.ndarray) -> np.ndarray:
        """The index's vector for one image: the classifier's own embedding when the index was built
        from the same checkpoint (no second forward pass), else the index's embedder."""
        emb = self.index.embedder
        if emb.name == "cnn" and emb.weights_sha256 == self.classifier.clf.sha256:
            return self.classifier.embedding(image)
        return emb.embed_images(np.asarray(image, dtype=np.uint8)[None])[0]

    def open(self) -> RunContext:
        """Load the classifier and its input gate and open the case index now, so that a missing checkpoint or index
        fails before any case starts (the reporter backend still loads on first use)."""
        _ = self.classifier, self.gate
        self.index.verify(parse_splits(self.settings.graph.case_base))  # the splits the reviews will search
        return self

    def sharing(self, settings: Settings, run_id: str) -> RunContext:
        """A context for other reporter or graph settings that reuses this one's loaded classifier and index."""
        other = RunContext(settings, run_id)
        for name in ("classifier", "gate", "index"):  # cached_property values live in the instance dict
            if name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        return other

    def tool(self, name: str) -> BaseTool:
        """The langchain-core tool ``name``: classify_case, search_similar_cases or write_report."""
        from casereview.tools.agent_tools import TOOL_FACTORIES

        if name not in self._tools:
            self._tools[name] = TOOL_FACTORIES[name](self)
        return self._tools[name]

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that shape a case's result (a resumed case must run with the same ones)."""
        s = self.settings
        r = s.reporter
        return {
            "checkpoint_sha256": _checkpoint_sha256(str(s.classifier.checkpoint or released_checkpoint())),
            "embedder": s.index.embedder,
            "clip_model": s.index.clip_model if s.index.embedder == "clip" else None,
            "case_base": s.graph.case_base,
            "k": s.graph.k,
            "k_uncertain": s.graph.k_uncertain,
            "conformal_alpha": s.graph.conformal_alpha,
            "neighbour_majority": s.graph.neighbour_majority,
            "max_attempts": s.graph.max_attempts,
            "backend": r.backend,
            "model_id": "casereview-template-v1" if r.backend == "template" else (r.api_model or r.model_id),
            "template_follows": r.template_follows if r.backend == "template" else None,
            "max_new_tokens": r.max_new_tokens if r.backend != "template" else None,
            "precision": r.precision if r.backend == "medgemma" else None,
            "variant": r.variant,
            "strict_variant": s.graph.strict_variant,
            "seed": r.seed,
            "gate": s.gate.model_dump(),
        }


def fingerprint(fields: dict[str, Any]) -> str:
    return sha256_text(json.dumps(fields, sort_keys=True, default=str))[:16]


@lru_cache(maxsize=8)
def _checkpoint_sha256(path: str) -> str:
    p = Path(path)
    return sha256_file(p) if p.is_file() else f"missing: {path}"  # loading it later raises the clear error
