"""The run context: the serialisable values of one run (settings, run id, reviewer, where records go)
and, through it, the run's heavy resources, each built once per process.

It is LangGraph's runtime context: nodes reach the capabilities through ``runtime.context``
(``ctx.classifier``, ``ctx.index``, ``ctx.gate``, ``ctx.backend``), which look them up in a
per-process cache keyed by the settings that build them (the way LangGraph's react-agent template
loads its model from ``runtime.context``). The context itself holds no model, so every front end
(CLI, batch, notebook, LangGraph's server) runs the one compiled graph with a context of its own;
:func:`casereview.tools.agent_tools.make_tools` builds the langchain-core tools over the same
resources. It is frozen: a variant of a run (another reporter variant, a batch arm) is
``dataclasses.replace(ctx, settings=..., run_id=...)``, and shares the loaded models.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from casereview.config import Settings
from casereview.provenance import sha256_file, sha256_text
from casereview.training.classifier import onnx_file, released_checkpoint

if TYPE_CHECKING:  # imported where they are built: a process that only signs cases loads no capability
    from casereview.tools.case_classifier import CaseClassifier
    from casereview.tools.case_index import CaseIndex
    from casereview.tools.input_gate import InputGate
    from casereview.tools.reporter.backends import ReporterBackend

T = TypeVar("T")


@dataclass(frozen=True)
class RunContext:
    """What one run is: its settings, its id, who signs, where its records go. Serialisable values only.

    ``settings`` None (a caller of LangGraph's server, who cannot name the server's settings): the
    server process's own settings, from its environment (see ``agents.nodes.run_context``).
    ``out`` None: ``<workdir>/reviews/<run id>``."""

    settings: Settings | None = None
    run_id: str | None = None
    reviewer: str | None = None
    out: Path | None = None

    @property
    def classifier(self) -> CaseClassifier:
        return _resources(self.settings).classifier

    @property
    def gate(self) -> InputGate:
        """The input gate over the classifier's model (fitted once per checkpoint, then cached on disk)."""
        return _resources(self.settings).gate

    @property
    def index(self) -> CaseIndex:
        """The case index (the cnn embedder reuses the classifier's loaded model)."""
        return _resources(self.settings).index

    @property
    def backend(self) -> ReporterBackend:
        """The reporter backend, one per reporter configuration (a local model loads on its first report)."""
        from casereview.tools.reporter.backends import get_backend

        return get_backend(self.settings)

    def case_vector(self, image: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """The index's vector for one image: the classifier's ``embedding`` when the index was built
        from the same checkpoint (no second forward pass), else the index's embedder's."""
        emb = self.index.embedder
        if emb.name == "cnn" and emb.weights_sha256 == self.classifier.clf.sha256:
            return np.asarray(embedding, dtype=np.float32)
        return emb.embed_images(np.asarray(image, dtype=np.uint8)[None])[0]


@dataclass(frozen=True)
class Resources:
    classifier: CaseClassifier
    gate: InputGate
    index: CaseIndex


_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()  # a served graph runs cases in threads: one of them loads, the others wait


def _cached(key: str, build: Callable[[], T]) -> T:
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def resource_key(settings: Settings) -> str:
    """The settings the classifier, the gate and the index are built from (not the reporter's, so
    runs that differ only in their reporter share the models)."""
    return json.dumps({"sections": settings.model_dump(mode="json", include={"data", "classifier", "index", "gate", "paths"}),
                       "conformal_alpha": settings.graph.conformal_alpha, "case_base": settings.graph.case_base},
                      sort_keys=True)


def _resources(settings: Settings | None) -> Resources:
    if settings is None:
        raise ValueError("a run context without settings has no resources; resolve it first (agents.nodes.run_context)")
    return _cached(resource_key(settings), lambda: _build(settings))


def _build(settings: Settings) -> Resources:
    from casereview.tools.case_classifier import load_case_classifier
    from casereview.tools.case_index import open_index, parse_splits
    from casereview.tools.input_gate import load_input_gate

    classifier = load_case_classifier(settings)
    index = open_index(settings, classifier=classifier.clf if settings.index.embedder == "cnn" else None)
    index.verify(parse_splits(settings.graph.case_base))  # the splits the reviews will search
    return Resources(classifier, load_input_gate(settings, classifier.clf), index)


def build_context(settings: Settings, run_id: str = "adhoc", reviewer: str | None = None,
                  out: Path | None = None) -> RunContext:
    """The context of a run, its resources loaded now (the classifier and its input gate, the case
    index, the reporter backend), so that a missing checkpoint or index fails here, before any case starts."""
    ctx = RunContext(settings, run_id, reviewer, out)
    _resources(settings)
    ctx.backend  # noqa: B018 (built now, so that a bad reporter setting fails before any case)
    return ctx


def fingerprint_fields(settings: Settings) -> dict[str, Any]:
    """The settings that shape a case's result (a resumed case must run with the same ones)."""
    s, r = settings, settings.reporter
    checkpoint = Path(s.classifier.checkpoint or released_checkpoint())
    served = onnx_file(checkpoint) if s.classifier.runtime == "onnx" else checkpoint
    return {
        "checkpoint_sha256": _file_sha256(str(checkpoint)),
        "runtime": s.classifier.runtime,
        "model_sha256": _file_sha256(str(served)),  # the file that serves: the checkpoint or its ONNX export
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
        # only when on, so that the fingerprints of runs from before the setting stay as they were
        **({"structured_output": True} if r.backend == "openai" and r.structured_output else {}),
    }


def fingerprint(fields: dict[str, Any]) -> str:
    return sha256_text(json.dumps(fields, sort_keys=True, default=str))[:16]


@lru_cache(maxsize=8)
def _file_sha256(path: str) -> str:
    p = Path(path)
    return sha256_file(p) if p.is_file() else f"missing: {path}"  # loading it later raises the clear error
