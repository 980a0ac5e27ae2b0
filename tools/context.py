"""The run context: the typed resources of one run, built once by :func:`build_context`, and the
settings that shape a result.

It is LangGraph's runtime context: nodes reach the capabilities through ``runtime.context``
(``ctx.classifier``, ``ctx.index``, ``ctx.backend``), and :func:`casereview.tools.agent_tools.make_tools`
builds the langchain-core tools over the very same resources. It is frozen: a variant of a run
(another reporter variant, a batch arm) is ``dataclasses.replace(ctx, settings=..., run_id=...)``,
sharing the loaded models. It is never saved in checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from casereview.config import Settings, load_settings
from casereview.provenance import sha256_file, sha256_text
from casereview.tools.case_classifier import CaseClassifier, load_case_classifier
from casereview.tools.case_index import CaseIndex, open_index, parse_splits
from casereview.tools.input_gate import InputGate, load_input_gate
from casereview.tools.reporter.backends import ReporterBackend, get_backend
from casereview.training.classifier import onnx_file, released_checkpoint


@dataclass(frozen=True)
class RunContext:
    settings: Settings
    classifier: CaseClassifier
    gate: InputGate  # over the classifier's model (fitted once per checkpoint, then cached on disk)
    index: CaseIndex  # the cnn embedder reuses the classifier's loaded model
    backend: ReporterBackend  # a local model loads on its first report
    run_id: str = "adhoc"

    def case_vector(self, image: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """The index's vector for one image: the classifier's ``embedding`` when the index was built
        from the same checkpoint (no second forward pass), else the index's embedder's."""
        emb = self.index.embedder
        if emb.name == "cnn" and emb.weights_sha256 == self.classifier.clf.sha256:
            return np.asarray(embedding, dtype=np.float32)
        return emb.embed_images(np.asarray(image, dtype=np.uint8)[None])[0]


def build_context(settings: Settings, run_id: str = "adhoc") -> RunContext:
    """Load the classifier and its input gate, open the case index and choose the reporter backend, once.

    A missing checkpoint or index fails here, before any case starts."""
    classifier = load_case_classifier(settings)
    index = open_index(settings, classifier=classifier.clf if settings.index.embedder == "cnn" else None)
    index.verify(parse_splits(settings.graph.case_base))  # the splits the reviews will search
    gate = load_input_gate(settings, classifier.clf)
    return RunContext(settings, classifier, gate, index, get_backend(settings), run_id)


@lru_cache(maxsize=1)
def server_context() -> RunContext:
    """The context of a process that serves the graph to callers who pass none (``langgraph dev``):
    settings from the environment, resources loaded on the first run and kept for the process."""
    return build_context(load_settings(), "server")


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
