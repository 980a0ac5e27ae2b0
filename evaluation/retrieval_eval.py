"""Retrieval quality of a case index: Precision@k, mAP@10, per-class P@k, kNN accuracy,
HNSW recall against exact search, and query latency.

Two settings, both with test images as queries:
- ``within_test``: the case base is the test split, leave-one-out (the query itself excluded);
- ``test_vs_train``: the case base is the train split, the setting the case-review graph uses.

Definitions (a neighbour is relevant when its label equals the query's):
- P@k: the fraction of the top k that is relevant, averaged over queries;
- AP@k: (1 / min(k, R)) * sum over ranks i <= k of P@i * rel_i, where R is the number of
  relevant cases in the case base; mAP@k averages it over queries;
- kNN accuracy at k: the majority label of the top k equals the query's (a tie goes to the
  nearest neighbour's label);
- recall@10 vs exact: the share of the exact (numpy, brute-force cosine) top 10 that the
  HNSW search returns, per split collection (the index keeps one per split), with the test
  images as queries. It is the index's raw recall: Chroma is asked for 10 results, or 11 from
  the test collection, whose spare result makes room for leaving the query itself out. A
  returned case as similar as the exact 10th counts as found: the dataset holds duplicate
  images, and which of two equal cases ranks 10th is arbitrary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from casereview.config import Settings
from casereview.provenance import git_commit, package_versions, utc_now
from casereview.schemas import Neighbour
from casereview.data import CLASS_NAMES, SPLITS, load_split
from casereview.tools.case_index import CaseIndex
from casereview.tools.index_build import TIMINGS

KS = (1, 5, 10)
TIE = 1e-6  # similarities this close are equal: float32 rounding of the same pair of images
SETTINGS = {"within_test": "test", "test_vs_train": "train"}


def precision_at_k(query_labels: np.ndarray, neighbour_labels: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean P@k for each k; ``neighbour_labels`` is (Q, K) in rank order."""
    hits = neighbour_labels == np.asarray(query_labels)[:, None]
    return {f"p@{k}": float(hits[:, :k].mean()) for k in ks}


def mean_average_precision(
    query_labels: np.ndarray, neighbour_labels: np.ndarray, n_relevant: np.ndarray, k: int = 10
) -> float:
    """mAP@k with AP@k normalised by min(k, R) (see the module docstring)."""
    rel = (neighbour_labels[:, :k] == np.asarray(query_labels)[:, None]).astype(np.float64)
    precision_at_rank = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    denom = np.minimum(k, np.asarray(n_relevant)).clip(min=1)
    return float(((precision_at_rank * rel).sum(axis=1) / denom).mean())


def knn_accuracy(query_labels: np.ndarray, neighbour_labels: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Majority-vote accuracy of the top k for each k (binary labels; ties go to the nearest neighbour)."""
    out = {}
    for k in ks:
        votes = neighbour_labels[:, :k].mean(axis=1)
        pred = np.where(votes == 0.5, neighbour_labels[:, 0], (votes > 0.5).astype(np.int64))
        out[f"knn@{k}"] = float((pred == query_labels).mean())
    return out


def similarities(queries: np.ndarray, base: np.ndarray, exclude_diagonal: bool) -> np.ndarray:
    """Cosine similarities (Q, N) of unit vectors; ``exclude_diagonal`` leaves each query out (-inf)."""
    sims = queries @ base.T
    if exclude_diagonal:
        np.fill_diagonal(sims, -np.inf)
    return sims


def exact_neighbours(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices (Q, k) of the k most similar base vectors, best first (numpy brute force)."""
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def setting_metrics(
    query_labels: np.ndarray,
    neighbour_labels: np.ndarray,
    base_labels: np.ndarray,
    leave_one_out: bool,
    ks: Sequence[int] = KS,
) -> dict[str, Any]:
    """P@k, mAP@max(k), per-class P@k, kNN accuracy and the chance level of P@k for one ranking."""
    query_labels = np.asarray(query_labels)
    n_relevant = np.array([(base_labels == y).sum() for y in query_labels]) - int(leave_one_out)
    n_base = len(base_labels) - int(leave_one_out)
    kmax = max(ks)
    return {
        **precision_at_k(query_labels, neighbour_labels, ks),
        f"map@{kmax}": mean_average_precision(query_labels, neighbour_labels, n_relevant, kmax),
        "per_class": {
            name: precision_at_k(query_labels[query_labels == c], neighbour_labels[query_labels == c], ks)
            for c, name in enumerate(CLASS_NAMES)
            if (query_labels == c).any()
        },
        "knn_accuracy": knn_accuracy(query_labels, neighbour_labels, ks),
        "chance_p@k": float((n_relevant / n_base).mean()),
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3)}


def measure_latency(index: CaseIndex, images: np.ndarray, k: int = 10, split: str = "train", warmup: int = 5) -> dict[str, Any]:
    """Per-query latency over ``images`` (one query at a time): vector search alone, and image-to-results."""
    vectors = index.embedder.embed_images(images)
    for v in vectors[:warmup]:
        index.search_vectors(v, k, split)
    search, end_to_end = [], []
    for vector, image in zip(vectors, images):
        t0 = time.perf_counter()
        index.search_vectors(vector, k, split)
        search.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.search_image(image, k, split)
        end_to_end.append(time.perf_counter() - t0)
    return {
        "k": k,
        "split": split,
        "n_queries": len(images),
        "search_ms": _percentiles(search),
        "end_to_end_ms": _percentiles(end_to_end),
        "cpu_count": os.cpu_count() or 0,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other processes' share of the machine while timing
    }


def recall_at_k(hits: list[list[Neighbour]], sims: np.ndarray, base_ids: list[str], k: int) -> float:
    """The share of the exact top k that the search returned, over queries (rows of ``sims``).

    A returned case counts when it is as similar as the exact k-th (within float32 rounding):
    the dataset holds duplicate images, and which of two equal cases ranks 10th is arbitrary.
    """
    position = {case_id: j for j, case_id in enumerate(base_ids)}
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    found = [sum(sims[i, position[n.case_id]] >= kth[i] - TIE for n in row[:k]) for i, row in enumerate(hits)]
    return float(np.mean(found) / k)


@dataclass
class SettingSearch:
    """HNSW and exact top-k results of the test queries against one case base."""

    split: str
    hits: list[list[Neighbour]]  # HNSW, through the index
    exact: np.ndarray  # (Q, k) positions in the case base, numpy brute force
    base_labels: np.ndarray
    recall: float  # recall@k of hits against exact


def search_setting(index: CaseIndex, split: str, k: int = max(KS)) -> SettingSearch:
    """Test queries against the ``split`` collection (leave-one-out when ``split`` is test), by HNSW and exactly."""
    queries, query_labels, query_ids = index.vectors("test")
    leave_one_out = split == "test"
    base, base_labels, base_ids = (queries, query_labels, query_ids) if leave_one_out else index.vectors(split)
    hits = index.search_vectors(queries, k, split, query_ids if leave_one_out else None)
    sims = similarities(queries, base, exclude_diagonal=leave_one_out)
    return SettingSearch(split, hits, exact_neighbours(sims, k), base_labels, recall_at_k(hits, sims, base_ids, k))


def hnsw_recall(index: CaseIndex, k: int = max(KS)) -> dict[str, float]:
    """Raw recall@k against exact search of each split collection."""
    return {split: search_setting(index, split, k).recall for split in SPLITS}


def evaluate_retrieval(
    index: CaseIndex,
    settings: Settings,
    latency_queries: int = 200,
    n_failures: int = 20,
    progress: bool = True,
) -> dict[str, Any]:
    """All retrieval metrics of ``index`` with test queries, as a JSON-ready dict with provenance."""
    started = time.perf_counter()
    kmax = max(KS)
    _, query_labels, query_ids = index.vectors("test")
    searches = {split: search_setting(index, split, kmax) for split in tqdm(SPLITS, desc="searching", disable=not progress)}
    result: dict[str, Any] = {}
    for name, split in SETTINGS.items():
        found = searches[split]
        hits = found.hits
        labels = np.array([[CLASS_NAMES.index(n.label) for n in row] for row in hits])
        metrics = setting_metrics(query_labels, labels, found.base_labels, leave_one_out=split == "test")
        hit5 = labels[:, :5] == query_labels[:, None]
        worst = np.argsort(hit5.mean(axis=1), kind="stable")[:n_failures]  # lowest P@5 first
        result[name] = {
            **metrics,
            f"recall@{kmax}_vs_exact": found.recall,
            "exact": precision_at_k(query_labels, found.base_labels[found.exact]),
            "n_queries": len(query_labels),
            "case_base": split,
            "n_case_base": len(found.base_labels),
            # queries whose top 5 mostly disagree with them (at most 1 of 5 shares the label), by true class
            "low_p@5_queries": {
                cls: int(((hit5.mean(axis=1) <= 0.2) & (query_labels == c)).sum()) for c, cls in enumerate(CLASS_NAMES)
            },
            "failures": [
                {
                    "case_id": query_ids[i],
                    "label": CLASS_NAMES[query_labels[i]],
                    "p@5": float(hit5[i].mean()),
                    "neighbours": [n.model_dump() for n in hits[i][:5]],
                }
                for i in worst
                if hit5[i].mean() < 0.5
            ],
        }
    test_images = load_split("test", settings.data.root, settings.data.download).images
    meta = index.meta
    n_latency = min(latency_queries, int(meta["n_test"]))
    return {
        "embedder": index.embedder.provenance(),
        "index": index.provenance,
        "subset": bool(meta.get("limit")),
        **result,
        f"hnsw_recall@{kmax}": {split: found.recall for split, found in searches.items()},
        f"recall_at_{kmax}_vs_exact": min(found.recall for found in searches.values()),
        "latency_ms": measure_latency(index, test_images[:n_latency], k=kmax),
        "build_s": {k: meta[k] for k in TIMINGS if k in meta},
        "eval_s": round(time.perf_counter() - started, 2),
        "created_at": utc_now(),
        "git_commit": git_commit(),
        "packages": package_versions(),
    }
