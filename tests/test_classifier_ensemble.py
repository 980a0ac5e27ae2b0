"""The released ensemble: one checkpoint that loads and predicts like a single model, calibrated on validation only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import casereview.training.ensemble as ensemble_mod
from casereview.config import load_settings
from casereview.training.checkpoint import load_classifier, save_checkpoint
from casereview.training.classifier import CheckpointError, read_meta
from casereview.training.models import PerImageStandardized, create_classifier, shifted_views
from casereview.training.predict import embed_images, predict_logits, predict_proba
from split_spy import splits_read


def _member(tmp_path, seed: int, input_norm: str = "per_image", lr: float = 3e-3):
    torch.manual_seed(seed)
    model = create_classifier("cr_resnet_small", input_norm=input_norm)
    meta = {"arch": "cr_resnet_small", "input_norm": input_norm,
            "train_config": {"arch": "cr_resnet_small", "seed": seed, "lr": lr, "input_norm": input_norm, "epochs": 20},
            "calibration": {"temperature": 1.0, "threshold": 0.5}, "train_seconds": 1.0}
    return save_checkpoint(model, tmp_path / f"m{seed}.safetensors", meta)


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("ens")
    members = [_member(tmp, s) for s in (0, 1)]
    with splits_read(ensemble_mod) as seen:
        settings = load_settings(overrides={"data": {"root": data_root}})
        path = ensemble_mod.build_ensemble(settings, members, tmp / "ensemble.safetensors")
    return path, members, seen


def test_calibration_is_fitted_on_validation_only(built):
    path, _, seen = built
    assert seen == ["val"]
    cal = read_meta(path)["calibration"]
    conf = cal["conformal"]
    assert conf["alpha"] == 0.05 and conf["centre"] == cal["threshold"] and 0 <= conf["qhat"] <= 1
    assert "part B" in conf["fitted_on"] and "part A" in cal["fitted_on"] and conf["n"] == 68 + 195  # the larger halves of 135 normal and 389 pneumonia
    assert cal["temperature"] > 0 and 0 < cal["threshold"] < 1


def test_ensemble_loads_and_predicts_like_a_single_model(built):
    path, members, _ = built
    clf = load_classifier(path, "cpu")
    assert clf.arch == "ensemble" and len(clf.sha256) == 64
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    logits = predict_logits(clf, images)
    clf.model.tta_shift = 0
    single = [predict_logits(load_classifier(m, "cpu"), images) for m in members]
    assert np.allclose(predict_logits(clf, images), np.mean(single, axis=0), atol=1e-5)
    clf.model.tta_shift = read_meta(path)["tta_shift"]
    assert np.allclose(predict_logits(clf, images), logits)
    p = predict_proba(clf, images)
    assert p.shape == (6,) and np.all((p > 0) & (p < 1))
    feats = embed_images(clf, images)
    assert feats.shape == (6, 2 * 256) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # the embedding is the members' L2-normalised features side by side: cosine = mean member cosine
    parts = [embed_images(load_classifier(m, "cpu"), images) for m in members]
    assert np.allclose(feats, np.concatenate(parts, axis=1) / np.sqrt(2), atol=1e-5)


def test_members_of_different_recipes_are_refused(tmp_path, data_root):
    members = [_member(tmp_path, 0), _member(tmp_path, 1, lr=1e-3)]
    settings = load_settings(overrides={"data": {"root": data_root}})
    with pytest.raises(CheckpointError, match="one recipe"):
        ensemble_mod.build_ensemble(settings, members, tmp_path / "e.safetensors")


def test_per_image_standardisation_ignores_exposure_and_contrast():
    torch.manual_seed(0)
    model = PerImageStandardized(create_classifier("cr_resnet_small")).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        # equal up to the small epsilon that keeps a blank image finite
        assert torch.allclose(model.standardize(x), model.standardize(0.5 * x + 0.2), atol=2e-2)
        assert torch.allclose(model(x), model(0.5 * x + 0.2), rtol=2e-2, atol=2e-2)
        assert not torch.allclose(model(x), model(x ** 2), rtol=2e-2, atol=2e-2)  # not blind to content


def test_shifted_views_move_by_one_pixel_with_replicated_edges():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = shifted_views(x, 1)
    assert len(views) == 5 and torch.equal(views[0], x)
    assert torch.equal(views[4][0, 0, :, :3], x[0, 0, :, 1:]) and torch.equal(views[4][0, 0, :, 3], x[0, 0, :, 3])


def test_model_card_describes_the_ensemble(built):
    from casereview.render import render

    meta = read_meta(built[0])
    row = {k: 0.9 for k in ("roc_auc", "accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy")}
    onnx = {"sha256": "1" * 64, "opset": 17, "parity": {"n": 524, "max_abs_logit_diff": 3e-6, "min_cosine": 0.9999999,
                                                         "label_changes": 0}}
    card = render("model_card.md.j2", meta=meta, cal=meta["calibration"], sha256="0" * 64,
                  evals=[{"split": "val", "n": 524, **row}], onnx=onnx)
    assert "ensemble of 2" in card and "no seed picked" in card and "conformal" in card
    assert "classifier.onnx` (sha256 `" + "1" * 64 in card and "largest logit difference 3.0e-06" in card
    assert "casereview ensemble" in card
