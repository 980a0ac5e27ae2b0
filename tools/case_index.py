"""The case index: every PneumoniaMNIST image's embedding in Chroma, one collection per split, searchable by image or text.

An index is named after its embedder and weights, ``cases-<embedder>-<sha256[:16]>``. Its
images live in one collection per split, ``<name>-<build>-<split>`` (cosine space, HNSW
parameters from ``settings.index``, one item per image with metadata ``case_id``, ``split``,
``index`` and ``label``). The collection called ``<name>`` itself holds no items: its metadata
is the index's manifest (embedder, model id, weights and data hashes, items per split, HNSW
settings, build timings) and names the build whose split collections are current. Vectors are
computed here (never by Chroma's default embedding function, which downloads a model).

A build writes a new set of split collections beside the working ones and points the manifest
at them only once every one is complete and read back: that single metadata write is the
switch, so a build interrupted at any point leaves the previous index as it was.

Chroma runs in process on disk (``PersistentClient``, ``<workdir>/chroma``) unless
``index.chroma_url`` names a server started with ``chroma run``. On disk, every collection deleted
here also loses its HNSW segment folder (see :func:`remove_orphan_segments`); a server manages its
own disk.

The case base that grounds a report is ``split="train"`` (or ``"train+val"``): only those
collections are searched, so a search cannot return a test case by construction. Searching
``split="test"`` is for the within-test evaluation, with the query itself excluded.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
import uuid
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError
from tqdm.auto import tqdm

from casereview.config import Settings
from casereview.data import CLASS_NAMES, SPLITS, load_split, parse_ref, subset_indices
from casereview.errors import CaseReviewError, one_line
from casereview.provenance import package_versions, redact_url, utc_now
from casereview.schemas import Neighbour
from casereview.tools.embedders import CnnEmbedder, Embedder, create_embedder, data_sha256
from casereview.tools.input_gate import load_input_gate

if TYPE_CHECKING:
    from casereview.training.classifier import Classifier

PREFIX = "cases"
# Chroma fetches the metadata of all results of one query call in one SQL statement, which fails
# ("too many SQL variables") beyond SQLite's 32,766 variables: e.g. 3,000 queries x 11 results.
SQL_VARIABLES = 20_000
TIMINGS = ("load_s", "embed_s", "add_s", "build_s")  # build timings kept in the manifest
ADD_BATCH = 1000  # items per Chroma `add` (below client.get_max_batch_size(), and a finer progress bar)
SQLITE_FILE = "chroma.sqlite3"  # Chroma's catalogue in a persistent folder
# What hnswlib writes into a vector segment's folder (Chroma 1.5.9): a folder holding anything else
# is not taken for a segment folder and never removed.
COMPACT_MIN_FREE = 1_000_000  # bytes of free pages in chroma.sqlite3 worth a VACUUM (0.25 s for a full cnn index's 25 MB)
HNSW_FILES = frozenset({"header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle"})


class CaseIndexError(CaseReviewError):
    """The case index cannot be reached or used as asked; the message says what to do."""


class IndexMissingError(CaseIndexError):
    """No complete index for this embedder and weights; the message names the build command."""


class StaleIndexError(IndexMissingError):
    """An index exists, but it was built from other weights or another data file."""


class QueryError(CaseIndexError, ValueError):
    """A search that cannot be answered: bad k or an unknown split."""


def build_command(embedder: str, runtime: str = "onnx") -> str:
    torch = " --runtime torch" if embedder == "cnn" and runtime == "torch" else ""  # the index follows the served file
    return f"casereview index build --embedder {embedder}{torch}"


def index_name(embedder: Embedder) -> str:
    """``cases-<embedder>-<sha256[:16]>``: the manifest's name and the prefix of its split collections."""
    return f"{PREFIX}-{embedder.name}-{embedder.weights_sha256[:16]}"


def split_collection_name(name: str, build: str, split: str) -> str:
    return f"{name}-{build}-{split}"


def chroma_location(settings: Settings) -> str:
    """Where the index lives, as it may be shown or recorded (a server URL without its credentials)."""
    return redact_url(settings.index.chroma_url) or str(chroma_path(settings))


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
        raise CaseIndexError(f"bad Chroma URL {redact_url(url)!r}; expected http://host:port")
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
            f"cannot reach the Chroma server at {redact_url(url)} ({type(exc).__name__}: {one_line(str(exc), 160)}). Start one with "
            "`chroma run --path DIR --host 127.0.0.1 --port PORT`, or drop --chroma-url to use a folder on disk."
        ) from exc
    return client


def require_index_folder(settings: Settings, embedder: str | None = None) -> None:
    """The check of the index that needs no model, run before any loads: an on-disk index's folder
    exists (whether it holds this embedder's index is known once the embedder is built)."""
    if not settings.index.chroma_url and not chroma_path(settings).is_dir():
        raise IndexMissingError(f"no case index at {chroma_path(settings)}; build it with "
                                f"`{build_command(embedder or settings.index.embedder, settings.classifier.runtime)}`")


def _existing_client(settings: Settings, embedder: str) -> ClientAPI:
    """A client for a location that must already hold indexes (a missing folder is not created)."""
    require_index_folder(settings, embedder)
    return chroma_client(settings)


def parse_splits(split: str | None) -> tuple[str, ...]:
    """``"train"`` -> ("train",); ``"train+val"`` -> ("train", "val"); ``None`` or ``"all"`` -> every split."""
    if split is None or split == "all":
        return SPLITS
    parts = tuple(p.strip() for p in split.split("+"))
    unknown = [p for p in parts if p not in SPLITS]
    if unknown or len(set(parts)) != len(parts):
        raise QueryError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}, a sum like train+val, or all")
    return parts


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
    """An opened, complete index: one Chroma collection per split, its manifest and the embedder that built it."""

    name: str  # cases-<embedder>-<sha256[:16]>
    collections: dict[str, Collection]  # split -> the current build's collection
    meta: dict[str, Any]  # the manifest
    embedder: Embedder
    location: str
    command: str  # how to build it again
    _verified: set[str] = field(default_factory=set, repr=False)

    def verify(self, splits: tuple[str, ...] | list[str] = SPLITS) -> None:
        """Check that each split's collection holds the items the manifest promises, once per split.

        Counting loads a collection's segment (about 0.1 s each), so it happens on first use of a
        split, or here when the caller wants a broken index to fail before any work starts."""
        for s in splits:
            if s in self._verified:
                continue
            found = self.collections[s].count()
            if found != self.count(s):
                raise IndexMissingError(
                    f"the index {self.name} at {self.location} is incomplete ({found} of {self.count(s)} {s} items); "
                    f"rebuild it with `{self.command}`"
                )
            self._verified.add(s)

    @property
    def embedder_id(self) -> str:
        """The index's name: embedder and the first 16 hex digits of its weights' sha256."""
        return self.name

    @property
    def provenance(self) -> dict[str, Any]:
        """Embedder, model id, weights/checkpoint/data hashes, HNSW settings, build timings and collections."""
        names = {s: c.name for s, c in self.collections.items()}
        return {"name": self.name, "location": self.location, "collections": names, **self.meta}

    def count(self, split: str) -> int:
        return int(self.meta[f"n_{split}"])

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int,
        split: str | None = "train",
        exclude_case_ids: list[str | None] | None = None,
    ) -> list[list[Neighbour]]:
        """The k nearest cases of ``split`` for each unit vector, most similar first.

        Only the collections of ``split`` are queried (``train+val``: both, merged by
        similarity). ``exclude_case_ids[i]`` (e.g. the query's own id) never appears in row i;
        the collection that holds it is asked for one result more.
        """
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        exclude = list(exclude_case_ids) if exclude_case_ids is not None else [None] * len(vectors)
        if len(exclude) != len(vectors):
            raise QueryError(f"{len(exclude)} excluded ids for {len(vectors)} queries")
        splits = parse_splits(split)
        if not isinstance(k, int) or k <= 0:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        own = {e.split(":")[0] for e in exclude if e is not None} & set(splits)  # splits holding a query's own case
        available = sum(self.count(s) for s in splits)
        if k + bool(own) > available:
            raise QueryError(
                f"k={k} is larger than the case base: {split or 'all'} has {available} cases"
                + (" (one is the query itself)" if own else "")
            )
        rows: list[list[Neighbour]] = [[] for _ in vectors]
        for s in splits:
            for row, hits in zip(rows, self._query(s, vectors, min(k + (s in own), self.count(s)))):
                row += hits
        # sorted() is stable: equal similarities keep split order, then Chroma's rank
        return [
            sorted((h for h in row if h.case_id != excluded), key=lambda h: -h.similarity)[:k]
            for row, excluded in zip(rows, exclude)
        ]

    def _query(self, split: str, vectors: np.ndarray, n: int) -> list[list[Neighbour]]:
        """The n nearest items of one split collection per query, in chunks that stay below SQLite's variable limit."""
        out: list[list[Neighbour]] = []
        step = max(1, SQL_VARIABLES // n)
        self.verify([split])
        for start in range(0, len(vectors), step):
            res = self.collections[split].query(
                query_embeddings=vectors[start : start + step], n_results=n, include=["metadatas", "distances"]
            )
            out += [[_neighbour(m, d) for m, d in zip(ms, ds)] for ms, ds in zip(res["metadatas"], res["distances"])]
        return out

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
        if split not in SPLITS:
            raise QueryError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.verify([split])
        got = self.collections[split].get(include=["embeddings", "metadatas"])
        order = np.argsort([m["index"] for m in got["metadatas"]])
        metas = [got["metadatas"][i] for i in order]
        vectors = np.asarray(got["embeddings"], dtype=np.float32)[order]
        labels = np.array([CLASS_NAMES.index(m["label"]) for m in metas], dtype=np.int64)
        return vectors, labels, [m["case_id"] for m in metas]


def case_indices(case_ids: list[str]) -> np.ndarray:
    """Dataset indices of ``split:index`` case ids (to pair stored vectors with their images)."""
    return np.array([parse_ref(c)[1] for c in case_ids], dtype=np.int64)


@dataclass
class Reclaimed:
    """What the items of deleted collections took in an on-disk Chroma and a build freed."""

    folders: int = 0
    bytes: int = 0  # of those folders
    catalogue_bytes: int = 0  # by which compacting chroma.sqlite3 shrank it

    def __add__(self, other: Reclaimed) -> Reclaimed:
        return Reclaimed(self.folders + other.folders, self.bytes + other.bytes, self.catalogue_bytes + other.catalogue_bytes)


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


def _get(client: ClientAPI, name: str) -> Collection | None:
    try:
        return client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return None


def _names(client: ClientAPI) -> list[str]:
    return [c.name for c in client.list_collections()]


def _index_names(client: ClientAPI, embedder_name: str = r"[a-z]+") -> list[str]:
    """Names of the indexes (manifests) of one embedder (default: any), any weights."""
    pattern = re.compile(rf"{PREFIX}-{embedder_name}-[0-9a-f]{{16}}")
    return [n for n in _names(client) if pattern.fullmatch(n)]


def _split_collections(client: ClientAPI, name: str, meta: dict[str, Any], location: str, command: str) -> dict[str, Collection]:
    """The manifest's split collections (their item counts are checked by :meth:`CaseIndex.verify`)."""
    if "build" not in meta:
        raise IndexMissingError(
            f"the index {name} at {location} was built by an earlier casereview (one collection for every "
            f"split); rebuild it with `{command}`"
        )
    out = {}
    for s in SPLITS:
        collection = _get(client, split_collection_name(name, meta["build"], s))
        if collection is None:
            raise IndexMissingError(f"the index {name} at {location} has no {s} collection; rebuild it with `{command}`")
        out[s] = collection
    return out


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
    folder = chroma_path(settings)
    return remove_orphan_segments(folder) + compact_catalogue(folder)


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _segment_ids(folder: Path) -> set[str] | None:
    """The ids of every segment of every collection in the Chroma folder's catalogue (None: unreadable)."""
    try:
        with closing(sqlite3.connect(f"{(folder / SQLITE_FILE).resolve().as_uri()}?mode=ro", uri=True, timeout=10)) as db:
            return {str(row[0]) for row in db.execute("SELECT id FROM segments")}
    except sqlite3.Error:
        return None


def _segment_folder(entry: Path) -> bool:
    """A folder Chroma made for a vector segment: a plain folder named by a UUID holding only HNSW files."""
    try:
        named = str(uuid.UUID(entry.name)) == entry.name
    except ValueError:
        return False
    return (named and entry.is_dir() and not entry.is_symlink()
            and all(f.name in HNSW_FILES and f.is_file() and not f.is_symlink() for f in entry.iterdir()))


def orphan_segments(folder: Path) -> list[Path] | None:
    """Segment folders in an on-disk Chroma folder that no collection uses (None: the catalogue is unreadable).

    Chroma 1.5.9 names a collection's HNSW folder after its vector segment's id; deleting the
    collection removes its rows from ``chroma.sqlite3`` (table ``segments``) but leaves the folder,
    and neither the client nor ``chroma vacuum`` (a log purge and SQLite ``VACUUM``) removes it. The
    folders are listed before the catalogue is read: Chroma writes a segment's row when it creates the
    collection and its folder on the first add (a manifest, which holds no items, has the row and no
    folder), so a folder listed here whose collection is live is always in the catalogue read after.
    """
    if not (folder / SQLITE_FILE).is_file():
        return []
    candidates = [entry for entry in sorted(folder.iterdir()) if _segment_folder(entry)]
    live = _segment_ids(folder)
    if live is None:
        return None
    return [entry for entry in candidates if entry.name not in live]


def remove_orphan_segments(folder: Path) -> Reclaimed:
    """Delete the segment folders of deleted collections (replaced, pruned or killed builds) in one Chroma folder.

    Only direct entries of ``folder`` that :func:`orphan_segments` finds are touched; when the
    catalogue cannot be read nothing is removed."""
    reclaimed = Reclaimed()
    for entry in orphan_segments(folder) or []:
        size = _tree_bytes(entry)
        shutil.rmtree(entry)
        reclaimed += Reclaimed(1, size)
    return reclaimed


def compact_catalogue(folder: Path) -> Reclaimed:
    """``VACUUM`` chroma.sqlite3 when deleted collections left more than ``COMPACT_MIN_FREE`` bytes of free pages in it.

    SQLite keeps a deleted collection's pages for reuse, so a rebuild (new build beside the old one)
    leaves the catalogue at two builds' size for good; ``chroma vacuum`` does the same ``VACUUM`` (and a
    log purge, automatic in the databases Chroma creates now) but asks for confirmation. A ``VACUUM`` is one
    transaction: a busy or unreadable catalogue is left as it was (its free pages are reused)."""
    path = folder / SQLITE_FILE
    if not path.is_file():
        return Reclaimed()
    size = path.stat().st_size
    try:
        with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as db:
            free = db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
            if free <= COMPACT_MIN_FREE:
                return Reclaimed()
            db.execute("VACUUM")
    except sqlite3.Error:
        return Reclaimed()
    return Reclaimed(catalogue_bytes=size - path.stat().st_size)


def disk_usage(settings: Settings) -> dict[str, int] | None:
    """Bytes an on-disk index location takes: ``total``, ``sqlite`` (the catalogue, items and metadata),
    ``segments`` and ``segment_folders`` (HNSW), and ``orphans``/``orphan_bytes`` (folders the next build
    removes). None for a Chroma server, which manages its own disk."""
    if settings.index.chroma_url:
        return None
    folder = chroma_path(settings)
    segments = [entry for entry in folder.iterdir() if _segment_folder(entry)]
    orphans = orphan_segments(folder) or []
    return {
        "total": _tree_bytes(folder),
        "sqlite": sum(f.stat().st_size for f in folder.glob(f"{SQLITE_FILE}*") if f.is_file()),
        "segments": sum(_tree_bytes(entry) for entry in segments),
        "segment_folders": len(segments),
        "orphans": len(orphans),
        "orphan_bytes": sum(_tree_bytes(entry) for entry in orphans),
    }


def _other_builds(client: ClientAPI, name: str, keep: str | None) -> list[str]:
    """Split collections of ``name`` that belong to no current build (replaced or interrupted builds)."""
    return [n for n in _names(client) if n.startswith(f"{name}-") and not (keep and n.startswith(f"{name}-{keep}-"))]


def _prune(client: ClientAPI, embedder_name: str, keep: str) -> list[str]:
    """Delete the indexes of this embedder built from other weights (manifests and split collections)."""
    pruned = [n for n in _index_names(client, embedder_name) if n != keep]
    names = _names(client)
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
    others = [n for n in _index_names(client, name) if n != iname]
    manifest = _get(client, iname)
    current = dict(manifest.metadata or {}) if manifest is not None else {}
    _drop(client, _other_builds(client, iname, current.get("build")))  # left by an interrupted build
    reclaimed = _reclaim(settings)  # and the folders of those, of pruned indexes and of replaced builds
    if manifest is not None and not rebuild and _same_build(current, expected):
        try:
            CaseIndex(iname, _split_collections(client, iname, current, location, command), current, emb, location, command).verify()
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


def open_index(settings: Settings, embedder: str | None = None, *, classifier: Classifier | None = None) -> CaseIndex:
    """The complete index for ``embedder`` (default ``settings.index.embedder``) and its current weights.

    ``classifier``: an already-loaded classifier for the cnn embedder to use, so that a process
    loads the checkpoint once. Raises :class:`IndexMissingError` (naming the build command) when
    there is no complete index, and :class:`StaleIndexError` when the index was built from other
    weights or another data file.
    """
    name = embedder or settings.index.embedder
    emb = create_embedder(name, settings, classifier)
    command = build_command(name, settings.classifier.runtime)
    location = chroma_location(settings)
    client = _existing_client(settings, name)
    iname = index_name(emb)
    manifest = _get(client, iname)
    if manifest is None:
        others = _index_names(client, name)
        if others:
            other = _get(client, others[0])
            meta = (other.metadata if other is not None else None) or {}
            raise StaleIndexError(
                f"the {name} index at {location} was built from other weights ({meta.get('model_id')}, "
                f"sha256 {str(meta.get('weights_sha256', '?'))[:12]}), not the current {emb.model_id} "
                f"(sha256 {emb.weights_sha256[:12]}); rebuild it with `{command}`"
            )
        raise IndexMissingError(f"no {name} case index at {location}; build it with `{command}`")
    meta = dict(manifest.metadata or {})
    if meta.get("data_sha256") != data_sha256(settings):
        raise StaleIndexError(
            f"the {name} index at {location} was built from another data file (case ids would point at "
            f"other images); rebuild it with `{command}`"
        )
    return CaseIndex(iname, _split_collections(client, iname, meta, location, command), meta, emb, location, command)


def list_indexes(settings: Settings) -> list[dict[str, Any]]:
    """Every case index at the configured location with its manifest, the items its collections hold and
    the splits whose collection is missing (such an index is incomplete: searches of that split fail)."""
    client = _existing_client(settings, settings.index.embedder)
    rows = []
    for name in _index_names(client):
        manifest = _get(client, name)
        meta = dict(manifest.metadata or {}) if manifest is not None else {}
        found = [_get(client, split_collection_name(name, str(meta.get("build")), s)) for s in SPLITS]
        missing = [s for s, c in zip(SPLITS, found, strict=True) if c is None]  # an interrupted build or a deletion
        rows.append({"name": name, "count": sum(c.count() for c in found if c is not None), "missing_splits": missing, **meta})
    return rows
