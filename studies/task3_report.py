"""Task 3 report (``casereview report task3``): the case index, its retrieval quality, grids and failure cases.

For each embedder in ``settings.index.report_embedders`` the index is built (kept when
up to date) and evaluated with :func:`evaluate_retrieval`; the report, its figures and
``task3_retrieval_metrics.json`` are written to ``out_dir``. The default embedder
(``settings.index.embedder``) must be available; any other that cannot be built here
(e.g. BiomedCLIP without internet access) is reported as unavailable with the reason.
Example queries are fixed by rule (the first two normal and the first two pneumonia test
images); failure cases are the test queries whose five nearest training cases disagree most.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from casereview.config import Settings
from casereview.errors import CaseReviewError
from casereview.provenance import git_commit, utc_now
from casereview.render import render
from casereview.schemas import Neighbour
from casereview.tools.case_index import CaseIndex, case_indices, open_index
from casereview.tools.index_build import build_index, copy_with_hnsw
from casereview.tools.embedders import MEDICAL_CLIP
from casereview.evaluation.retrieval_eval import KS, evaluate_retrieval, hnsw_recall
from casereview.evaluation.retrieval_figures import GridRow, save_retrieval_grid
from casereview.data import CLASS_NAMES, SPLITS, load_split

REPORT_NAME = "task3_retrieval_system.md"
METRICS_NAME = "task3_retrieval_metrics.json"
EXAMPLES_PER_CLASS = 2
FAILURES_SHOWN = 4
GRID_K = 5
CHROMA_DEFAULT_HNSW = {"m": 16, "ef_construction": 100, "ef_search": 100}  # chromadb's defaults (1.x)


def example_queries(settings: Settings) -> list[int]:
    """Test indices shown in the grids: the first ``EXAMPLES_PER_CLASS`` of each class."""
    labels = load_split("test", settings.data.root, settings.data.download).labels
    return [int(i) for c in range(len(CLASS_NAMES)) for i in np.flatnonzero(labels == c)[:EXAMPLES_PER_CLASS]]


def _grid(settings: Settings, index: CaseIndex, queries: list[int], path: Path) -> str:
    test = load_split("test", settings.data.root, settings.data.download)
    rows = [
        GridRow(f"test:{i} ({CLASS_NAMES[test.labels[i]]})", test.images[i], CLASS_NAMES[test.labels[i]],
                index.search_image(test.images[i], GRID_K, split="train"))
        for i in queries
    ]
    title = f"{index.embedder.name}: test queries, top {GRID_K} of the train case base"
    save_retrieval_grid(rows, path, settings.data.root, title)
    return path.name


def _failure_grid(settings: Settings, failures: list[dict[str, Any]], embedder: str, path: Path) -> str | None:
    if not failures:
        return None
    test = load_split("test", settings.data.root, settings.data.download)
    rows = []
    for f in failures[:FAILURES_SHOWN]:
        i = int(f["case_id"].split(":")[1])
        rows.append(GridRow(f"{f['case_id']} ({f['label']})", test.images[i], f["label"], [Neighbour(**n) for n in f["neighbours"]]))
    save_retrieval_grid(rows, path, settings.data.root, f"{embedder}: test queries whose train neighbours disagree most")
    return path.name


def _precision_chart(results: dict[str, dict[str, Any]], path: Path) -> str:
    settings_shown = ("within_test", "test_vs_train")
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    axes = fig.subplots(1, len(settings_shown), sharey=True)
    width = 0.8 / max(1, len(results))
    for ax, setting in zip(axes, settings_shown):
        for j, (name, m) in enumerate(results.items()):
            values = [m[setting][f"p@{k}"] for k in KS]
            bars = ax.bar(np.arange(len(KS)) + j * width, values, width, label=name)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        chance = next(iter(results.values()))[setting]["chance_p@k"]
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(np.arange(len(KS)) + width * (len(results) - 1) / 2, [f"P@{k}" for k in KS])
        ax.set_title(setting.replace("_", " "), fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("precision")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=120)
    return path.name


def classifier_agreement(settings: Settings, index: CaseIndex, k: int = GRID_K) -> dict[str, Any]:
    """P@k (test vs train) for test images the index's classifier gets right and wrong (cnn embedder only).

    Shows whether neighbours are independent evidence or share the classifier's mistakes.
    """
    from casereview.training.predict import predict_proba

    clf = index.embedder.classifier
    vectors, labels, case_ids = index.vectors("test")  # the indexed test images (a random subset under index.limit)
    images = load_split("test", settings.data.root, settings.data.download).images[case_indices(case_ids)]
    correct = (predict_proba(clf, images) >= clf.threshold).astype(np.int64) == labels
    hits = index.search_vectors(vectors, k, "train")
    precision = np.array([np.mean([n.label == CLASS_NAMES[y] for n in row]) for row, y in zip(hits, labels)])
    return {
        "k": k,
        "threshold": clf.threshold,
        "n_correct": int(correct.sum()),
        "n_wrong": int((~correct).sum()),
        "p_correct": float(precision[correct].mean()),
        "p_wrong": float(precision[~correct].mean()) if (~correct).any() else None,
    }


def write_task3_report(settings: Settings, out_dir: Path, latency_queries: int = 200) -> Path:
    """Build (if needed) and evaluate each report embedder, draw the figures, render the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    indexes: dict[str, CaseIndex] = {}
    unavailable: dict[str, str] = {}
    for name in dict.fromkeys([settings.index.embedder, *settings.index.report_embedders]):
        try:
            build_index(settings, name)
            indexes[name] = open_index(settings, name)
            results[name] = evaluate_retrieval(indexes[name], settings, latency_queries=latency_queries)
        except CaseReviewError as exc:
            if name == settings.index.embedder:
                raise
            unavailable[name] = str(exc)
    default = settings.index.embedder
    ours = results[default]
    # the same vectors in collections with Chroma's default HNSW settings: what the shipped settings buy
    ours["hnsw_recall@10_chroma_defaults"] = hnsw_recall(copy_with_hnsw(indexes[default], **CHROMA_DEFAULT_HNSW))
    if default == "cnn":
        ours["classifier_agreement"] = classifier_agreement(settings, indexes[default])
    (out_dir / METRICS_NAME).write_text(json.dumps(results, indent=2) + "\n")

    queries = example_queries(settings)
    grids = {name: _grid(settings, index, queries, out_dir / f"task3_grid_{name}.png") for name, index in indexes.items()}
    gap = max(
        abs(m[setting][f"p@{k}"] - m[setting]["exact"][f"p@{k}"])
        for m in results.values()
        for setting in ("within_test", "test_vs_train")
        for k in KS
    )
    hnsw_rows = [
        {**CHROMA_DEFAULT_HNSW, "label": "Chroma's defaults", "recall": ours["hnsw_recall@10_chroma_defaults"]},
        {
            "m": ours["index"]["hnsw_m"],
            "ef_construction": ours["index"]["hnsw_ef_construction"],
            "ef_search": ours["index"]["hnsw_ef_search"],
            "label": "shipped (this index)",
            "recall": ours["hnsw_recall@10"],
        },
    ]
    failures = ours["test_vs_train"]["failures"]
    # grid queries are taken by position, not by result, so some can be failure cases as well
    grid_failures = [f for f in failures if f["case_id"] in {f"test:{i}" for i in queries}]
    counts = {s: len(load_split(s, settings.data.root)) for s in SPLITS}
    train_labels = load_split("train", settings.data.root).labels
    path = out_dir / REPORT_NAME
    path.write_text(
        render(
            "task3_retrieval_system.md.j2",
            created=utc_now(),
            commit=git_commit(),
            default=default,
            results=results,
            unavailable=unavailable,
            ks=KS,
            index=settings.index,
            counts=counts,
            train_pneumonia=float(train_labels.mean()),
            queries=[f"test:{i}" for i in queries],
            grids=grids,
            failure_grid=_failure_grid(settings, failures, default, out_dir / f"task3_failures_{default}.png"),
            failures=failures[:FAILURES_SHOWN],
            grid_failures=grid_failures,
            precision_chart=_precision_chart(results, out_dir / "task3_precision_at_k.png"),
            medical_clip=MEDICAL_CLIP,
            grid_k=GRID_K,
            hnsw_rows=hnsw_rows,
            checkpoint=settings.classifier.checkpoint,
            hnsw_gap=gap,
            agreement=ours.get("classifier_agreement"),
            metrics_file=METRICS_NAME,
        )
    )
    return path
