"""Building a case index: embed every split, write each into its own Chroma collection beside the working
ones, read it back, and switch the manifest to it in one write (see :mod:`casereview.tools.case_index`)."""

from __future__ import annotations

import os
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError
from tqdm.auto import tqdm

from casereview.config import Settings
from casereview.data import CLASS_NAMES, SPLITS, load_split, subset_indices
from casereview.locks import holding
from casereview.provenance import package_versions, utc_now
from casereview.tools.case_index import (
    CaseIndex,
    CaseIndexError,
    IndexMissingError,
    get_collection,
    index_names,
    collection_names,
    split_collections,
    build_command,
    chroma_client,
    chroma_location,
    chroma_path,
    index_name,
    split_collection_name,
)
from casereview.tools.chroma_storage import Reclaimed, reclaim
from casereview.tools.embedders import CnnEmbedder, Embedder, create_embedder, data_sha256
from casereview.tools.input_gate import load_input_gate

TIMINGS = ("load_s", "embed_s", "add_s", "build_s")  # build timings kept in the manifest


ADD_BATCH = 1000  # items per Chroma `add` (below client.get_max_batch_size(), and a finer progress bar)


@dataclass
class BuildReport:
    name: str
    location: str
    count: int
    built: bool  # False: an up-to-date index was already there
    timings: dict[str, float] = field(default_factory=dict)
    other_indexes: list[str] = field(default_factory=list)  # same embedder, other weights
    pruned: list[str] = field(default_factory=list)
    reclaimed: Reclaimed = field(default_factory=Reclaimed)  # segment folders of deleted collections removed


def _expected_meta(settings: Settings, embedder: Embedder, data_sha: str, counts: dict[str, int]) -> dict[str, Any]:
    cfg = settings.index
    return {
        **{k: v for k, v in embedder.provenance().items() if v is not None},
        "data_sha256": data_sha,
        "n_items": sum(counts.values()),
        **{f"n_{s}": n for s, n in counts.items()},
        "hnsw_m": cfg.hnsw_m,
        "hnsw_ef_construction": cfg.hnsw_ef_construction,
        "hnsw_ef_search": cfg.hnsw_ef_search,
        "limit": cfg.limit or 0,  # 0: every image of each split
    }


def _same_build(existing: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(existing.get(key) == value for key, value in expected.items())


def _drop(client: ClientAPI, names: list[str]) -> None:
    for n in names:
        try:
            client.delete_collection(n)
        except NotFoundError:
            pass


def _reclaim(settings: Settings) -> Reclaimed:
    """In an on-disk index, free what deleted collections left: their segment folders and the catalogue's free pages."""
    if settings.index.chroma_url:  # a server manages its own disk
        return Reclaimed()
    return reclaim(chroma_path(settings))


def _other_builds(client: ClientAPI, name: str, keep: str | None) -> list[str]:
    """Split collections of ``name`` that belong to no current build (replaced or interrupted builds)."""
    return [n for n in collection_names(client) if n.startswith(f"{name}-") and not (keep and n.startswith(f"{name}-{keep}-"))]


def _prune(client: ClientAPI, embedder_name: str, keep: str) -> list[str]:
    """Delete the indexes of this embedder built from other weights (manifests and split collections)."""
    pruned = [n for n in index_names(client, embedder_name) if n != keep]
    names = collection_names(client)
    _drop(client, [c for n in pruned for c in names if c == n or c.startswith(f"{n}-")])
    return pruned


def build_index(
    settings: Settings,
    embedder: str | None = None,
    rebuild: bool = False,
    prune: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Embed train, val and test and store them, one collection per split; idempotent (an up-to-date index is kept).

    ``rebuild`` rebuilds even an up-to-date index; ``prune`` deletes this embedder's indexes
    built from other weights. A (re)build writes new collections beside the working ones and
    switches to them only when they are complete; until then the working index stays usable.
    One build at a time per location: a build removes the collections other builds left behind, and in an
    on-disk Chroma the segment folders of every deleted collection (Chroma leaves them).
    """
    # One build per work folder at a time: two would both drop "the other builds' collections" (each
    # other's), and two first builds would both create the manifest.
    with holding(settings.paths.workdir / "locks" / "index-build.lock",
                 "another `casereview index build` ({holder}) is building the index of this work folder; "
                 "wait for it to finish (then this build finds its index up to date, or rerun with --rebuild)"):
        return _build(settings, embedder, rebuild, prune, progress)


def _build(settings: Settings, embedder: str | None, rebuild: bool, prune: bool, progress: bool) -> BuildReport:
    started = time.perf_counter()
    load_avg = os.getloadavg()[0]  # timings mean little without the machine's load: kept beside them
    name = embedder or settings.index.embedder
    emb = create_embedder(name, settings)
    load_s = time.perf_counter() - started
    data = {s: load_split(s, settings.data.root, settings.data.download) for s in SPLITS}
    # A limited (smoke) index takes a fixed random subset of each split, never a prefix: split
    # order is not guaranteed (the shared copy's train split is grouped by class).
    picked = {s: subset_indices(len(d), settings.index.limit) for s, d in data.items()}
    expected = _expected_meta(settings, emb, data_sha256(settings), {s: len(ix) for s, ix in picked.items()})
    client = chroma_client(settings)
    iname = index_name(emb)
    location = chroma_location(settings)
    command = build_command(name, settings.classifier.runtime)

    pruned = _prune(client, name, iname) if prune else []
    others = [n for n in index_names(client, name) if n != iname]
    manifest = get_collection(client, iname)
    current = dict(manifest.metadata or {}) if manifest is not None else {}
    _drop(client, _other_builds(client, iname, current.get("build")))  # left by an interrupted build
    reclaimed = _reclaim(settings)  # and the folders of those, of pruned indexes and of replaced builds
    if manifest is not None and not rebuild and _same_build(current, expected):
        try:
            CaseIndex(iname, split_collections(client, iname, current, location, command), current, emb, location, command).verify()
            timings = {k: float(current[k]) for k in TIMINGS if k in current}
            _prepare_gate(settings, emb)
            return BuildReport(iname, location, int(current["n_items"]), False, timings, others, pruned, reclaimed)
        except IndexMissingError:
            pass  # incomplete: build it again

    t0 = time.perf_counter()
    images = np.concatenate([data[s].images[picked[s]] for s in SPLITS])
    with emb.classifier.all_cores() if isinstance(emb, CnnEmbedder) else nullcontext():
        vectors = emb.embed_images(images, progress=progress, desc=f"embedding {len(images)} images ({name})")
    embed_s = time.perf_counter() - t0
    ends = np.cumsum([len(picked[s]) for s in SPLITS])
    _prepare_gate(settings, emb, {s: vectors[end - len(picked[s]) : end] for s, end in zip(SPLITS, ends)
                                  if len(picked[s]) == len(data[s])})

    t0 = time.perf_counter()
    build = uuid.uuid4().hex[:8]
    staged = [split_collection_name(iname, build, s) for s in SPLITS]
    try:
        start = 0
        for s, cname in zip(SPLITS, staged):
            stop = start + len(picked[s])
            _write_split(client, cname, settings, s, picked[s], data[s].labels, vectors[start:stop], progress, command)
            start = stop
    except BaseException:
        _drop(client, staged)  # the working index was never touched
        _reclaim(settings)
        raise
    timings = {
        "load_s": round(load_s, 3),
        "embed_s": round(embed_s, 3),
        "add_s": round(time.perf_counter() - t0, 3),
        "build_s": round(time.perf_counter() - started, 3),
    }
    meta = {
        **expected,
        "dim": int(vectors.shape[1]),
        "build": build,
        **timings,
        "built_at": utc_now(),
        "cpu_count": os.cpu_count() or 0,
        "load_avg_1m": round(load_avg, 2),
        "chromadb": package_versions()["chromadb"] or "",
    }
    _switch(client, manifest, iname, meta)
    _drop(client, _other_builds(client, iname, build))  # the replaced build
    reclaimed += _reclaim(settings)
    return BuildReport(iname, location, meta["n_items"], True, timings, others, pruned, reclaimed)


def _prepare_gate(settings: Settings, emb: Embedder, features: dict[str, np.ndarray] | None = None) -> None:
    """Fit and cache the input gate of the cnn embedder's classifier, on the features just computed (whole
    splits only), so that the first review after ``index build`` loads it instead of fitting it."""
    if isinstance(emb, CnnEmbedder):
        load_input_gate(settings, emb.classifier, features)


def _write_split(
    client: ClientAPI,
    cname: str,
    settings: Settings,
    split: str,
    indices: np.ndarray,
    labels: np.ndarray,
    vectors: np.ndarray,
    progress: bool,
    command: str,
) -> None:
    """Create one split's collection, add its items and read them back."""
    cfg = settings.index
    collection = client.create_collection(
        cname,
        configuration=_hnsw(cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.hnsw_ef_search),
        metadata={"split": split},
        embedding_function=None,
    )
    metadatas = [{"case_id": f"{split}:{i}", "split": split, "index": int(i), "label": CLASS_NAMES[int(labels[i])]} for i in indices]
    ids = [m["case_id"] for m in metadatas]
    _add(collection, ids, vectors, metadatas, progress)
    _verify(collection, ids, vectors, command)


def _switch(client: ClientAPI, manifest: Collection | None, name: str, meta: dict[str, Any]) -> None:
    """Make the build named in ``meta`` the current one: a single write of the manifest's metadata."""
    if manifest is not None and manifest.count() == 0:
        manifest.modify(metadata=meta)
        return
    if manifest is not None:  # an index of the earlier layout: every split in this one collection
        client.delete_collection(name)
    client.create_collection(name, metadata=meta, embedding_function=None)


def _hnsw(m: int, ef_construction: int, ef_search: int) -> dict[str, Any]:
    return {"hnsw": {"space": "cosine", "max_neighbors": m, "ef_construction": ef_construction, "ef_search": ef_search}}


def _add(collection: Collection, ids: list[str], vectors: np.ndarray, metadatas: list[dict[str, Any]], progress: bool) -> None:
    desc = f"adding to Chroma ({(collection.metadata or {}).get('split')})"
    with tqdm(total=len(ids), desc=desc, unit="item", disable=not progress) as bar:
        for start in range(0, len(ids), ADD_BATCH):
            stop = start + ADD_BATCH
            collection.add(ids=ids[start:stop], embeddings=vectors[start:stop], metadatas=metadatas[start:stop])
            bar.update(len(ids[start:stop]))


def _verify(collection: Collection, ids: list[str], vectors: np.ndarray, command: str) -> None:
    """Read every stored vector back and compare: Chroma once answered "Error getting embedding"
    for one item of a fresh index here (not reproduced since); a broken build fails loudly now."""
    try:
        got = collection.get(include=["embeddings"])
    except Exception as exc:  # chromadb.errors.InternalError and friends
        raise CaseIndexError(f"Chroma could not read back the index just built ({exc}); rerun `{command} --rebuild`") from exc
    stored = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
    if set(stored) != set(ids) or max(float(np.abs(stored[i] - v).max()) for i, v in zip(ids, vectors)) > 1e-4:
        raise CaseIndexError(f"the vectors Chroma returns differ from those added; rerun `{command} --rebuild`")


def copy_with_hnsw(index: CaseIndex, m: int, ef_construction: int, ef_search: int) -> CaseIndex:
    """The same vectors and metadata in in-memory split collections with other HNSW settings (to compare settings)."""
    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    collections = {}
    for split, source in index.collections.items():
        got = source.get(include=["embeddings", "metadatas"])
        cname = f"{index.name}-m{m}-efc{ef_construction}-efs{ef_search}-{split}"
        _drop(client, [cname])  # the in-memory client is shared by the process
        collections[split] = client.create_collection(
            cname, configuration=_hnsw(m, ef_construction, ef_search), metadata={"split": split}, embedding_function=None
        )
        _add(collections[split], list(got["ids"]), np.asarray(got["embeddings"], dtype=np.float32), list(got["metadatas"]), False)
    meta = {**index.meta, "hnsw_m": m, "hnsw_ef_construction": ef_construction, "hnsw_ef_search": ef_search}
    return CaseIndex(index.name, collections, meta, index.embedder, "in memory", index.command)
