"""The case index: every PneumoniaMNIST image's embedding in a Chroma collection, searchable by image or text.

One collection per embedder and weights (``cases-<embedder>-<sha256[:16]>``), cosine space,
HNSW parameters from ``settings.index``, one item per image with metadata ``case_id``,
``split``, ``index`` and ``label``. Vectors are computed here (never by Chroma's default
embedding function, which downloads a model). The collection's metadata records its
provenance: embedder, model id, weights and data hashes, build timings.

Chroma runs in process on disk (``PersistentClient``, ``<workdir>/chroma``) unless
``index.chroma_url`` names a server started with ``chroma run``.

The case base that grounds a report is ``split="train"`` (or ``"train+val"``): a test case
then never retrieves test cases. Searching ``split="test"`` is for the within-test
evaluation, with the query itself excluded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from tqdm.auto import tqdm

from casereview.config import Settings
from casereview.errors import CaseReviewError
from casereview.provenance import package_versions, utc_now
from casereview.schemas import Neighbour
from casereview.tools.embedders import Embedder, create_embedder, data_sha256
from casereview.data import CLASS_NAMES, SPLITS, load_split, subset_indices

PREFIX = "cases"
SQL_VARIABLES = 20_000  # results fetched per Chroma query call (SQLite allows 32,766 variables)
TIMINGS = ("load_s", "embed_s", "add_s", "build_s")  # build timings kept in the collection's metadata
ADD_BATCH = 1000  # items per Chroma `add` (below client.get_max_batch_size(), and a finer progress bar)


class CaseIndexError(CaseReviewError):
    """The case index cannot be reached or used as asked; the message says what to do."""


class IndexMissingError(CaseIndexError):
    """No complete index for this embedder and weights; the message names the build command."""


class StaleIndexError(IndexMissingError):
    """An index exists, but it was built from other weights or another data file."""


class QueryError(CaseIndexError, ValueError):
    """A search that cannot be answered: bad k or an unknown split."""


def build_command(embedder: str) -> str:
    return f"casereview index build --embedder {embedder}"


def collection_name(embedder: Embedder) -> str:
    return f"{PREFIX}-{embedder.name}-{embedder.weights_sha256[:16]}"


def chroma_location(settings: Settings) -> str:
    return settings.index.chroma_url or str(chroma_path(settings))


def chroma_path(settings: Settings) -> Path:
    return settings.index.chroma_path or settings.paths.workdir / "chroma"


def chroma_client(settings: Settings) -> ClientAPI:
    """A client for the configured Chroma: a server at ``index.chroma_url``, else a folder on disk."""
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    url = settings.index.chroma_url
    if not url:
        return chromadb.PersistentClient(path=str(chroma_path(settings)), settings=chroma_settings)
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise CaseIndexError(f"bad Chroma URL {url!r}; expected http://host:port")
    try:
        client = chromadb.HttpClient(
            host=parsed.hostname,
            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https",
            settings=chroma_settings,
        )
        client.heartbeat()
    except Exception as exc:  # chromadb raises plain ValueError/ConnectionError/httpx errors here
        raise CaseIndexError(
            f"cannot reach the Chroma server at {url} ({exc}). Start one with "
            "`chroma run --path DIR --host 127.0.0.1 --port PORT`, or drop --chroma-url to use a folder on disk."
        ) from exc
    return client


def _existing_client(settings: Settings, embedder: str) -> ClientAPI:
    """A client for a location that must already hold indexes (a missing folder is not created)."""
    if not settings.index.chroma_url and not chroma_path(settings).is_dir():
        raise IndexMissingError(f"no case index at {chroma_path(settings)}; build it with `{build_command(embedder)}`")
    return chroma_client(settings)


def parse_splits(split: str | None) -> tuple[str, ...] | None:
    """``"train"`` -> ("train",); ``"train+val"`` -> ("train", "val"); ``None`` or ``"all"`` -> None (every split)."""
    if split is None or split == "all":
        return None
    parts = tuple(p.strip() for p in split.split("+"))
    unknown = [p for p in parts if p not in SPLITS]
    if unknown:
        raise QueryError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}, a sum like train+val, or all")
    return parts


def _where(splits: tuple[str, ...]) -> dict[str, Any]:
    return {"split": splits[0]} if len(splits) == 1 else {"split": {"$in": list(splits)}}


def _neighbour(meta: dict[str, Any], distance: float) -> Neighbour:
    return Neighbour(
        case_id=meta["case_id"],
        split=meta["split"],
        index=int(meta["index"]),
        label=meta["label"],
        similarity=1.0 - float(distance),
    )


@dataclass
class CaseIndex:
    """An opened, complete index together with the embedder that built it."""

    collection: Collection
    embedder: Embedder
    location: str

    @property
    def embedder_id(self) -> str:
        """The collection's name: embedder and the first 16 hex digits of its weights' sha256."""
        return self.collection.name

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.collection.metadata or {})

    @property
    def provenance(self) -> dict[str, Any]:
        """Embedder, model id, weights/checkpoint/data hashes, HNSW settings and build timings."""
        return {"collection": self.embedder_id, "location": self.location, **self.meta}

    def count(self, splits: tuple[str, ...] | None = None) -> int:
        meta = self.meta
        return int(meta["n_items"]) if splits is None else sum(int(meta[f"n_{s}"]) for s in splits)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int,
        split: str | None = "train",
        exclude_case_ids: list[str | None] | None = None,
    ) -> list[list[Neighbour]]:
        """The k nearest cases of ``split`` for each unit vector, most similar first.

        ``exclude_case_ids[i]`` (e.g. the query's own id) never appears in row i.
        """
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        exclude = list(exclude_case_ids) if exclude_case_ids is not None else [None] * len(vectors)
        if len(exclude) != len(vectors):
            raise QueryError(f"{len(exclude)} excluded ids for {len(vectors)} queries")
        splits = parse_splits(split)
        # one spare result when a query's own case may be among the results
        spare = int(any(e is not None and (splits is None or e.split(":")[0] in splits) for e in exclude))
        available = self.count(splits)
        if not isinstance(k, int) or k <= 0:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        if k + spare > available:
            raise QueryError(
                f"k={k} is larger than the case base: {split or 'all'} has {available} cases"
                + (" (one is the query itself)" if spare else "")
            )
        total = self.count()
        # Filtering on metadata makes Chroma scan its metadata store on every query (10-20 ms for
        # the train split here); an unfiltered HNSW query for enough results, filtered below, is a
        # few ms. The rare query left short falls back to Chroma's own filter.
        fetch = k + spare if splits is None else min(total, math.ceil((k + spare) * total / available * 2) + 10)

        def keep(metas: list[dict[str, Any]], dists: list[float], excluded: str | None) -> list[Neighbour]:
            hits = [
                _neighbour(m, d)
                for m, d in zip(metas, dists)
                if (splits is None or m["split"] in splits) and m["case_id"] != excluded
            ]
            return hits[:k]

        out = [keep(m, d, e) for m, d, e in zip(*self._query(vectors, fetch, None), exclude)]
        short = [i for i, hits in enumerate(out) if len(hits) < k]
        if short:
            metas, dists = self._query(vectors[short], k + spare, _where(splits) if splits else None)
            for i, m, d in zip(short, metas, dists):
                out[i] = keep(m, d, exclude[i])
        return out

    def _query(
        self, vectors: np.ndarray, n: int, where: dict[str, Any] | None
    ) -> tuple[list[list[dict[str, Any]]], list[list[float]]]:
        """Chroma queries in chunks: Chroma fetches all results' metadata in one SQL statement,
        which fails beyond SQLite's limit on variables (32,766) for many queries times many results."""
        metas: list[list[dict[str, Any]]] = []
        dists: list[list[float]] = []
        step = max(1, SQL_VARIABLES // n)
        for start in range(0, len(vectors), step):
            res = self.collection.query(
                query_embeddings=vectors[start : start + step],
                n_results=n,
                where=where,
                include=["metadatas", "distances"],
            )
            metas += res["metadatas"]
            dists += res["distances"]
        return metas, dists

    def search_image(
        self,
        image: np.ndarray,
        k: int,
        split: str | None = "train",
        exclude_case_id: str | None = None,
    ) -> list[Neighbour]:
        """The k cases of ``split`` most similar to one uint8 (28, 28) image."""
        vector = self.embedder.embed_images(np.asarray(image)[None])
        return self.search_vectors(vector, k, split, [exclude_case_id])[0]

    def search_text(self, text: str, k: int, split: str | None = "train") -> list[Neighbour]:
        """The k cases of ``split`` whose images best match a description (text-tower embedders only)."""
        return self.search_vectors(self.embedder.embed_text([text]), k, split)[0]

    def vectors(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Stored vectors of one split in index order: (vectors (N, D), labels (N,) 0/1, case ids)."""
        got = self.collection.get(where={"split": split}, include=["embeddings", "metadatas"])
        order = np.argsort([m["index"] for m in got["metadatas"]])
        metas = [got["metadatas"][i] for i in order]
        vectors = np.asarray(got["embeddings"], dtype=np.float32)[order]
        labels = np.array([CLASS_NAMES.index(m["label"]) for m in metas], dtype=np.int64)
        return vectors, labels, [m["case_id"] for m in metas]


@dataclass
class BuildReport:
    collection: str
    location: str
    count: int
    built: bool  # False: an up-to-date index was already there
    timings: dict[str, float] = field(default_factory=dict)
    other_indexes: list[str] = field(default_factory=list)  # same embedder, other weights
    pruned: list[str] = field(default_factory=list)


def _expected_meta(settings: Settings, embedder: Embedder, data_sha: str, counts: dict[str, int]) -> dict[str, Any]:
    cfg = settings.index
    meta: dict[str, Any] = {
        **{k: v for k, v in embedder.provenance().items() if v is not None},
        "data_sha256": data_sha,
        "n_items": sum(counts.values()),
        **{f"n_{s}": n for s, n in counts.items()},
        "hnsw_m": cfg.hnsw_m,
        "hnsw_ef_construction": cfg.hnsw_ef_construction,
        "hnsw_ef_search": cfg.hnsw_ef_search,
        "limit": cfg.limit or 0,  # 0: every image of each split
    }
    return meta


def _same_build(existing: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(existing.get(key) == value for key, value in expected.items())


def _collections(client: ClientAPI, embedder_name: str) -> list[Collection]:
    return [c for c in client.list_collections() if c.name.startswith(f"{PREFIX}-{embedder_name}-")]


def build_index(
    settings: Settings,
    embedder: str | None = None,
    rebuild: bool = False,
    prune: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Embed train, val and test and store them; idempotent (an up-to-date index is kept).

    ``rebuild`` rebuilds even an up-to-date index; ``prune`` deletes this embedder's indexes
    built from other weights.
    """
    started = time.perf_counter()
    name = embedder or settings.index.embedder
    emb = create_embedder(name, settings)
    load_s = time.perf_counter() - started
    limit = settings.index.limit
    splits = {s: load_split(s, settings.data.root) for s in SPLITS}
    # A limited (smoke) index takes a fixed random subset of each split, never a prefix: split
    # order is not guaranteed (the shared copy's train split is grouped by class).
    picked = {s: subset_indices(len(d), limit) for s, d in splits.items()}
    counts = {s: len(ix) for s, ix in picked.items()}
    expected = _expected_meta(settings, emb, data_sha256(settings), counts)
    client = chroma_client(settings)
    cname = collection_name(emb)
    location = chroma_location(settings)

    others = [c for c in _collections(client, name) if c.name != cname]
    pruned = []
    if prune:
        for other in others:
            client.delete_collection(other.name)
            pruned.append(other.name)
        others = []
    other_names = [c.name for c in others]

    existing = next((c for c in _collections(client, name) if c.name == cname), None)
    if existing is not None and not rebuild and _same_build(existing.metadata or {}, expected):
        if existing.count() == expected["n_items"]:
            meta = existing.metadata or {}
            timings = {k: float(meta[k]) for k in TIMINGS if k in meta}
            return BuildReport(cname, location, existing.count(), False, timings, other_names, pruned)

    t0 = time.perf_counter()
    images = np.concatenate([splits[s].images[picked[s]] for s in SPLITS])
    vectors = emb.embed_images(images, progress=progress, desc=f"embedding {len(images)} images ({name})")
    embed_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if existing is not None:
        client.delete_collection(cname)
    cfg = settings.index
    collection = client.create_collection(
        cname,
        configuration=_hnsw(cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.hnsw_ef_search),
        metadata={**expected, "dim": int(vectors.shape[1])},
        embedding_function=None,
    )
    metadatas = [
        {"case_id": f"{s}:{i}", "split": s, "index": int(i), "label": CLASS_NAMES[int(splits[s].labels[i])]}
        for s in SPLITS
        for i in picked[s]
    ]
    ids = [m["case_id"] for m in metadatas]
    _add(collection, ids, vectors, metadatas, progress)
    add_s = time.perf_counter() - t0
    _verify(collection, ids, vectors, build_command(name))
    timings = {
        "load_s": round(load_s, 3),
        "embed_s": round(embed_s, 3),
        "add_s": round(add_s, 3),
        "build_s": round(time.perf_counter() - started, 3),
    }
    collection.modify(
        metadata={
            **(collection.metadata or {}),
            **timings,
            "built_at": utc_now(),
            "chromadb": package_versions()["chromadb"] or "",
        }
    )
    return BuildReport(cname, location, collection.count(), True, timings, other_names, pruned)


def _hnsw(m: int, ef_construction: int, ef_search: int) -> dict[str, Any]:
    return {"hnsw": {"space": "cosine", "max_neighbors": m, "ef_construction": ef_construction, "ef_search": ef_search}}


def _add(collection: Collection, ids: list[str], vectors: np.ndarray, metadatas: list[dict[str, Any]], progress: bool) -> None:
    with tqdm(total=len(ids), desc="adding to Chroma", unit="item", disable=not progress) as bar:
        for start in range(0, len(ids), ADD_BATCH):
            stop = start + ADD_BATCH
            collection.add(ids=ids[start:stop], embeddings=vectors[start:stop], metadatas=metadatas[start:stop])
            bar.update(len(ids[start:stop]))


def _verify(collection: Collection, ids: list[str], vectors: np.ndarray, build: str) -> None:
    """Read every stored vector back and compare: Chroma once answered "Error getting embedding"
    for one item of a fresh index here (not reproduced since); a broken build fails loudly now."""
    try:
        got = collection.get(include=["embeddings"])
    except Exception as exc:  # chromadb.errors.InternalError and friends
        raise CaseIndexError(f"Chroma could not read back the index just built ({exc}); rerun `{build} --rebuild`") from exc
    stored = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
    if set(stored) != set(ids) or max(float(np.abs(stored[i] - v).max()) for i, v in zip(ids, vectors)) > 1e-4:
        raise CaseIndexError(f"the vectors Chroma returns differ from those added; rerun `{build} --rebuild`")


def copy_with_hnsw(index: CaseIndex, m: int, ef_construction: int, ef_search: int) -> CaseIndex:
    """The same vectors and metadata in an in-memory collection with other HNSW settings (to compare settings)."""
    got = index.collection.get(include=["embeddings", "metadatas"])
    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    name = f"{index.embedder_id}-m{m}-efc{ef_construction}-efs{ef_search}"
    if name in {c.name for c in client.list_collections()}:
        client.delete_collection(name)
    meta = {**index.meta, "hnsw_m": m, "hnsw_ef_construction": ef_construction, "hnsw_ef_search": ef_search}
    collection = client.create_collection(
        name, configuration=_hnsw(m, ef_construction, ef_search), metadata=meta, embedding_function=None
    )
    _add(collection, list(got["ids"]), np.asarray(got["embeddings"], dtype=np.float32), list(got["metadatas"]), False)
    return CaseIndex(collection, index.embedder, "in memory")


def open_index(settings: Settings, embedder: str | None = None) -> CaseIndex:
    """The complete index for ``embedder`` (default ``settings.index.embedder``) and its current weights.

    Raises :class:`IndexMissingError` (naming the build command) when there is none, and
    :class:`StaleIndexError` when the index was built from other weights or another data file.
    """
    name = embedder or settings.index.embedder
    emb = create_embedder(name, settings)
    build = build_command(name)
    location = chroma_location(settings)
    client = _existing_client(settings, name)
    cname = collection_name(emb)
    found = {c.name: c for c in _collections(client, name)}
    if cname not in found:
        if found:
            other = next(iter(found.values())).metadata or {}
            raise StaleIndexError(
                f"the {name} index at {location} was built from other weights ({other.get('model_id')}, "
                f"sha256 {str(other.get('weights_sha256', '?'))[:12]}), not the current {emb.model_id} "
                f"(sha256 {emb.weights_sha256[:12]}); rebuild it with `{build}`"
            )
        raise IndexMissingError(f"no {name} case index at {location}; build it with `{build}`")
    collection = client.get_collection(cname, embedding_function=None)
    meta = collection.metadata or {}
    if meta.get("data_sha256") != data_sha256(settings):
        raise StaleIndexError(
            f"the {name} index at {location} was built from another data file (case ids would point at "
            f"other images); rebuild it with `{build}`"
        )
    if collection.count() != meta.get("n_items"):
        raise IndexMissingError(
            f"the {name} index at {location} is incomplete ({collection.count()} of {meta.get('n_items')} items; "
            f"an interrupted build?); rebuild it with `{build}`"
        )
    return CaseIndex(collection, emb, location)


def list_indexes(settings: Settings) -> list[dict[str, Any]]:
    """Every case index at the configured location with its metadata and item count."""
    client = _existing_client(settings, settings.index.embedder)
    return [
        {"collection": c.name, "count": c.count(), **(c.metadata or {})}
        for c in client.list_collections()
        if c.name.startswith(f"{PREFIX}-")
    ]
