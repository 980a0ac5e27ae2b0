"""The scale path of ``casereview batch``, with real servers: the ``openai`` backend against a real
``transformers serve`` with concurrency 2 and the case index behind a real ``chroma run``, in one
batch; and the local ``medgemma`` backend with batched generation under concurrency.

The model is the tiny randomly initialised Gemma 3 of ``tiny_vlm``: a random model, so its text is
never a result; the tests check the plumbing (every pair once, same records at any concurrency).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from case_index_support import index_settings
from metrics_support import without_latency
from server_support import free_port, http_ok, server
from casereview.evaluation.batch_arms import plan_arms
from casereview.evaluation.batch_metrics import summarize
from casereview.evaluation.batch_records import load_rows
from casereview.evaluation.batch_report import write_reports
from casereview.evaluation.batch_runner import BatchPlan, BatchRunner, split_refs
from casereview.tools.case_index import CaseIndexError, chroma_client
from casereview.tools.index_build import build_index
from tiny_vlm import tiny_vlm_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
LIMIT = 60
RANDOM_NOTE = "tiny randomly initialised Gemma 3: a random model, its text is not a result"


def _chroma_ok(settings) -> bool:
    try:
        chroma_client(settings)
        return True
    except CaseIndexError:
        return False


def _with(settings, **sections):
    return settings.model_copy(update={k: getattr(settings, k).model_copy(update=v) for k, v in sections.items()})


def test_openai_backend_on_transformers_serve_and_index_on_chroma_run(tmp_path, data_root, random_checkpoint, tiny_vlm_dir):  # noqa: F811
    exe = shutil.which("transformers", path=os.path.dirname(sys.executable))
    assert exe, "the `transformers` command is missing: pip install 'transformers[serving]'"
    vlm_port, chroma_port = free_port(), free_port()
    settings = index_settings(tmp_path, data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn",
                              chroma_url=f"http://127.0.0.1:{chroma_port}")
    settings = _with(settings, reporter={"backend": "openai", "base_url": f"http://127.0.0.1:{vlm_port}/v1",
                                         "model_id": str(tiny_vlm_dir), "max_new_tokens": 8, "retries": 0},
                     graph={"checkpointer": "none"})
    serve = [exe, "serve", str(tiny_vlm_dir), "--host", "127.0.0.1", "--port", str(vlm_port), "--device", "cpu"]
    chroma = [str(Path(sys.executable).parent / "chroma"), "run", "--path", str(tmp_path / "chroma-server"),
              "--host", "127.0.0.1", "--port", str(chroma_port)]
    with server(chroma, lambda: _chroma_ok(settings), tmp_path / "chroma.log", "chroma run"), \
         server(serve, lambda: http_ok(f"http://127.0.0.1:{vlm_port}/health"), tmp_path / "serve.log", "transformers serve"):
        build_index(settings, progress=False)
        refs = split_refs(settings, "test", 6, seed=0)
        arms = plan_arms("openai", ["minimal", "grounded"], probe=False)
        outcomes = {}
        for c in (2, 1):
            plan = BatchPlan(tmp_path / f"c{c}", refs, arms, settings, split="test", note=RANDOM_NOTE)
            outcomes[c] = BatchRunner(plan, concurrency=c, progress=False).run()
    assert outcomes[2].done == outcomes[1].done == 12 and not outcomes[2].failed
    assert not (tmp_path / "chroma").exists()  # the index was read from the server, not from the on-disk default
    record = json.loads(next((tmp_path / "c2" / "arms" / "openai-grounded").glob("*.json")).read_text())
    assert record["provenance"]["reporter"]["base_url"] == settings.reporter.base_url
    assert record["report"]["backend"] == "openai" and record["report"]["model_id"] == str(tiny_vlm_dir)
    # greedy decoding: the same text whether two requests were in flight or one
    for arm in ("openai-minimal", "openai-grounded"):
        for path in (tmp_path / "c2" / "arms" / arm).glob("*.json"):
            other = json.loads((tmp_path / "c1" / "arms" / arm / path.name).read_text())
            assert json.loads(path.read_text())["report"]["raw"] == other["report"]["raw"]
    assert without_latency(summarize(tmp_path / "c2", n_boot=50)) == without_latency(summarize(tmp_path / "c1", n_boot=50))
    md, _ = write_reports(json.loads((tmp_path / "c2" / "metrics.json").read_text()), load_rows(tmp_path / "c2"), tmp_path / "c2")
    assert RANDOM_NOTE in md.read_text()


def test_local_medgemma_backend_batches_concurrent_reviews(tmp_path, data_root, random_checkpoint, tiny_vlm_dir):  # noqa: F811
    settings = index_settings(tmp_path, data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(settings, progress=False)
    settings = _with(settings, reporter={"backend": "medgemma", "model_id": str(tiny_vlm_dir), "max_new_tokens": 8,
                                         "batch_size": 3, "device": "cpu"}, graph={"checkpointer": "none"})
    plan = BatchPlan(tmp_path / "b", split_refs(settings, "test", 6, seed=0), plan_arms("medgemma", ["minimal"], False),
                     settings, split="test", note=RANDOM_NOTE)
    outcome = BatchRunner(plan, concurrency=3, progress=False).run()
    assert outcome.done == 6 and not outcome.failed
    sizes = [json.loads(p.read_text())["provenance"]["reporter"]["generate_batch_size"]
             for p in (tmp_path / "b" / "arms" / "medgemma-minimal").glob("*.json")]
    assert len(sizes) == 6 and max(sizes) > 1  # concurrent reviews shared generate calls
