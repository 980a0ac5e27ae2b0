"""The Chroma case index on disk and behind a real `chroma run` server: build, open, search, rebuild, errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from case_index_support import index_settings, make_tiny_clip
from casereview.tools import chroma_storage, index_build
from casereview.tools.case_index import SQL_VARIABLES, CaseIndexError, IndexMissingError, QueryError, StaleIndexError, chroma_client, chroma_path, open_index
from casereview.tools.index_build import build_index
from casereview.tools.chroma_storage import Reclaimed, disk_usage
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


def oracle(index, query: np.ndarray, split: str, data_root: Path, k: int, exclude: str | None = None) -> list[str]:
    """Brute-force cosine top k over the LIMIT indexed images of ``split`` (``train+val``: their union,
    in that order), from freshly computed vectors."""
    ids, vectors = [], []
    for s in split.split("+"):
        data = load_split(s, data_root)
        picked = subset_indices(len(data), LIMIT)
        ids += [f"{s}:{i}" for i in picked]
        vectors.append(index.embedder.embed_images(data.images[picked]))
    sims = np.concatenate(vectors) @ query
    sims[[i == exclude for i in ids]] = -np.inf
    return [ids[i] for i in np.argsort(-sims, kind="stable")[:k]]


def test_build_stores_each_split_in_its_own_collection(pixel_index, data_root):
    for split, collection in pixel_index.collections.items():
        picked = subset_indices(len(load_split(split, data_root)), LIMIT)
        got = collection.get(include=["metadatas"])
        assert sorted(got["ids"]) == sorted(f"{split}:{i}" for i in picked)
        for case_id, meta in zip(got["ids"], got["metadatas"]):
            index = int(case_id.split(":")[1])
            assert meta == {
                "case_id": case_id,
                "split": split,
                "index": index,
                "label": CLASS_NAMES[load_split(split, data_root).labels[index]],
            }
        config = collection.configuration["hnsw"]
        assert config["space"] == "cosine" and config["ef_search"] == 200 and config["max_neighbors"] == 32
        assert collection.name.startswith(pixel_index.name) and collection.name.endswith(f"-{split}")
    assert pixel_index.provenance["embedder"] == "pixels" and pixel_index.provenance["limit"] == LIMIT
    assert pixel_index.provenance["n_items"] == 3 * LIMIT
    assert pixel_index.provenance["cpu_count"] >= 1 and pixel_index.provenance["load_avg_1m"] >= 0


def test_rebuild_is_idempotent(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, limit=10, embedder="pixels")
    first = build_index(settings, progress=False)
    again = build_index(settings, progress=False)
    assert first.built and not again.built and again.count == first.count == 30
    assert again.timings == first.timings  # the stored build, not a new one
    forced = build_index(settings, rebuild=True, progress=False)
    assert forced.built and forced.count == 30
    assert set(forced.timings) == {"load_s", "embed_s", "add_s", "build_s"}
    assert sum(c.count() for c in open_index(settings).collections.values()) == 30
    # the replaced build's collections are gone: one manifest and three split collections remain
    assert len(chroma_client(settings).list_collections()) == 4


def _collection_names(settings) -> set[str]:
    return {c.name for c in chroma_client(settings).list_collections()}


def test_interrupted_rebuild_leaves_the_working_index(tmp_path, data_root, monkeypatch):
    settings = index_settings(tmp_path, data_root, limit=10, embedder="pixels")
    build_index(settings, progress=False)
    image = load_split("test", data_root).images[5]
    working = open_index(settings)
    before = [h.case_id for h in working.search_image(image, 5)]
    real_add = index_build._add
    added = []

    def add_then_fail(collection, ids, vectors, metadatas, progress):
        added.append(collection.name)
        if len(added) == 2:  # the val collection half built
            real_add(collection, ids[:4], vectors[:4], metadatas[:4], progress)
            raise RuntimeError("injected failure")
        real_add(collection, ids, vectors, metadatas, progress)

    monkeypatch.setattr(index_build, "_add", add_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        build_index(settings, rebuild=True, progress=False)
    assert added[0] not in {c.name for c in working.collections.values()}  # it built beside the working index
    index = open_index(settings)
    assert [h.case_id for h in index.search_image(image, 5)] == before
    assert index.provenance == working.provenance
    assert _collection_names(settings) == {index.name, *(c.name for c in index.collections.values())}  # cleaned up

    # A build killed before it could clean up leaves its collections: ignored, then removed by the next build.
    added.clear()
    monkeypatch.setattr(index_build, "_drop", lambda client, names: None)
    with pytest.raises(RuntimeError, match="injected"):
        build_index(settings, rebuild=True, progress=False)
    assert set(added) <= _collection_names(settings)
    assert [h.case_id for h in open_index(settings).search_image(image, 5)] == before
    monkeypatch.undo()
    assert not build_index(settings, progress=False).built  # the working index is up to date
    assert len(_collection_names(settings)) == 4 and not set(added) & _collection_names(settings)


def _hnsw_folders(folder: Path) -> dict[str, int]:
    """The HNSW folders in a Chroma folder (the ones hnswlib wrote a header into) and their bytes."""
    return {d.name: sum(f.stat().st_size for f in d.iterdir()) for d in folder.iterdir() if (d / "header.bin").is_file()}


def test_rebuilds_and_a_killed_build_leave_no_segment_folders(tmp_path, data_root, capsys, monkeypatch):
    from casereview.cli import main

    monkeypatch.setattr(chroma_storage, "COMPACT_MIN_FREE", 0)  # a tiny index frees less than a full one

    """Chroma's delete_collection leaves the collection's HNSW folder on disk: a build removes every one
    that no collection uses, and nothing else."""
    settings = index_settings(tmp_path, data_root, limit=LIMIT, embedder="pixels")
    chroma = chroma_path(settings)
    build_index(settings, progress=False)
    foreign = [chroma / "notes", chroma / str(uuid.uuid4())]  # not Chroma's segments, even the UUID-named one
    for folder in foreign:
        folder.mkdir()
        (folder / "keep.txt").write_text("mine")
    one_build, first = _hnsw_folders(chroma), disk_usage(chroma_path(settings))
    assert len(one_build) == 3  # one per split collection; the manifest holds no vectors
    image = load_split("test", data_root).images[INDEXED_TEST[3]]
    before = [h.case_id for h in open_index(settings).search_image(image, 5, split="test")]

    rebuilt = build_index(settings, rebuild=True, progress=False)
    after = _hnsw_folders(chroma)
    assert len(after) == 3 and not set(after) & set(one_build)  # the replaced build's folders are gone
    assert (rebuilt.reclaimed.folders, rebuilt.reclaimed.bytes) == (3, sum(one_build.values()))
    assert rebuilt.reclaimed.catalogue_bytes > 0  # chroma.sqlite3 compacted
    assert sum(after.values()) == sum(one_build.values())
    assert disk_usage(chroma_path(settings))["total"] <= first["total"]  # one build's disk, not two

    killed = subprocess.run(
        [sys.executable, "-c", "import sys, case_index_support as s; s.build_killed_mid_add(*sys.argv[1:])",
         str(tmp_path), str(data_root), str(LIMIT)],
        cwd=Path(__file__).parent, capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = _hnsw_folders(chroma)
    assert set(after) < set(left)  # the killed build's train and half-built val collections
    assert [h.case_id for h in open_index(settings).search_image(image, 5, split="test")] == before
    assert disk_usage(chroma_path(settings))["orphans"] == 0  # the killed build's collections still exist: not orphans yet
    client = chroma_client(settings)
    client.delete_collection(next(c.name for c in client.list_collections() if c.name.endswith("-train") and
                                  c.name not in {c.name for c in open_index(settings).collections.values()}))
    assert _hnsw_folders(chroma) == left  # Chroma's own delete leaves the folder: now an orphan
    usage = disk_usage(chroma_path(settings))
    assert usage["orphans"] == 1 and usage["segment_folders"] == len(left)
    assert main(["index", "list", "--embedder", "pixels", "--workdir", str(tmp_path)]) == 0
    assert (f"in {len(left)} HNSW segment folders; 1 of them ({usage['orphan_bytes'] / 1e6:.1f} MB) belong to deleted "
            "collections, the next `casereview index build` removes them") in capsys.readouterr().out

    kept = build_index(settings, progress=False)  # up to date: kept, and the killed build's leftovers removed
    assert not kept.built and kept.reclaimed.folders == len(left) - 3
    assert _hnsw_folders(chroma) == after
    usage = disk_usage(chroma_path(settings))
    assert usage["segments"] == sum(one_build.values()) and usage["orphans"] == 0
    assert usage["total"] <= first["total"]  # back to one build's disk
    assert [h.case_id for h in open_index(settings).search_image(image, 5, split="test")] == before
    assert all((folder / "keep.txt").read_text() == "mine" for folder in foreign)


def test_segment_folders_stay_when_the_catalogue_cannot_be_read(tmp_path):
    from casereview.tools.chroma_storage import remove_orphan_segments

    segment = tmp_path / str(uuid.uuid4())
    segment.mkdir()
    (segment / "header.bin").write_bytes(b"hnsw")
    assert remove_orphan_segments(tmp_path) == Reclaimed()  # no chroma.sqlite3: not a Chroma folder
    (tmp_path / "chroma.sqlite3").write_bytes(b"not a database")
    assert remove_orphan_segments(tmp_path) == Reclaimed() and segment.is_dir()


def test_index_of_the_single_collection_layout_is_rebuilt(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, limit=5, embedder="pixels")
    name = build_index(settings, progress=False).name
    client = chroma_client(settings)
    meta = {k: v for k, v in client.get_collection(name).metadata.items() if k != "build"}
    for collection in client.list_collections():
        client.delete_collection(collection.name)
    earlier = client.create_collection(name, metadata=meta, embedding_function=None)  # every split in one collection
    earlier.add(ids=["train:0"], embeddings=np.ones((1, meta["dim"]), np.float32), metadatas=[{"split": "train"}])
    with pytest.raises(IndexMissingError, match="earlier casereview.*casereview index build --embedder pixels"):
        open_index(settings)
    assert build_index(settings, progress=False).built
    index = open_index(settings)
    assert [c.count() for c in index.collections.values()] == [5, 5, 5]
    assert chroma_client(settings).get_collection(name).count() == 0  # the manifest holds no items


def test_open_index_reuses_a_loaded_classifier(tmp_path, data_root, random_checkpoint, monkeypatch):
    from casereview.training import classifier

    settings = index_settings(tmp_path, data_root, random_checkpoint, limit=8)
    build_index(settings, "cnn", progress=False)
    clf = classifier.open_classifier(random_checkpoint)
    loads = []
    real_load = classifier.load_onnx_classifier
    monkeypatch.setattr(classifier, "load_onnx_classifier", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    index = open_index(settings, "cnn", classifier=clf)
    assert index.embedder.classifier is clf and loads == []
    image = load_split("test", data_root).images[2]
    assert [h.case_id for h in index.search_image(image, 3)] == [h.case_id for h in open_index(settings, "cnn").search_image(image, 3)]
    assert len(loads) == 1  # only the open_index without a classifier loaded the checkpoint


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
    assert [h.case_id for h in hits] == oracle(pixel_index, query, "test", data_root, 5, exclude=f"test:{i}")


def test_split_filters(pixel_index, data_root):
    image = load_split("test", data_root).images[2]
    assert {h.split for h in pixel_index.search_image(image, 60, split="train+val")} <= {"train", "val"}
    assert {h.split for h in pixel_index.search_image(image, LIMIT, split="train")} == {"train"}
    assert len(pixel_index.search_image(image, 3 * LIMIT, split=None)) == 3 * LIMIT
    with pytest.raises(QueryError, match="unknown split"):
        pixel_index.search_image(image, 3, split="holdout")


def test_train_val_merge_matches_numpy_over_the_union(pixel_index, data_root):
    test = load_split("test", data_root)
    for i in (1, 17, 300):
        hits = pixel_index.search_image(test.images[i], 2 * LIMIT - 5, split="train+val")
        query = pixel_index.embedder.embed_images(test.images[i][None])[0]
        assert [h.case_id for h in hits] == oracle(pixel_index, query, "train+val", data_root, 2 * LIMIT - 5)
        assert {h.split for h in hits} == {"train", "val"}
    # a val case excludes itself; the val collection gives one spare result
    j = int(subset_indices(524, LIMIT)[3])
    image = load_split("val", data_root).images[j]
    hits = pixel_index.search_image(image, 2 * LIMIT - 1, split="train+val", exclude_case_id=f"val:{j}")
    query = pixel_index.embedder.embed_images(image[None])[0]
    assert [h.case_id for h in hits] == oracle(pixel_index, query, "train+val", data_root, 2 * LIMIT - 1, exclude=f"val:{j}")


class _Untouchable:
    """Stands in for a collection that a search must not use."""

    def __getattr__(self, name):
        raise AssertionError(f"the test collection was used ({name})")


def test_case_base_search_never_reaches_the_test_split(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, limit=3, embedder="pixels")
    build_index(settings, progress=False)
    index = open_index(settings)
    index.collections["test"] = _Untouchable()  # by construction: a case-base search never queries it
    test = load_split("test", data_root)
    queries = index.embedder.embed_images(test.images)  # every test image, most of them not in this tiny index
    ids = [f"test:{i}" for i in range(len(test))]
    train = index.search_vectors(queries, 3, "train", ids)
    both = index.search_vectors(queries, 6, "train+val", ids)
    assert all(len(row) == 3 and {h.split for h in row} == {"train"} for row in train)
    assert all(len(row) == 6 and {h.split for h in row} == {"train", "val"} for row in both)
    assert index.search_image(test.images[0], 3)[0].split == "train"
    with pytest.raises(QueryError, match="train has 3 cases"):
        index.search_vectors(queries[:1], 4, "train")


def test_many_queries_in_one_call_stay_below_sqlites_variable_limit(pixel_index, data_root):
    train = load_split("train", data_root)
    queries = pixel_index.embedder.embed_images(train.images[:1000])
    k = 35
    assert len(queries) * k > 32_766 > SQL_VARIABLES  # one Chroma call fails beyond this ("too many SQL variables")
    rows = pixel_index.search_vectors(queries, k, "train")
    picked = subset_indices(len(train), LIMIT)
    exact = np.argsort(-(queries @ pixel_index.embedder.embed_images(train.images[picked]).T), axis=1, kind="stable")[:, :k]
    assert len(rows) == len(queries)
    for row, top in zip(rows, exact):  # each row answers its own query, across chunks
        assert {h.case_id for h in row} == {f"train:{picked[j]}" for j in top}


def test_stored_vectors_pair_with_their_images(pixel_index, data_root):
    from casereview.tools.case_index import case_indices

    vectors, labels, ids = pixel_index.vectors("test")
    test = load_split("test", data_root)
    picked = case_indices(ids)
    assert list(picked) == list(subset_indices(len(test), LIMIT))  # a random subset, not the first LIMIT
    np.testing.assert_allclose(pixel_index.embedder.embed_images(test.images[picked]), vectors, atol=1e-5)
    assert list(labels) == list(test.labels[picked])


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

    from casereview.training.checkpoint import load_classifier, save_checkpoint
    from casereview.training.export import export_onnx
    from casereview.training.models import create_classifier

    torch.manual_seed(1)
    other = save_checkpoint(create_classifier("cr_resnet_small"), tmp_path / "other.safetensors", {"arch": "cr_resnet_small"})
    export_onnx(load_classifier(other, "cpu"), load_split("val", data_root).images[:8])
    built = build_index(index_settings(tmp_path, data_root, random_checkpoint, limit=8), "cnn", progress=False)
    with pytest.raises(StaleIndexError, match="other weights.*casereview index build --embedder cnn"):
        open_index(index_settings(tmp_path, data_root, other, limit=8), "cnn")
    rebuilt = build_index(index_settings(tmp_path, data_root, other, limit=8), "cnn", prune=True, progress=False)
    assert rebuilt.pruned == [built.name] and rebuilt.name != built.name
    assert open_index(index_settings(tmp_path, data_root, other, limit=8), "cnn").embedder_id == rebuilt.name
    assert not [c.name for c in chroma_client(index_settings(tmp_path, data_root)).list_collections() if c.name.startswith(built.name)]


def test_incomplete_index_is_reported(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, limit=5, embedder="pixels")
    build_index(settings, progress=False)
    open_index(settings).collections["val"].delete(ids=[f"val:{subset_indices(524, 5)[2]}"])
    index = open_index(settings)  # counts are checked per split, on first use
    assert len(index.search_vectors(index.vectors("train")[0][:1], 2, "train")[0]) == 2
    with pytest.raises(IndexMissingError, match="incomplete.*4 of 5 val items.*casereview index build --embedder pixels"):
        index.search_vectors(index.vectors("train")[0][:1], 2, "val")
    with pytest.raises(IndexMissingError, match="incomplete.*4 of 5 val items"):
        open_index(settings).verify()  # what a review run calls at start for its case-base splits
    assert build_index(settings, progress=False).built  # the build repairs it
    assert sum(c.count() for c in open_index(settings).collections.values()) == 15


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

    from casereview.tools.agent_tools import make_case_search_tool

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
        assert build_index(settings, rebuild=True, progress=False).reclaimed == Reclaimed()  # the server's disk is its own
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not (tmp_path / "chroma").exists()  # nothing was written to the on-disk default


def test_unreachable_server_is_a_clear_error(tmp_path, data_root):
    settings = index_settings(tmp_path, data_root, chroma_url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(CaseIndexError, match="cannot reach the Chroma server.*chroma run"):
        chroma_client(settings)
