"""Serving with ONNX Runtime: the export matches torch (released ensemble on validation and test, and a
fresh export of a test checkpoint), a missing, foreign or damaged export is a one-line error, the review
path imports no torch, and ``index build`` fits the input gate on the embeddings it computed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from casereview.cli import main
from casereview.config import load_settings
from casereview.data import load_split
from casereview.provenance import sha256_file
from casereview.tools import input_gate
from casereview.tools.index_build import build_index
from casereview.tools.context import fingerprint_fields
from casereview.training.checkpoint import load_classifier
from casereview.training.classifier import (
    SOURCE_KEY,
    CheckpointError,
    load_onnx_classifier,
    onnx_file,
    open_classifier,
    released_checkpoint,
)
from casereview.training.predict import predict_logits_and_embeddings

from case_index_support import index_settings

TORCH_MODULES = ("torch", "timm", "torchvision")


def top_k_match(query: np.ndarray, base_a: np.ndarray, base_b: np.ndarray, q_b: np.ndarray, k: int = 10) -> None:
    """The k nearest rows of ``base_a`` to each query equal those of ``base_b`` to ``q_b``, up to ties at
    rank k (a swapped pair must be within 1e-5 in similarity of the k-th)."""
    sim_a, sim_b = query @ base_a.T, q_b @ base_b.T
    for i in range(len(query)):
        a, b = np.argsort(-sim_a[i], kind="stable")[:k], np.argsort(-sim_b[i], kind="stable")[:k]
        for j in set(a) ^ set(b):
            assert abs(sim_a[i, j] - sim_a[i, a[-1]]) <= 1e-5, f"query {i}: neighbour {j} is no tie at rank {k}"


@pytest.mark.slow
def test_released_export_matches_torch_on_val_and_test(data_root):
    """Issue 19's parity: logits within 1e-4, no label change at the shipped threshold, embeddings' cosine
    at least 0.99999, and the same top-10 train neighbours for every test query."""
    torch_clf, onnx_clf = load_classifier(None, "cpu"), open_classifier(None, "onnx", threads=0)
    assert onnx_clf.checkpoint_sha256 == torch_clf.sha256 and onnx_clf.sha256 == sha256_file(onnx_file(released_checkpoint()))
    out = {}
    for split in ("train", "val", "test"):
        images = load_split(split, data_root).images
        out[split] = predict_logits_and_embeddings(torch_clf, images), predict_logits_and_embeddings(onnx_clf, images)
    t = np.log(torch_clf.threshold / (1 - torch_clf.threshold)) * torch_clf.temperature
    for split in ("val", "test"):
        (lt, et), (lo, eo) = out[split]
        assert np.abs(lt - lo).max() <= 1e-4
        assert ((lt >= t) == (lo >= t)).all()
        assert (et * eo).sum(axis=1).min() >= 0.99999
    (_, train_t), (_, train_o) = out["train"]
    (_, test_t), (_, test_o) = out["test"]
    top_k_match(test_t, train_t, train_o, test_o)


def test_export_names_its_checkpoint_and_serves_like_torch(random_checkpoint, data_root):
    import onnx

    images = load_split("val", data_root).images[:40]
    served, torch_clf = open_classifier(random_checkpoint), load_classifier(random_checkpoint, "cpu")
    props = {p.key: p.value for p in onnx.load(str(onnx_file(random_checkpoint))).metadata_props}
    assert props[SOURCE_KEY] == sha256_file(random_checkpoint) == served.checkpoint_sha256
    (lo, eo), (lt, et) = predict_logits_and_embeddings(served, images), predict_logits_and_embeddings(torch_clf, images)
    assert served.runtime == "onnx" and np.abs(lo - lt).max() <= 1e-4 and (eo * et).sum(axis=1).min() >= 0.99999


def test_export_only_writes_the_onnx_beside_the_checkpoint(random_checkpoint, tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(data_root))
    ckpt = Path(shutil.copy(random_checkpoint, tmp_path / "mine.safetensors"))
    assert main(["release", str(ckpt), "--export-only"]) == 0
    assert "against torch on 524 validation films" in capsys.readouterr().out
    assert load_onnx_classifier(ckpt).checkpoint_sha256 == sha256_file(ckpt)


def test_export_without_the_onnx_package_is_a_one_line_error(random_checkpoint, tmp_path, capsys, monkeypatch):
    import importlib.util

    from casereview.training import export

    real = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    monkeypatch.setattr("casereview.training.release.load_classifier", lambda *a: pytest.fail("a model was loaded"))
    ckpt = Path(shutil.copy(random_checkpoint, tmp_path / "mine.safetensors"))
    assert main(["release", str(ckpt), "--export-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the onnx package: pip install onnx" in err
    assert not onnx_file(ckpt).exists()


def broken(kind: str, random_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the test checkpoint whose ONNX export is missing, exported from another checkpoint, or cut short."""
    ckpt = Path(shutil.copy(random_checkpoint, tmp_path / "ckpt.safetensors"))
    if kind == "foreign":
        other = tmp_path / "other.safetensors"
        from casereview.training.checkpoint import save_checkpoint

        save_checkpoint(load_classifier(random_checkpoint, "cpu").model, other, {"arch": "cr_resnet_small", "x": 1})
        shutil.copy(onnx_file(random_checkpoint), onnx_file(ckpt))
        ckpt = Path(shutil.copy(other, ckpt))  # same name, other weights' metadata: its sha256 differs
    elif kind == "damaged":
        onnx_file(ckpt).write_bytes(onnx_file(random_checkpoint).read_bytes()[:5000])
    return ckpt


@pytest.mark.parametrize(("kind", "words"), [("missing", "has no ONNX export beside it"),
                                             ("foreign", "was exported from another checkpoint"),
                                             ("damaged", "is not a readable ONNX graph")])
def test_a_missing_foreign_or_damaged_export_is_a_one_line_error(kind, words, random_checkpoint, tmp_path, data_root,
                                                                  capsys, monkeypatch):
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(data_root))
    ckpt = broken(kind, random_checkpoint, tmp_path)
    with pytest.raises(CheckpointError):
        load_onnx_classifier(ckpt)
    assert main(["predict", "test:0", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and f"casereview release {ckpt} --export-only" in err
    assert main(["predict", "test:0", "--checkpoint", str(ckpt), "--runtime", "torch"]) == 0  # no silent fallback: asked for


def test_runtime_setting_from_yaml_environment_and_flag(tmp_path, monkeypatch):
    assert load_settings().classifier.runtime == "onnx"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"classifier": {"runtime": "torch"}}))
    assert load_settings(config).classifier.runtime == "torch"
    monkeypatch.setenv("CASEREVIEW_CLASSIFIER_RUNTIME", "torch")
    assert load_settings().classifier.runtime == "torch"
    assert load_settings(overrides={"classifier": {"runtime": "onnx"}}).classifier.runtime == "onnx"
    monkeypatch.setenv("CASEREVIEW_CLASSIFIER_RUNTIME", "tensorrt")
    with pytest.raises(Exception, match="classifier.runtime"):
        load_settings()


def test_the_fingerprint_follows_the_served_file(random_checkpoint):
    """A run started on one runtime does not resume on the other: the fingerprint names the runtime and the
    sha256 of the file that serves; the trained weights' sha256 is the same for both."""
    f = {rt: fingerprint_fields(load_settings(overrides={"classifier": {"checkpoint": random_checkpoint, "runtime": rt}}))
         for rt in ("onnx", "torch")}
    assert f["onnx"]["checkpoint_sha256"] == f["torch"]["checkpoint_sha256"] == sha256_file(random_checkpoint)
    assert f["onnx"]["model_sha256"] == sha256_file(onnx_file(random_checkpoint))
    assert f["torch"]["model_sha256"] == sha256_file(random_checkpoint)


@pytest.mark.slow
def test_index_build_fits_the_gate_from_its_own_embeddings(tmp_path, data_root, random_checkpoint, monkeypatch, capsys):
    """The gate that ``index build`` caches reuses the index's train and validation embeddings (no second
    pass) and equals a gate fitted from scratch to 1e-6; the first review then loads it."""
    settings = index_settings(tmp_path / "w", data_root, random_checkpoint, limit=None)
    settings = settings.model_copy(update={"gate": settings.gate.model_copy(update={"fit_limit": 300})})
    passes = []
    real_embed = input_gate.embed_images
    monkeypatch.setattr(input_gate, "embed_images", lambda *a, **k: passes.append(len(a[1])) or real_embed(*a, **k))
    build_index(settings, "cnn", progress=False)
    assert passes == [] and "input gate fitted" in capsys.readouterr().err
    clf = open_classifier(random_checkpoint)
    cached = input_gate.load_input_gate(settings, clf).model
    assert "fitting" not in capsys.readouterr().err  # loaded, not fitted again
    fresh = input_gate.fit_gate(clf, settings)
    assert passes == [300, 300]  # the fresh fit embedded its own subsets
    for name in ("stat_low", "stat_high", "class_means", "precision"):
        np.testing.assert_allclose(getattr(cached, name), getattr(fresh, name), rtol=1e-6, atol=1e-6)
    assert abs(cached.ood_threshold - fresh.ood_threshold) <= 1e-6 * max(1.0, fresh.ood_threshold)
    assert abs(cached.resize_threshold - fresh.resize_threshold) <= 1e-6


@pytest.mark.slow
def test_review_path_imports_no_torch(tmp_path, data_root):
    """``casereview review test:42`` (CLI to record, template backend, cnn embedder, released ONNX export)
    never imports torch, timm or torchvision; ``--runtime torch`` does, and gives the same opinion."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASEREVIEW_")}
    env |= {"CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(tmp_path / "w"),
            "CASEREVIEW_INDEX_LIMIT": "60", "CASEREVIEW_GATE_FIT_LIMIT": "60"}
    probe = ("import json, sys\nfrom casereview.cli import main\ncode = main(sys.argv[1:])\n"
             f"print(json.dumps([code, sorted({{m.split('.')[0] for m in sys.modules}} & {set(TORCH_MODULES)!r})]))")
    records = {}
    for runtime in ("onnx", "torch"):
        run = lambda *args: subprocess.run([sys.executable, "-c", probe, *args, "--runtime", runtime], env=env,
                                           capture_output=True, text=True, timeout=600)
        assert run("index", "build").returncode == 0
        got = run("review", "test:42", "--json", "--run-id", runtime)
        code, imported = json.loads(got.stdout.strip().splitlines()[-1])
        assert code == 0, got.stderr
        assert imported == ([] if runtime == "onnx" else sorted(TORCH_MODULES))
        records[runtime] = json.loads(next((tmp_path / "w" / "reviews" / runtime).glob("test_42*.json")).read_text())
    onnx, torch = records["onnx"], records["torch"]
    assert abs(onnx["classifier"]["prob_pneumonia"] - torch["classifier"]["prob_pneumonia"]) <= 1e-5
    assert [n["case_id"] for n in onnx["neighbours"]] == [n["case_id"] for n in torch["neighbours"]]
    assert onnx["provenance"]["settings"]["runtime"] == "onnx" and torch["provenance"]["settings"]["runtime"] == "torch"
