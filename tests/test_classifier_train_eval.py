"""A one-epoch run on a slice end to end: train -> checkpoint -> load -> predict -> evaluate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import casereview.training.train as train_mod
from casereview.cli import main
from casereview.config import load_settings
from casereview.provenance import sha256_file
from casereview.training.checkpoint import load_classifier
from casereview.training.classifier import CheckpointError, read_meta
from casereview.evaluation.classifier_evaluation import evaluate
from casereview.training.predict import embed_images, predict_proba
from split_spy import splits_read


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("train")
    with splits_read(train_mod) as seen_splits:
        settings = load_settings(overrides={"data": {"root": data_root}, "train": {"epochs": 1, "limit": 256, "batch_size": 64}})
        path = train_mod.train(settings, out, show_progress=False)
    return path, seen_splits


@pytest.mark.slow
def test_training_never_reads_test_and_writes_a_full_checkpoint(trained, data_root):
    path, seen = trained
    assert "test" not in seen and set(seen) == {"train", "val"}
    meta = read_meta(path)
    cal = meta["calibration"]
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0 and 0 <= cal["threshold"] <= 1
    assert len(meta["data_sha256"]) == 64 and meta["train_config"]["epochs"] == 1
    assert meta["epochs_run"] == 1 and len(meta["history"]) == 1 and "git_commit" in meta


@pytest.mark.slow
def test_checkpoint_loads_and_predicts(trained, data_root):
    clf = load_classifier(trained[0])
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    p = predict_proba(clf, images)
    assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))
    feats = embed_images(clf, images)
    assert feats.shape[0] == 5 and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        predict_proba(clf, np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predict_proba(clf, np.zeros((2, 28, 28), dtype=np.float32))


@pytest.mark.slow
def test_evaluate_writes_metrics_predictions_and_figures(trained, data_root, tmp_path, capsys):
    """Evaluated as a user would after `casereview release CHECKPOINT --export-only`: served by ONNX Runtime,
    saliency maps from the checkpoint in torch."""
    assert main(["release", str(trained[0]), "--export-only", "--data-root", str(data_root)]) == 0
    settings = load_settings(overrides={"data": {"root": data_root}, "classifier": {"checkpoint": trained[0]}})
    m = evaluate(settings, "test", tmp_path, figures=True, n_boot=50)
    assert capsys.readouterr().err.startswith(f"evaluating {trained[0].name} (onnx) on 624 test images: predictions, "
                                              "2 x 50 bootstrap resamples, figures and saliency maps ...")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("roc_auc", "accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "threshold"):
        assert key in saved and saved[key] == pytest.approx(m[key])
    assert saved["threshold"] == pytest.approx(read_meta(trained[0])["calibration"]["threshold"])
    assert saved["runtime"] == "onnx" and saved["model_sha256"] == sha256_file(trained[0].with_suffix(".onnx"))
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == 624 and rows[42]["case_id"] == "test:42"
    assert {"case_id", "label", "prob_pneumonia", "pred"} <= set(rows[0])
    for name in ("confusion_matrix.png", "roc_pr.png", "reliability.png", "saliency.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="casereview train"):
        load_classifier(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_classifier(bad)


@pytest.mark.slow
def test_cli_reports_errors_in_one_line(trained, tmp_path, data_root, capsys):
    code = main(["evaluate", "--data-root", str(data_root), "--checkpoint", str(tmp_path / "x.safetensors"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "casereview train" in err
    code = main(["predict", "--checkpoint", str(trained[0]), "--data-root", str(tmp_path), "test:1"])
    assert code == 2 and "pneumoniamnist.npz" in capsys.readouterr().err
