"""The case index: every PneumoniaMNIST image's embedding in Chroma, one collection per split, searchable by image or text.

An index is named after its embedder and weights, ``cases-<embedder>-<sha256[:16]>``. Its
images live in one collection per split, ``<name>-<build>-<split>`` (cosine space, HNSW
parameters from ``settings.index``, one item per image with metadata ``case_id``, ``split``,
``index`` and ``label``). The collection called ``<name>`` itself holds no items: its metadata
is the index's manifest (embedder, model id, weights and data hashes, items per split, HNSW
settings, build timings) and names the build whose split collections are current. Vectors are
computed here (never by Chroma's default embedding function, which downloads a model).

This module opens and searches an index; :mod:`casereview.tools.index_build` builds one and
:mod:`casereview.tools.chroma_storage` keeps an on-disk Chroma folder small. A build writes a new set of split collections beside the working ones and points the manifest
at them only once every one is complete and read back: that single metadata write is the
switch, so a build interrupted at any point leaves the previous index as it was.

Chroma runs in process on disk (``PersistentClient``, ``<workdir>/chroma``) unless
``index.chroma_url`` names a server started with ``chroma run``. On disk, every collection deleted
here also loses its HNSW segment folder (see :mod:`casereview.tools.chroma_storage`); a server
manages its own disk.

The case base that grounds a report is ``split="train"`` (or ``"train+val"``): only those
collections are searched, so a search cannot return a test case by construction. Searching
``split="test"`` is for the within-test evaluation, with the query itself excluded.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import chromadb
import httpx
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from casereview.config import Settings
from casereview.data import CLASS_NAMES, SPLITS, parse_ref
from casereview.errors import CaseReviewError, one_line
from casereview.provenance import redact_url
from casereview.schemas import Neighbour
from casereview.tools.http_deadline import DeadlineTransport
from casereview.tools.embedders import Embedder, create_embedder, data_sha256

if TYPE_CHECKING:
    from casereview.training.classifier import Classifier

PREFIX = "cases"


# Chroma fetches the metadata of all results of one query call in one SQL statement, which fails
# ("too many SQL variables") beyond SQLite's 32,766 variables: e.g. 3,000 queries x 11 results.
SQL_VARIABLES = 20_000


class CaseIndexError(CaseReviewError):
    """The case index cannot be reached or used as asked; the message says what to do."""


class IndexMissingError(CaseIndexError):
    """No complete index for this embedder and weights; the message names the build command."""


class StaleIndexError(IndexMissingError):
    """An index exists, but it was built from other weights or another data file."""


class QueryError(CaseIndexError, ValueError):
    """A search that cannot be answered: bad k or an unknown split."""

    resumable = False  # a setting (k, a split, a variant): the same run fails the same way


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


def _http_client(host: str, port: int, ssl: bool, seconds: float) -> ClientAPI:
    """``chromadb.HttpClient`` whose every request ends within ``seconds``. chromadb's own HTTP session
    waits forever (``timeout=None``) and its constructor already asks the server three questions: it is
    built in a daemon thread given ``seconds`` (a server that never answers leaves that thread waiting
    until the process ends, not the user), then its session is replaced by one on a
    :class:`~casereview.tools.http_deadline.DeadlineTransport`."""
    made: list[Any] = []

    def connect() -> None:
        try:
            made.append(chromadb.HttpClient(host=host, port=port, ssl=ssl,
                                             settings=ChromaSettings(anonymized_telemetry=False)))
        except Exception as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=connect, daemon=True, name="chroma-connect")
    thread.start()
    thread.join(seconds)
    if not made:
        raise httpx.ReadTimeout(f"no complete answer within the deadline of {seconds:g} s")
    if isinstance(made[0], Exception):
        raise made[0]
    client, server = made[0], made[0]._server  # the FastAPI instance that holds the session (chromadb 1.x)
    session = httpx.Client(transport=DeadlineTransport(seconds), timeout=seconds)
    session.headers.update(server._session.headers)
    server._session.close()
    server._session = session
    return client


def chroma_client(settings: Settings) -> ClientAPI:
    """A client for the configured Chroma: a server at ``index.chroma_url``, else a folder on disk."""
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    url = settings.index.chroma_url
    if not url:
        try:
            return chromadb.PersistentClient(path=str(chroma_path(settings)), settings=chroma_settings)
        except Exception as exc:  # a folder this user cannot write, a catalogue that is not a database
            raise CaseIndexError(f"cannot open the case index at {chroma_path(settings)} "
                                 f"({type(exc).__name__}: {one_line(str(exc), 160)})") from exc
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise CaseIndexError(f"bad Chroma URL {redact_url(url)!r}; expected http://host:port")
    try:
        client = _http_client(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 8000),
                              parsed.scheme == "https", settings.index.chroma_timeout_s)
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
            try:
                res = self.collections[split].query(
                    query_embeddings=vectors[start : start + step], n_results=n, include=["metadatas", "distances"]
                )
            except httpx.TimeoutException as exc:  # a Chroma server that stopped answering (see chroma_client)
                raise CaseIndexError(f"the Chroma server at {self.location} did not answer a search within "
                                     f"its deadline (index.chroma_timeout_s)") from exc
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


def get_collection(client: ClientAPI, name: str) -> Collection | None:
    try:
        return client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return None


def collection_names(client: ClientAPI) -> list[str]:
    return [c.name for c in client.list_collections()]


def index_names(client: ClientAPI, embedder_name: str = r"[a-z]+") -> list[str]:
    """Names of the indexes (manifests) of one embedder (default: any), any weights."""
    pattern = re.compile(rf"{PREFIX}-{embedder_name}-[0-9a-f]{{16}}")
    return [n for n in collection_names(client) if pattern.fullmatch(n)]


def split_collections(client: ClientAPI, name: str, meta: dict[str, Any], location: str, command: str) -> dict[str, Collection]:
    """The manifest's split collections (their item counts are checked by :meth:`CaseIndex.verify`)."""
    if "build" not in meta:
        raise IndexMissingError(
            f"the index {name} at {location} was built by an earlier casereview (one collection for every "
            f"split); rebuild it with `{command}`"
        )
    out = {}
    for s in SPLITS:
        collection = get_collection(client, split_collection_name(name, meta["build"], s))
        if collection is None:
            raise IndexMissingError(f"the index {name} at {location} has no {s} collection; rebuild it with `{command}`")
        out[s] = collection
    return out


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
    manifest = get_collection(client, iname)
    if manifest is None:
        others = index_names(client, name)
        if others:
            other = get_collection(client, others[0])
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
    return CaseIndex(iname, split_collections(client, iname, meta, location, command), meta, emb, location, command)


def list_indexes(settings: Settings) -> list[dict[str, Any]]:
    """Every case index at the configured location with its manifest, the items its collections hold and
    the splits whose collection is missing (such an index is incomplete: searches of that split fail)."""
    client = _existing_client(settings, settings.index.embedder)
    rows = []
    for name in index_names(client):
        manifest = get_collection(client, name)
        meta = dict(manifest.metadata or {}) if manifest is not None else {}
        found = [get_collection(client, split_collection_name(name, str(meta.get("build")), s)) for s in SPLITS]
        missing = [s for s, c in zip(SPLITS, found, strict=True) if c is None]  # an interrupted build or a deletion
        rows.append({"name": name, "count": sum(c.count() for c in found if c is not None), "missing_splits": missing, **meta})
    return rows
