"""Retrieval metrics: hand-checked definitions, and the full evaluation against a brute-force numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from case_index_support import index_settings
from casereview.tools.case_index import open_index
from casereview.tools.index_build import build_index
from casereview.evaluation.retrieval_eval import (
    evaluate_retrieval,
    knn_accuracy,
    mean_average_precision,
    precision_at_k,
    recall_at_k,
)
from casereview.data import load_split, subset_indices
from casereview.schemas import Neighbour

LIMIT = 40


def test_precision_at_k_by_hand():
    query = np.array([1, 0])
    neighbours = np.array([[1, 0, 1, 1], [1, 1, 0, 0]])
    got = precision_at_k(query, neighbours, ks=(1, 2, 4))
    assert got == pytest.approx({"p@1": 0.5, "p@2": 0.25, "p@4": (0.75 + 0.5) / 2})


def test_mean_average_precision_by_hand():
    query = np.array([1, 0])
    neighbours = np.array([[1, 0, 1], [0, 1, 1]])
    # query 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / min(3, R=5); query 1: hit at rank 1 -> 1 / min(3, R=2)
    expected = ((1 + 2 / 3) / 3 + 1 / 2) / 2
    assert mean_average_precision(query, neighbours, np.array([5, 2]), k=3) == pytest.approx(expected)


def test_knn_accuracy_majority_and_ties():
    query = np.array([1, 0, 0])
    neighbours = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    got = knn_accuracy(query, neighbours, ks=(1, 3, 4))
    # k=1: [1, 0, 1] vs [1, 0, 0]; k=3 majority: [0, 1, 1]; k=4 ties go to the nearest: [1, 0, 1]
    assert got == pytest.approx({"knn@1": 2 / 3, "knn@3": 0.0, "knn@4": 2 / 3})


def test_recall_counts_the_exact_top_k_found_and_ties_at_rank_k():
    def row(*ids):
        return [Neighbour(case_id=f"train:{i}", split="train", index=i, label="normal", similarity=0.5) for i in ids]

    base_ids = ["train:7", "train:8", "train:9", "train:10"]
    sims = np.array([[0.9, 0.8, 0.1, 0.0], [0.5, 0.2, 0.9, 0.5]])  # exact top 2: (7, 8) and (9, then 7 or 10: a tie)
    assert recall_at_k([row(7, 8), row(9, 7)], sims, base_ids, 2) == pytest.approx(1.0)
    assert recall_at_k([row(7, 9), row(9, 10)], sims, base_ids, 2) == pytest.approx(0.75)  # 10 ties 7 at rank 2
    assert recall_at_k([row(9, 10), row(8, 9)], sims, base_ids, 2) == pytest.approx(0.25)


def _oracle(queries, base, query_labels, base_labels, k, leave_one_out):
    sims = queries @ base.T
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return (base_labels[top] == query_labels[:, None]).astype(float)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory, data_root):
    settings = index_settings(tmp_path_factory.mktemp("eval"), data_root, limit=LIMIT, embedder="pixels")
    build_index(settings, progress=False)
    index = open_index(settings)
    return index, evaluate_retrieval(index, settings, latency_queries=15, progress=False)


def test_evaluation_matches_brute_force_oracle(metrics, data_root):
    index, result = metrics
    test, train = load_split("test", data_root), load_split("train", data_root)
    tq, tr = subset_indices(len(test), LIMIT), subset_indices(len(train), LIMIT)  # what the index holds
    queries = index.embedder.embed_images(test.images[tq])
    labels = test.labels[tq]
    settings = {
        "within_test": (queries, labels, True),
        "test_vs_train": (index.embedder.embed_images(train.images[tr]), train.labels[tr], False),
    }
    for name, (base, base_labels, loo) in settings.items():
        hits = _oracle(queries, base, labels, base_labels, 10, loo)
        for k in (1, 5, 10):
            assert result[name]["exact"][f"p@{k}"] == pytest.approx(hits[:, :k].mean(), abs=1e-9)
            assert result[name][f"p@{k}"] == pytest.approx(hits[:, :k].mean(), abs=1e-9)  # HNSW is exact at this size
        normal = labels == 0
        assert result[name]["per_class"]["normal"]["p@5"] == pytest.approx(hits[normal, :5].mean())
        assert result[name]["recall@10_vs_exact"] == pytest.approx(1.0)
        assert result[name]["n_queries"] == LIMIT and result[name]["n_case_base"] == LIMIT
        for failure in result[name]["failures"]:
            assert failure["p@5"] < 0.5 and len(failure["neighbours"]) == 5


def test_metrics_file_contents(metrics):
    _, result = metrics
    for name in ("within_test", "test_vs_train"):
        assert {"p@1", "p@5", "p@10", "map@10", "knn_accuracy", "chance_p@k"} <= set(result[name])
    assert result["hnsw_recall@10"] == pytest.approx({"train": 1.0, "val": 1.0, "test": 1.0})  # exact at this size
    assert result["recall_at_10_vs_exact"] == pytest.approx(1.0)
    assert result["subset"] is True  # built with a limit: must be labelled as a subset
    assert result["embedder"]["embedder"] == "pixels" and result["index"]["limit"] == LIMIT
    latency = result["latency_ms"]
    assert latency["n_queries"] == 15 and 0 < latency["search_ms"]["p50"] <= latency["search_ms"]["p95"]
    assert latency["end_to_end_ms"]["p50"] > 0 and latency["cpu_count"] >= 1 and latency["load_avg_1m"] >= 0
    assert result["packages"]["chromadb"]
