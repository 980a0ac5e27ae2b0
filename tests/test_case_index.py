"""The Chroma case index on disk and behind a real `chroma run` server: build, open, search, errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from case_index_support import index_settings, make_tiny_clip
from casereview.tools.case_index import (
    CaseIndexError,
    IndexMissingError,
    QueryError,
    StaleIndexError,
    build_index,
    chroma_client,
    open_index,
)
from casereview.tools.embedders import EmbedderError
from casereview.data import CLASS_NAMES, load_split, subset_indices

LIMIT = 40  # images per split in these indexes
INDEXED_TEST = subset_indices(624, LIMIT)  # the test cases a LIMIT index holds


@pytest.fixture(scope="module")
def pixel_settings(tmp_path_factory, data_root):
    settings = index_settings(tmp_path_factory.mktemp("pixels"), data_root, limit=LIMIT, embedder="pixels")
    build_index(settings, progress=False)
    return settings


@pytest.fixture(scope="module")
def pixel_index(pixel_settings):
    return open_index(pixel_settings)


def oracle(index, query: np.ndarray, split: str, data_root: Path, k: int, exclude: int | None = None) -> list[str]:
    """Brute-force cosine top k over the LIMIT indexed images of ``split``, from freshly computed vectors."""
    data = load_split(split, data_root)
    picked = subset_indices(len(data), LIMIT)
    sims = index.embedder.embed_images(data.images[picked]) @ query
    if exclude is not None:
        sims[picked == exclude] = -np.inf
    return [f"{split}:{picked[i]}" for i in np.argsort(-sims, kind="stable")[:k]]


def test_build_stores_every_split_with_metadata(pixel_index, data_root):
    assert pixel_index.collection.count() == 3 * LIMIT
    got = pixel_index.collection.get(ids=["train:7", "test:3"], include=["metadatas"])
    for case_id, meta in zip(got["ids"], got["metadatas"]):
        split, index = case_id.split(":")
        assert meta == {
            "case_id": case_id,
            "split": split,
            "index": int(index),
            "label": CLASS_NAMES[load_split(split, data_root).labels[int(index)]],
        }
    config = pixel_index.collection.configuration["hnsw"]
    assert config["space"] == "cosine" and config["ef_search"] >= 100
    assert pixel_index.provenance["embedder"] == "pixels" and pixel_index.provenance["limit"] == LIMIT


def test_rebuild_is_idempotent(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, limit=10, embedder="pixels")
    first = build_index(settings, progress=False)
    again = build_index(settings, progress=False)
    assert first.built and not again.built and again.count == first.count == 30
    assert again.timings == first.timings  # the stored build, not a new one
    forced = build_index(settings, rebuild=True, progress=False)
    assert forced.built and forced.count == 30
    assert set(forced.timings) == {"load_s", "embed_s", "add_s", "build_s"}
    assert open_index(settings).collection.count() == 30


def test_search_image_matches_numpy_oracle(pixel_index, data_root):
    test = load_split("test", data_root)
    for i in (0, 11, 25):
        hits = pixel_index.search_image(test.images[i], 7, split="train")
        query = pixel_index.embedder.embed_images(test.images[i][None])[0]
        assert [h.case_id for h in hits] == oracle(pixel_index, query, "train", data_root, 7)
        sims = [h.similarity for h in hits]
        assert sims == sorted(sims, reverse=True)
        assert all(h.split == "train" and h.label in CLASS_NAMES for h in hits)


def test_query_case_never_retrieves_itself(pixel_index, data_root):
    i = int(INDEXED_TEST[5])
    image = load_split("test", data_root).images[i]
    with_self = pixel_index.search_image(image, 3, split="test")
    assert with_self[0].case_id == f"test:{i}" and with_self[0].similarity == pytest.approx(1.0, abs=1e-4)
    hits = pixel_index.search_image(image, 5, split="test", exclude_case_id=f"test:{i}")
    assert f"test:{i}" not in [h.case_id for h in hits]
    query = pixel_index.embedder.embed_images(image[None])[0]
    assert [h.case_id for h in hits] == oracle(pixel_index, query, "test", data_root, 5, exclude=i)


def test_split_filters(pixel_index, data_root):
    image = load_split("test", data_root).images[2]
    assert {h.split for h in pixel_index.search_image(image, 60, split="train+val")} <= {"train", "val"}
    assert {h.split for h in pixel_index.search_image(image, LIMIT, split="train")} == {"train"}
    assert len(pixel_index.search_image(image, 3 * LIMIT, split=None)) == 3 * LIMIT
    with pytest.raises(QueryError, match="unknown split"):
        pixel_index.search_image(image, 3, split="holdout")


def test_bad_k_is_a_clear_error(pixel_index, data_root):
    first = f"test:{INDEXED_TEST[0]}"
    image = load_split("test", data_root).images[INDEXED_TEST[0]]
    with pytest.raises(QueryError, match="positive"):
        pixel_index.search_image(image, 0)
    with pytest.raises(QueryError, match=f"train has {LIMIT} cases"):
        pixel_index.search_image(image, LIMIT + 1)
    with pytest.raises(QueryError, match="one is the query itself"):
        pixel_index.search_image(image, LIMIT, split="test", exclude_case_id=first)
    assert len(pixel_index.search_image(image, LIMIT - 1, split="test", exclude_case_id=first)) == LIMIT - 1


def test_missing_index_names_the_build_command(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, embedder="pixels")
    with pytest.raises(IndexMissingError, match="casereview index build --embedder pixels"):
        open_index(settings)
    chroma_client(settings)  # an empty database: still no index for this embedder
    with pytest.raises(IndexMissingError, match="casereview index build --embedder pixels"):
        open_index(settings)


def test_index_from_another_checkpoint_is_detected(tmp_path, data_root, random_checkpoint):
    import torch

    from casereview.training.checkpoint import save_checkpoint
    from casereview.training.models import create_classifier

    torch.manual_seed(1)
    other = save_checkpoint(create_classifier("cr_resnet_small"), tmp_path / "other.safetensors", {"arch": "cr_resnet_small"})
    built = build_index(index_settings(tmp_path, data_root, random_checkpoint, limit=8), "cnn", progress=False)
    with pytest.raises(StaleIndexError, match="other weights.*casereview index build --embedder cnn"):
        open_index(index_settings(tmp_path, data_root, other, limit=8), "cnn")
    rebuilt = build_index(index_settings(tmp_path, data_root, other, limit=8), "cnn", prune=True, progress=False)
    assert rebuilt.pruned == [built.collection] and rebuilt.collection != built.collection
    assert open_index(index_settings(tmp_path, data_root, other, limit=8), "cnn").embedder_id == rebuilt.collection


def test_incomplete_index_is_reported(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, limit=5, embedder="pixels")
    build_index(settings, progress=False)
    open_index(settings).collection.delete(ids=[f"val:{subset_indices(524, 5)[2]}"])
    with pytest.raises(IndexMissingError, match="incomplete.*casereview index build --embedder pixels"):
        open_index(settings)
    assert build_index(settings, progress=False).built  # the build repairs it
    assert open_index(settings).collection.count() == 15


def test_text_search_with_a_tiny_clip(tmp_path, data_root, pixel_index):
    settings = index_settings(tmp_path, data_root, limit=20, embedder="clip", clip_model=make_tiny_clip(tmp_path / "clip"))
    build_index(settings, progress=False)
    index = open_index(settings)
    hits = index.search_text("bilateral consolidation", 5, split="train")
    text = index.embedder.embed_text(["bilateral consolidation"])[0]
    picked = subset_indices(4708, 20)
    base = index.embedder.embed_images(load_split("train", data_root).images[picked])
    assert [h.case_id for h in hits] == [f"train:{picked[i]}" for i in np.argsort(-(base @ text))[:5]]
    np.testing.assert_allclose([h.similarity for h in hits], np.sort(base @ text)[::-1][:5], atol=1e-4)
    with pytest.raises(EmbedderError, match="empty"):
        index.search_text("  ", 5)
    with pytest.raises(EmbedderError, match="no text tower"):
        pixel_index.search_text("bilateral consolidation", 5)


def test_case_search_tool_uses_the_train_case_base(pixel_settings, pixel_index):
    from pydantic import ValidationError

    from casereview.tools.case_search_tool import make_case_search_tool

    tool = make_case_search_tool(pixel_settings, pixel_index)
    hits = tool.invoke({"case_ref": "test:4", "k": 3})
    assert len(hits) == 3 and {h["split"] for h in hits} == {"train"}
    assert [h["case_id"] for h in hits] == [
        n.case_id for n in pixel_index.search_image(load_split("test", pixel_settings.data.root).images[4], 3)
    ]
    with pytest.raises(ValidationError):
        tool.invoke({"case_ref": "test:4", "k": 3, "case_base": "test"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_index_on_a_chroma_server(tmp_path, data_root, pixel_index):
    port = _free_port()
    chroma = Path(sys.executable).parent / "chroma"
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        settings = index_settings(tmp_path, data_root, limit=LIMIT, embedder="pixels", chroma_url=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                chroma_client(settings)
                break
            except CaseIndexError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        with pytest.raises(IndexMissingError, match="casereview index build --embedder pixels"):
            open_index(settings)
        assert build_index(settings, progress=False).count == 3 * LIMIT
        remote = open_index(settings)
        assert remote.location == f"http://127.0.0.1:{port}"
        image = load_split("test", data_root).images[9]
        assert [h.case_id for h in remote.search_image(image, 5)] == [h.case_id for h in pixel_index.search_image(image, 5)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not (tmp_path / "chroma").exists()  # nothing was written to the on-disk default


def test_unreachable_server_is_a_clear_error(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, chroma_url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(CaseIndexError, match="cannot reach the Chroma server.*chroma run"):
        chroma_client(settings)
