"""``casereview batch --outputs text,json``: free text against structured output as arms, on a real
on-disk index, against a real HTTP server on 127.0.0.1 that refuses ``response_format``; and how each
arm's reports were read (tier 1, tier 2, unread) in metrics.json and the report."""

from __future__ import annotations

import json
import warnings

import pytest

from case_index_support import index_settings
from fake_openai import fake_openai
from casereview.cli import main
from casereview.evaluation.batch_arms import Arm, arm_settings, plan_arms
from casereview.evaluation.batch_metrics import summarize
from casereview.evaluation.batch_records import load_rows
from casereview.evaluation.batch_runner import BatchPlan, BatchRunner, split_refs
from casereview.evaluation.batch_report import write_reports
from casereview.tools.index_build import build_index

LIMIT = 60


def test_output_arms_names_and_settings(tmp_path) -> None:
    arms = plan_arms("openai", ["minimal"], probe=False, outputs=["text", "json"])
    assert [a.name for a in arms] == ["openai-minimal+text", "openai-minimal+json"]
    assert Arm("openai", "grounded", "flip-classifier", "json").name == "openai-grounded+json.flip-classifier"
    assert "output" not in Arm("openai", "minimal").to_dict()  # plans from before output arms stay the same
    s = index_settings(tmp_path, tmp_path, checkpoint=None, limit=LIMIT, embedder="cnn")
    assert [arm_settings(s, a).reporter.structured_output for a in arms] == [False, True]


def test_outputs_json_needs_the_openai_backend(capsys) -> None:
    assert main(["batch", "--cases", "test:1", "--outputs", "text,json", "--backend", "template"]) == 2
    assert "needs --backend openai" in capsys.readouterr().err


@pytest.mark.slow
def test_free_text_and_structured_arms_on_a_server_that_refuses(tmp_path, data_root, random_checkpoint) -> None:
    settings = index_settings(tmp_path, data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(settings, progress=False)
    with fake_openai() as srv:
        srv.refuse_structured = True
        settings = settings.model_copy(update={
            "reporter": settings.reporter.model_copy(update={"backend": "openai", "base_url": srv.url, "retries": 0}),
            "graph": settings.graph.model_copy(update={"checkpointer": "none"})})
        arms = plan_arms("openai", ["minimal"], probe=False, outputs=["text", "json"])
        plan = BatchPlan(tmp_path / "b", split_refs(settings, "test", 4, seed=0), arms, settings, split="test")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome = BatchRunner(plan, progress=False).run()
        bodies = [json.loads(r["body"]) for r in srv.requests]
    assert outcome.done == 8 and not outcome.failed
    assert len([w for w in caught if "refused structured output" in str(w.message)]) == 1
    assert sum("response_format" in b for b in bodies) == 1  # asked once, then free text
    metrics = summarize(tmp_path / "b", n_boot=20)
    for arm in ("openai-minimal+text", "openai-minimal+json"):
        reading = metrics["reading"][arm]
        assert reading["n_reports"] == 4 and reading["tier1"]["share"] == 1.0 and reading["unread"]["share"] == 0.0
    md, page = write_reports(metrics, load_rows(tmp_path / "b"), tmp_path / "b")
    assert "How the reports were read" in md.read_text() and "How the reports were read" in page.read_text()
