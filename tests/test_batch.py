"""``casereview batch`` on real data, a real on-disk Chroma index and real SQLite/records: every
(case, arm) once, resume after SIGKILL of a real process, reference arms, the probe, reports that
keep model text inert, and clear errors (bad variant, unreachable server, full disk) that keep what finished.

The classifier is the random-weights fixture: its numbers test code paths, never results.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from case_index_support import index_settings
from metrics_support import without_latency
from casereview.cli import main
from casereview.evaluation.batch_arms import Arm, parse_variants, plan_arms
from casereview.evaluation.batch_metrics import summarize
from casereview.evaluation.batch_records import load_rows
from casereview.evaluation.batch_report import write_reports
from casereview.evaluation.batch_runner import BatchError, BatchPlan, BatchRunner, split_refs
from casereview.schemas import CaseReview
from casereview.tools.index_build import build_index
from casereview.tools.reporter.backends import Generation, TemplateBackend
from casereview.tools.reporter.prompts import PromptError, list_variants

LIMIT = 60  # images per split in the test index


def with_overrides(settings, **sections):
    return settings.model_copy(update={k: getattr(settings, k).model_copy(update=v) for k, v in sections.items()})


@pytest.fixture(scope="module")
def settings(tmp_path_factory, data_root, random_checkpoint):
    s = index_settings(tmp_path_factory.mktemp("batch"), data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s, progress=False)
    return with_overrides(s, reporter={"backend": "template"}, graph={"checkpointer": "none"})


def env_for(settings) -> dict[str, str]:
    """The fixture's settings as environment variables, for a `casereview` subprocess."""
    return os.environ | {
        "CASEREVIEW_DATA_ROOT": str(settings.data.root), "CASEREVIEW_PATHS_WORKDIR": str(settings.paths.workdir),
        "CASEREVIEW_CLASSIFIER_CHECKPOINT": str(settings.classifier.checkpoint), "CASEREVIEW_CLASSIFIER_DEVICE": "cpu",
        "CASEREVIEW_INDEX_LIMIT": str(LIMIT), "CASEREVIEW_INDEX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False", "OMP_NUM_THREADS": "1",
    }


def plan_for(settings, out: Path, n: int, variants: list[str] | None = None, probe: bool = False) -> BatchPlan:
    arms = plan_arms("template", variants or list_variants(), probe)
    return BatchPlan(out, split_refs(settings, "test", n, seed=0), arms, settings, split="test")


def records_of(out: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.json")) for d in sorted((out / "arms").iterdir())}


def test_every_pair_once_reference_arms_and_rerun_skips(settings, tmp_path):
    # At the default alpha (0.05) the random classifier's conformal sets hold both labels for all 8
    # cases, so the flip probe of confident cases below would have nothing to check; at 0.2 some are confident.
    settings = with_overrides(settings, graph={"conformal_alpha": 0.2})
    plan = plan_for(settings, tmp_path / "b", 8, ["grounded", "minimal"], probe=True)
    names = [a.name for a in plan.arms]
    assert names == ["template-grounded", "template-minimal", "template-grounded.flip-classifier",
                     "template-grounded.swap-neighbours"]  # minimal states no evidence: nothing to reverse
    first = BatchRunner(plan, progress=False).run()
    assert (first.done, first.skipped, first.failed) == (32, 0, [])
    found = records_of(tmp_path / "b")
    assert set(found) == set(names) and all(len(v) == 8 for v in found.values())
    for path in found["template-grounded"]:
        CaseReview.model_validate_json(path.read_text())
    again = BatchRunner(plan, progress=False).run()
    assert (again.done, again.skipped) == (0, 32)

    data = load_rows(tmp_path / "b")
    said = {r.ref: r.impression for r in data.arms["template-grounded"]}
    # the template backend (follows both by default) is what the reference arm recomputes from the record
    assert said == {r.ref: r.impression for r in data.arms["template-follows-both"]}
    assert [r.impression for r in data.arms["classifier-alone"]] == [r.classifier_label for r in data.arms["template-grounded"]]
    metrics = summarize(tmp_path / "b", n_boot=200)
    assert set(metrics["arms"]) >= set(names) | {"classifier-alone", "neighbour-vote", "template-follows-neighbours"}
    assert all(metrics["arms"][a]["n"] == 8 for a in names)
    # the probe: the single-source templates follow the reversed source by construction
    probe = metrics["probe"]
    confident = sum(not r.classifier_uncertain for r in data.arms["template-grounded"])
    assert 0 < confident < 8  # the probe counts the confident cases and leaves out the uncertain ones
    assert probe["template-follows-classifier.flip-classifier"]["n"] == confident
    assert probe["template-follows-classifier.flip-classifier"]["anchoring_rate"] == 1.0
    assert probe["template-follows-neighbours.swap-neighbours"]["anchoring_rate"] == 1.0
    assert probe["classifier-alone.swap-neighbours"]["changed_rate"] == 0.0
    flipped = json.loads((tmp_path / "b/arms/template-grounded.flip-classifier" / found["template-grounded"][0].name).read_text())
    original = json.loads(found["template-grounded"][0].read_text())
    assert flipped["classifier"]["prob_pneumonia"] == pytest.approx(1 - original["classifier"]["prob_pneumonia"])
    assert flipped["classifier"]["label"] != original["classifier"]["label"]
    assert flipped["neighbours"] == original["neighbours"]
    swapped = json.loads((tmp_path / "b/arms/template-grounded.swap-neighbours" / found["template-grounded"][0].name).read_text())
    assert [n["label"] for n in swapped["neighbours"]] != [n["label"] for n in original["neighbours"]]
    assert [n["case_id"] for n in swapped["neighbours"]] == [n["case_id"] for n in original["neighbours"]]


def test_same_records_as_review_one_case(settings, tmp_path):
    """The batched evidence pass gives each node what it would have computed itself."""
    from casereview.graphs.review import ReviewRun

    BatchRunner(plan_for(settings, tmp_path / "b", 3, ["grounded"]), progress=False).run()
    ref = split_refs(settings, "test", 3, seed=0)[1]
    alone = ReviewRun(settings, "alone", tmp_path / "alone").review(ref)
    batch = json.loads((tmp_path / "b/arms/template-grounded" / f"{ref.replace(':', '_')}.json").read_text())
    assert batch["classifier"]["label"] == alone["classifier"]["label"]
    assert batch["classifier"]["prob_pneumonia"] == pytest.approx(alone["classifier"]["prob_pneumonia"], abs=1e-5)
    assert [n["case_id"] for n in batch["neighbours"]] == [n["case_id"] for n in alone["neighbours"]]
    assert batch["input_check"]["ood_distance"] == pytest.approx(alone["input_check"]["ood_distance"], rel=1e-4)
    assert batch["report"]["impression"] == alone["report"]["impression"]


def test_concurrency_gives_the_same_records(settings, tmp_path):
    """Three threads through one compiled graph each, sharing one SQLite checkpointer per arm."""
    one = plan_for(settings, tmp_path / "one", 10, ["grounded", "structured"])
    three = plan_for(with_overrides(settings, graph={"checkpointer": "sqlite"}), tmp_path / "three", 10,
                     ["grounded", "structured"])
    BatchRunner(one, concurrency=1, progress=False).run()
    assert BatchRunner(three, concurrency=3, progress=False).run().done == 20
    assert without_latency(summarize(tmp_path / "one", n_boot=100)) == without_latency(summarize(tmp_path / "three", n_boot=100))


@pytest.mark.slow
def test_kill_9_then_rerun_gives_each_pair_once_and_the_same_metrics(settings, tmp_path):
    cli = "import sys; from casereview.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", cli, "batch", "--split", "test", "--sample", "40", "--seed", "0",
           "--no-progress", "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env_for(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    arms = tmp_path / "killed" / "arms"
    deadline = time.monotonic() + 240
    while sum(1 for _ in arms.glob("*/*.json")) < 40:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the batch did not get going in 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = sum(1 for _ in arms.glob("*/*.json"))
    assert 40 <= done_at_kill < 200, "killed too late to test a resume"
    for path in arms.glob("*/*.json"):  # every record on disk is whole
        CaseReview.model_validate_json(path.read_text())

    rerun = subprocess.run(cmd, env=env_for(settings), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done_at_kill} finished earlier" in rerun.stderr
    found = records_of(tmp_path / "killed")
    assert len(found) == 5 and all(len(v) == 40 for v in found.values())  # each (case, arm) exactly once
    assert not list(arms.glob("*/.*.tmp"))  # a killed writer's temporary files are gone

    assert main(["batch", "--split", "test", "--sample", "40", "--seed", "0", "--no-progress",
                 "--out", str(tmp_path / "straight"), "--workdir", str(settings.paths.workdir),
                 "--checkpoint", str(settings.classifier.checkpoint)]) == 0
    killed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert without_latency(killed) == without_latency(straight)


EVIL = ("<script>alert('x')</script> <img src=x onerror=alert(1)> {{ 7 * 7 }} {% if true %}JINJA{% endif %}\n"
        "``` not a fence end\n| a | table | row |\n[link](javascript:alert(1)) **bold** # heading\n"
        "IMPRESSION: pneumonia")


def test_model_text_is_inert_in_both_reports(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(TemplateBackend, "generate", lambda self, prompts: [Generation(text=EVIL, seconds=0.0) for _ in prompts])
    BatchRunner(plan_for(settings, tmp_path / "b", 3, ["grounded"]), progress=False).run()
    monkeypatch.undo()
    md, page = write_reports(summarize(tmp_path / "b", n_boot=50), load_rows(tmp_path / "b"), tmp_path / "b")
    html = page.read_text()
    assert "<script" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    # the injected template text stands as written, never evaluated ("49 JINJA"); a bare "49" could be any timing
    assert "{{ 7 * 7 }} {% if true %}JINJA{% endif %}" in html and "49 JINJA" not in html
    assert 'src="data:image/png;base64,' in html and "figures/" not in html  # self-contained
    text = md.read_text()
    assert "````text\n" + EVIL + "\n````" in text  # fenced longer than the ``` inside it
    assert "{{ 7 * 7 }}" in text and "JINJA{% endif %}" in text  # not rendered by Jinja
    assert all((md.parent / link).is_file() for link in
               [line.split("](")[1].split(")")[0] for line in text.splitlines() if line.startswith("[test:")])


def test_bad_variant_is_a_clear_error_and_keeps_the_batch(settings, tmp_path, capsys):
    with pytest.raises(PromptError, match="unknown prompt variant.*nope.*known: .*grounded"):
        parse_variants("grounded,nope")
    common = ["--workdir", str(settings.paths.workdir), "--checkpoint", str(settings.classifier.checkpoint),
              "--split", "test", "--sample", "4", "--no-progress", "--out", str(tmp_path / "b")]
    assert main(["batch", "--variants", "minimal", *common]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*.json")}
    capsys.readouterr()
    assert main(["batch", "--variants", "minimal,nope", *common]) == 2
    assert "unknown prompt variant(s) nope" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "b").rglob("*.json")} == before
    # another plan in the same folder is refused, not mixed in
    assert main(["batch", "--variants", "structured", *common]) == 2
    assert "holds a batch with other arms" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(settings, tmp_path, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("CASEREVIEW_REPORTER_RETRIES", "0")
    code = main(["batch", "--workdir", str(settings.paths.workdir), "--checkpoint", str(settings.classifier.checkpoint),
                 "--split", "test", "--sample", "5", "--variants", "minimal", "--backend", "openai",
                 "--base-url", f"http://127.0.0.1:{port}/v1", "--max-errors", "3", "--no-progress",
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2
    assert "stopped after 3 failed reviews" in err and "cannot reach the OpenAI-compatible server" in err
    assert not list((tmp_path / "b").rglob("*.json"))[1:]  # only batch.json: nothing half-written


def test_full_disk_stops_with_a_clear_error_and_keeps_what_finished(settings, tmp_path, monkeypatch):
    import casereview.agents.nodes as review  # the graph's save_record node writes the records

    real, saved = review.save_case_record, []

    def save_until_full(record, image, out_dir, *args, **kw):
        if len(saved) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(record["case_id"])
        return real(record, image, out_dir, *args, **kw)

    monkeypatch.setattr(review, "save_case_record", save_until_full)
    plan = plan_for(settings, tmp_path / "b", 6, ["grounded", "minimal"])
    with pytest.raises(BatchError, match="No space left on device.*5 reviews finished now and are kept"):
        BatchRunner(plan, progress=False).run()
    kept = list((tmp_path / "b" / "arms").glob("*/*.json"))
    assert len(kept) == 5
    for path in kept:
        CaseReview.model_validate_json(path.read_text())
    monkeypatch.undo()
    resumed = BatchRunner(plan, progress=False).run()
    assert (resumed.done, resumed.skipped) == (7, 5)


def test_arm_names_and_probe_plan():
    assert Arm("openai", "grounded", "flip-classifier").name == "openai-grounded.flip-classifier"
    arms = plan_arms("medgemma", ["minimal", "visual_fewshot"], probe=True)
    assert [a.name for a in arms] == ["medgemma-minimal", "medgemma-visual_fewshot",
                                      "medgemma-visual_fewshot.swap-neighbours"]  # shows neighbours, no classifier
