"""``casereview report-gen`` and ``casereview report task2`` end to end through the review graph, with the
template backend, a random classifier and a small case index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casereview.cli import main
from casereview.config import load_settings
from casereview.provenance import sha256_file
from casereview.training.classifier import onnx_file, open_classifier
from casereview.studies.task2_report import write_task2_report
from casereview.tools.index_build import build_index
from tiny_vlm import tiny_vlm_dir  # noqa: F401  (fixture)

LIMIT = 200


def _args(data_root: Path, workdir: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [
        "report-gen", "--data-root", str(data_root), "--workdir", str(workdir),
        "--checkpoint", str(checkpoint), "--out", str(out), *extra,
    ]


@pytest.fixture(scope="module")
def small_index(data_root, random_checkpoint, tmp_path_factory) -> Path:
    """A cnn case index of a fixed random 200 images of each split, with the random classifier."""
    workdir = tmp_path_factory.mktemp("work")
    settings = load_settings(overrides={
        "data": {"root": data_root}, "paths": {"workdir": workdir},
        "classifier": {"checkpoint": random_checkpoint}, "index": {"limit": LIMIT},
    })
    build_index(settings, progress=False)
    return workdir


@pytest.fixture
def limited(monkeypatch):
    monkeypatch.setenv("CASEREVIEW_INDEX_LIMIT", str(LIMIT))


def test_help_explains(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["report-gen", "--help"])
    text = capsys.readouterr().out
    for needle in ("--cases", "--pick", "grounded_skeptical", "visual_fewshot", "medgemma", "HF_TOKEN", "index build"):
        assert needle in text
    assert "../shared" not in text


def test_cases_go_through_the_review_graph(data_root, random_checkpoint, small_index, limited, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(_args(data_root, small_index, random_checkpoint, out, "--cases", "test:0", "test:5", "--variant", "structured"))
    assert rc == 0, capsys.readouterr().err
    assert "wrote 2 report(s)" in capsys.readouterr().out
    record = json.loads((out / "test_5.json").read_text())
    assert record["case_id"] == "test:5" and record["prompt"]["variant"] == "structured"
    assert record["provenance"]["settings"]["case_base"] == "train" and record["verification"]["verdict"] == "agree"
    assert record["report"]["raw"].startswith("[template backend: not a vision-language model")
    md = (out / "test_5.md").read_text()
    assert "![case](test_5.png)" in md and (out / "test_5.png").is_file()


def test_case_base_setting_is_honoured(data_root, random_checkpoint, small_index, limited, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CASEREVIEW_GRAPH_CASE_BASE", "train+val")
    out = tmp_path / "out"
    assert main(_args(data_root, small_index, random_checkpoint, out, "--pick", "6", "-k", "15")) == 0
    splits = {n["split"] for p in out.glob("*.json") for n in json.loads(p.read_text())["neighbours"]}
    assert splits == {"train", "val"}


def test_without_index_says_how_to_build_it(data_root, random_checkpoint, tmp_path, capsys) -> None:
    rc = main(_args(data_root, tmp_path / "empty", random_checkpoint, tmp_path / "out", "--cases", "test:0"))
    assert rc == 2 and "casereview index build" in capsys.readouterr().err


def test_bad_case_ref_fails_before_any_model_loads(data_root, tmp_path, capsys) -> None:
    rc = main(_args(data_root, tmp_path, tmp_path / "missing.safetensors", tmp_path / "o", "--cases", "test:99999"))
    assert rc == 2 and "out of range" in capsys.readouterr().err  # not the missing checkpoint


@pytest.mark.parametrize("variant", ["grounded", "visual_fewshot"])
def test_pick_with_grounded_variants(data_root, random_checkpoint, small_index, limited, tmp_path, variant, capsys) -> None:
    out = tmp_path / "out"
    rc = main(_args(data_root, small_index, random_checkpoint, out, "--pick", "4", "--variant", variant, "-k", "3"))
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(records) == 4 and printed.count("  [") == 4  # each line says why the case was picked
    for rec in records:
        assert rec["case_id"].startswith("test:") and rec["prompt"]["variant"] == variant
        k = 15 if rec["classifier"]["uncertain"] else 3  # graph.k_uncertain for uncertain cases
        assert len(rec["neighbours"]) == k and all(n["split"] == "train" for n in rec["neighbours"])
        images = [p["image"] for p in rec["prompt"]["parts"] if isinstance(p, dict)]
        expected = ["case"] if variant == "grounded" else [n["case_id"] for n in rec["neighbours"]] + ["case"]
        assert images == expected
    assert {rec["ground_truth"] for rec in records} == {"normal", "pneumonia"}


def test_task2_report_with_template_backend(data_root, random_checkpoint, small_index, limited, tmp_path, monkeypatch, capsys) -> None:
    """`casereview report task2`: samples with images, labelled template output, and the GPU command."""
    monkeypatch.setenv("CASEREVIEW_CLASSIFIER_CHECKPOINT", str(random_checkpoint))
    out = tmp_path / "reports"
    out.mkdir()
    (out / "task2_test_9999.png").write_bytes(b"an earlier run's sample")
    rc = main(["report", "task2", "--data-root", str(data_root), "--workdir", str(small_index), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    md = (out / "task2_report_generation.md").read_text()
    assert not (out / "task2_test_9999.png").exists()  # a regenerated report leaves no stale case image
    assert "**MedGemma could not run here.**" in md
    assert "CASEREVIEW_REPORTER_BACKEND=medgemma casereview report task2" in md and "../shared" not in md
    images = sorted(p.name for p in out.glob("task2_test_*.png"))
    assert len(images) >= 10 and all(f"]({name})" in md for name in images)
    assert md.count("[template backend: not a vision-language model.") == 1  # one example, not one per case
    assert "VLM `" not in md  # no VLM column when no VLM ran
    for variant in ("grounded", "grounded_skeptical", "minimal", "structured", "visual_fewshot"):
        assert f"| `{variant}` |" in md
    # the validation comparison: every arm in exactly one row; the template variants write the same report
    named = [line.split(" | ")[0].removeprefix("| ").split(" = ") for line in md.splitlines()
             if line.startswith("| ") and "% [" in line]  # the rows with bootstrap intervals
    for arm in ("template-grounded", "classifier-alone", "neighbour-vote", "template-follows-neighbours"):
        assert sum(arm in names for names in named) == 1
    assert any({"template-grounded", "template-minimal", "template-visual_fewshot"} <= set(names) for names in named)
    assert "Variant choice" not in md  # the template ignores the prompt: nothing to choose
    # served by ONNX Runtime: the checkpoint's sha256 and the graph's, each named for what it is
    served = open_classifier(random_checkpoint)
    assert (f"Classifier checkpoint sha256 `{sha256_file(random_checkpoint)[:16]}`, served as its ONNX export "
            f"(ONNX graph sha256 `{sha256_file(onnx_file(random_checkpoint))[:16]}`)") in md
    assert served.runtime == "onnx" and served.sha256 != served.checkpoint_sha256
    batch = out / "task2_batch" / "report.md"  # the batch report it cites, beside it
    assert "](task2_batch/report.md)" in md and batch.is_file()
    links = [line.split("](")[1].split(")")[0] for line in batch.read_text().splitlines() if line.startswith("[val:")]
    assert links and all((batch.parent / link).is_file() for link in links)


@pytest.mark.slow
def test_task2_report_vlm_branch(data_root, random_checkpoint, small_index, tiny_vlm_dir, tmp_path) -> None:  # noqa: F811
    """The VLM rows and columns render (the tiny random model's text only ever lands in tmp_path)."""
    settings = load_settings(overrides={
        "data": {"root": data_root}, "paths": {"workdir": small_index},
        "classifier": {"checkpoint": random_checkpoint}, "index": {"limit": LIMIT},
        "reporter": {"backend": "medgemma", "model_id": str(tiny_vlm_dir), "max_new_tokens": 4, "device": "cpu"},
    })
    md = write_task2_report(settings, tmp_path, n_samples=2, n_eval=4).read_text()
    assert "MedGemma could not run here" not in md
    assert "written by backend `medgemma`" in md
    assert "| VLM `grounded` | VLM `grounded_skeptical` | VLM `minimal` | VLM `structured` | VLM `visual_fewshot` |" in md
    # one measured row per variant on validation, arms with identical outputs named together in one row
    model_rows = [line.split(" | ")[0] for line in md.splitlines() if " | model | 4 |" in line]
    named = {arm for row in model_rows for arm in row.strip("| ").split(" = ")}
    assert named == {f"medgemma-{v}" for v in ("grounded", "grounded_skeptical", "minimal", "structured", "visual_fewshot")}
    assert any(line.startswith("| classifier-alone") and " | reference | 4 |" in line for line in md.splitlines())
    verdicts = ("**Variant choice:**", "**No variant differs:**", "**No variant can be chosen:**")
    assert sum(v in md for v in verdicts) == 1  # the report always says what the sample chooses
