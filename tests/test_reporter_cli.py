"""``casereview report-gen`` end to end with the template backend, a random classifier and a small case index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casereview.cli import main
from tiny_vlm import tiny_vlm_dir  # noqa: F401  (fixture)


def _args(data_root: Path, workdir: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [
        "report-gen", "--data-root", str(data_root), "--workdir", str(workdir),
        "--checkpoint", str(checkpoint), "--out", str(out), *extra,
    ]


def test_help_explains(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["report-gen", "--help"])
    text = capsys.readouterr().out
    for needle in ("--cases", "--pick", "grounded_skeptical", "visual_fewshot", "medgemma", "HF_TOKEN", "index build"):
        assert needle in text


def test_cases_with_image_only_variant(data_root, random_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(_args(data_root, tmp_path / "work", random_checkpoint, out, "--cases", "test:0,test:5", "--variant", "structured"))
    assert rc == 0
    assert "wrote 2 report(s)" in capsys.readouterr().out
    record = json.loads((out / "test_5_structured_template.json").read_text())
    assert record["case_id"] == "test:5" and record["ground_truth"] in {"normal", "pneumonia"}
    assert record["classifier"]["checkpoint_sha256"] and record["neighbours"] is None
    opinion = record["classifier"]
    assert record["report"]["parsed"]["impression"] == ("indeterminate" if opinion["uncertain"] else opinion["label"])
    assert record["report"]["raw"].startswith("[template backend: not a vision-language model")
    assert (out / record["image_file"]).is_file()
    md = (out / "test_5_structured_template.md").read_text()
    assert "![case test:5](test_5_structured_template.png)" in md and "not a vision-language model" in md


def test_grounded_without_index_says_how_to_build_it(data_root, random_checkpoint, tmp_path, capsys) -> None:
    rc = main(_args(data_root, tmp_path / "empty", random_checkpoint, tmp_path / "out", "--cases", "test:0"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "'neighbours' is undefined" in err and "casereview index build" in err


def test_bad_case_ref(data_root, random_checkpoint, tmp_path, capsys) -> None:
    rc = main(_args(data_root, tmp_path, random_checkpoint, tmp_path / "o", "--cases", "test:99999", "--variant", "minimal"))
    assert rc == 2 and "out of range" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_index(data_root, random_checkpoint, tmp_path_factory) -> Path:
    """A cnn case index of the first 200 images of each split, with the random classifier."""
    case_index = pytest.importorskip("casereview.tools.case_index")
    from casereview.config import load_settings

    workdir = tmp_path_factory.mktemp("work")
    settings = load_settings(
        overrides={
            "data": {"root": data_root},
            "paths": {"workdir": workdir},
            "classifier": {"checkpoint": random_checkpoint},
            "index": {"limit": 200},
        }
    )
    case_index.build_index(settings, progress=False)
    return workdir


@pytest.mark.parametrize("variant", ["grounded", "visual_fewshot"])
def test_pick_with_grounded_variants(data_root, random_checkpoint, small_index, tmp_path, variant, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CASEREVIEW_INDEX_LIMIT", "200")
    out = tmp_path / "out"
    rc = main(_args(data_root, small_index, random_checkpoint, out, "--pick", "4", "--variant", variant, "--k", "3"))
    assert rc == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(records) == 4
    for rec in records:
        assert rec["pick_reason"] and rec["case_id"].startswith("test:")
        assert len(rec["neighbours"]) == 3 and all(n["split"] == "train" for n in rec["neighbours"])
        expected_images = ["case"] if variant == "grounded" else [n["case_id"] for n in rec["neighbours"]] + ["case"]
        assert rec["report"]["image_refs"] == expected_images
        assert rec["report"]["provenance"]["variant"] == variant
    labels = {rec["ground_truth"] for rec in records}
    assert labels == {"normal", "pneumonia"}


def test_task2_report_with_template_backend(data_root, random_checkpoint, small_index, tmp_path, monkeypatch, capsys) -> None:
    """`casereview report task2`: samples with images, labelled template output, and the GPU command."""
    monkeypatch.setenv("CASEREVIEW_INDEX_LIMIT", "200")
    monkeypatch.setenv("CASEREVIEW_CLASSIFIER_CHECKPOINT", str(random_checkpoint))
    out = tmp_path / "reports"
    rc = main(["report", "task2", "--data-root", str(data_root), "--workdir", str(small_index), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    md = (out / "task2_report_generation.md").read_text()
    assert "**MedGemma could not run here.**" in md
    assert "CASEREVIEW_REPORTER_BACKEND=medgemma casereview report task2" in md
    images = sorted(p.name for p in out.glob("task2_test_*.png"))
    assert len(images) >= 10 and all(f"]({name})" in md for name in images)
    assert md.count("Written by the **template backend (not a VLM)**") == len(images)
    assert "VLM `" not in md  # no VLM column when no VLM ran
    for variant in ("grounded", "grounded_skeptical", "minimal", "structured", "visual_fewshot"):
        assert f"| `{variant}` |" in md


def test_task2_report_vlm_branch(data_root, random_checkpoint, small_index, tiny_vlm_dir, tmp_path) -> None:  # noqa: F811
    """The VLM rows and columns render (the tiny random model's text only ever lands in tmp_path)."""
    from casereview.config import load_settings
    from casereview.tools.reporter.task2 import write_task2_report

    settings = load_settings(
        overrides={
            "data": {"root": data_root},
            "paths": {"workdir": small_index},
            "classifier": {"checkpoint": random_checkpoint},
            "index": {"limit": 200},
            "reporter": {"backend": "medgemma", "model_id": str(tiny_vlm_dir), "max_new_tokens": 4, "device": "cpu"},
        }
    )
    md = write_task2_report(settings, tmp_path, n_samples=2, n_eval=4).read_text()
    assert "MedGemma could not run here" not in md
    assert "written by backend `medgemma`" in md
    assert "| VLM `grounded` | VLM `grounded_skeptical` | VLM `minimal` | VLM `structured` | VLM `visual_fewshot` |" in md
    assert md.count("| medgemma |") == 5  # one measured row per variant
