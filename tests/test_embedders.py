"""Embedders: the registry, unit vectors, the cnn/pixels/clip specifics and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from case_index_support import index_settings, make_tiny_clip
from casereview.provenance import sha256_file
from casereview.tools.embedders import ClipEmbedder, EmbedderError, create_embedder
from casereview.data import load_split


@pytest.fixture(scope="module")
def settings(tmp_path_factory, data_root, random_checkpoint):
    return index_settings(tmp_path_factory.mktemp("emb"), data_root, random_checkpoint)


@pytest.fixture(scope="module")
def images(data_root) -> np.ndarray:
    return load_split("test", data_root).images[:12]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def test_unknown_embedder_names_the_choices(settings):
    with pytest.raises(EmbedderError, match="unknown embedder 'resnet'.*clip, cnn, pixels"):
        create_embedder("resnet", settings)


def test_the_settings_name_exactly_the_registered_embedders():
    from typing import get_args

    from casereview.config import EmbedderName
    from casereview.tools.embedders import EMBEDDERS

    assert set(get_args(EmbedderName)) == set(EMBEDDERS)  # the CLI's choices come from the settings


def test_cnn_embedder_is_the_classifier_penultimate_layer(settings, images, random_checkpoint):
    from casereview.training.checkpoint import load_classifier
    from casereview.training.predict import embed_images

    emb = create_embedder("cnn", settings)
    emb.batch_size = 5  # several batches, one of them short
    vectors = emb.embed_images(images)
    expected = embed_images(load_classifier(random_checkpoint, "cpu"), images)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert emb.provenance()["checkpoint_sha256"] == sha256_file(random_checkpoint)  # the trained weights
    assert emb.weights_sha256 == sha256_file(random_checkpoint.with_suffix(".onnx"))  # the file that served them
    assert not emb.has_text_tower


def test_cnn_embedder_reuses_a_loaded_classifier(settings, images, monkeypatch, random_checkpoint):
    from casereview.training import classifier

    clf = classifier.open_classifier(random_checkpoint)
    loads = []
    real_load = classifier.load_onnx_classifier
    monkeypatch.setattr(classifier, "load_onnx_classifier", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    shared = create_embedder("cnn", settings, classifier=clf)
    assert shared.classifier is clf and loads == []  # no second load of the checkpoint
    own = create_embedder("cnn", settings)
    assert len(loads) == 1 and own.classifier is not clf
    assert shared.weights_sha256 == own.weights_sha256
    np.testing.assert_allclose(shared.embed_images(images), own.embed_images(images), atol=1e-5)


def test_pixel_embedder_is_a_pca_fitted_on_train(settings, images, data_root):
    emb = create_embedder("pixels", settings)
    train = load_split("train", data_root).images
    np.testing.assert_allclose(emb.pca.mean_, train.reshape(len(train), -1).mean(axis=0) / 255.0, atol=1e-5)
    vectors = emb.embed_images(images)
    assert vectors.shape == (len(images), settings.index.pixels_pca_components)
    again = create_embedder("pixels", settings)
    assert again.weights_sha256 == emb.weights_sha256
    np.testing.assert_allclose(again.embed_images(images), vectors, atol=1e-5)
    other = create_embedder("pixels", settings.model_copy(update={"index": settings.index.model_copy(update={"pixels_pca_components": 8})}))
    assert other.weights_sha256 != emb.weights_sha256


def test_embedders_reject_images_that_are_not_28x28_uint8(settings, images):
    emb = create_embedder("pixels", settings)
    with pytest.raises(EmbedderError, match="uint8"):
        emb.embed_images(images.astype(np.float32))
    with pytest.raises(EmbedderError, match=r"\(N, 28, 28\)"):
        emb.embed_images(np.zeros((2, 32, 32), np.uint8))


def test_text_needs_a_text_tower(settings):
    with pytest.raises(EmbedderError, match="no text tower.*--embedder clip"):
        create_embedder("cnn", settings).embed_text(["consolidation"])


def test_tiny_clip_embeds_images_and_text(tiny_clip, images, tmp_path):
    emb = ClipEmbedder(tiny_clip, None, "cpu", batch_size=5)
    assert emb.has_text_tower
    vectors = emb.embed_images(images)
    texts = emb.embed_text(["right lower lobe consolidation", "clear lungs"])
    assert vectors.shape == (len(images), 32) and texts.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])
    # the same weights loaded again give the same vectors and hash; other weights another hash
    again = ClipEmbedder(tiny_clip, None, "cpu", batch_size=64)
    assert again.weights_sha256 == emb.weights_sha256
    np.testing.assert_allclose(again.embed_images(images), vectors, atol=1e-5)
    other = ClipEmbedder(make_tiny_clip(tmp_path / "other", seed=1), None, "cpu", batch_size=64)
    assert other.weights_sha256 != emb.weights_sha256
    with pytest.raises(EmbedderError, match="empty"):
        emb.embed_text(["   "])


def test_clip_without_weights_is_refused(tmp_path, tiny_clip):
    folder = Path(tiny_clip.removeprefix("local-dir:"))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "open_clip_config.json").write_text((folder / "open_clip_config.json").read_text())
    with pytest.raises(EmbedderError, match="holds no CLIP weights"):
        ClipEmbedder(f"local-dir:{bare}", None, "cpu", 8)
    with pytest.raises(EmbedderError, match="needs a pretrained tag or weights file"):
        ClipEmbedder("ViT-B-32", None, "cpu", 8)


HUB_MODEL = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_model_offline_fails_at_once(empty_hub_cache, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(EmbedderError, match="not in the local Hugging Face cache and the hub is switched off"):
        ClipEmbedder(HUB_MODEL, None, "cpu", 8)
    assert time.perf_counter() - start < 2


def test_hub_model_with_the_hub_unreachable_fails_after_one_short_probe(empty_hub_cache, monkeypatch):
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    start = time.perf_counter()
    with pytest.raises(EmbedderError, match=f"cannot reach the Hugging Face hub at {endpoint} \\(ConnectionRefusedError"):
        ClipEmbedder(HUB_MODEL, None, "cpu", 8)
    assert time.perf_counter() - start < 2


def test_a_cached_hub_model_needs_no_network(empty_hub_cache, monkeypatch):
    """In the cache (the layout huggingface_hub writes), nothing is probed, even offline."""
    from huggingface_hub import constants

    from casereview.tools.embedders import _require_weights

    repo = empty_hub_cache / "models--microsoft--BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "open_clip_config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _require_weights(HUB_MODEL, None)  # no error
