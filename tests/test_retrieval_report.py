"""`casereview report task3` on a small index built from a random checkpoint: renders, labels what it must."""

from __future__ import annotations

import json

import numpy as np
import pytest

from case_index_support import index_settings
from casereview.data import load_split
from casereview.studies.task3_report import METRICS_NAME, write_task3_report


def test_task3_report_renders_from_its_metrics(tmp_path, data_root, random_checkpoint):
    bare = tmp_path / "clip-without-weights"
    bare.mkdir()
    (bare / "open_clip_config.json").write_text("{}")
    settings = index_settings(
        tmp_path / "work",
        data_root,
        random_checkpoint,
        limit=30,
        report_embedders=["cnn", "pixels", "clip"],
        clip_model=f"local-dir:{bare}",
    )
    path = write_task3_report(settings, tmp_path / "reports", latency_queries=5)
    text = path.read_text()
    metrics = json.loads((tmp_path / "reports" / METRICS_NAME).read_text())
    assert set(metrics) == {"cnn", "pixels"}
    for name in ("cnn", "pixels"):
        assert (tmp_path / "reports" / f"task3_grid_{name}.png").stat().st_size > 0
        assert f"| `{name}` | {metrics[name]['within_test']['p@5']:.3f} " not in text  # P@1 comes first
        assert f"{metrics[name]['within_test']['p@1']:.3f} | {metrics[name]['within_test']['p@5']:.3f}" in text
    assert "Subset warning" in text and "Checkpoint warning" in text  # a subset and a random checkpoint are labelled
    assert "not available here" in text and "holds no CLIP weights" in text
    assert (tmp_path / "reports" / "task3_precision_at_k.png").is_file()
    assert "| Chroma's defaults | 16 | 100 | 100 |" in text and "| shipped (this index) | 32 | 200 | 200 |" in text
    assert set(metrics["cnn"]["hnsw_recall@10_chroma_defaults"]) == {"train", "val", "test"}
    assert "../shared" not in text
    # the 10 ms target is the search's; the end-to-end latency is reported beside it, never marked as met
    search_row = next(line for line in text.splitlines() if line.startswith("| index search latency"))
    end_to_end = next(line for line in text.splitlines() if line.startswith("| image to results"))
    assert "embedding given" in search_row and "embedding the query image included" in end_to_end
    assert "met" not in end_to_end.split(" | ")[-1].replace("no target", "")


def test_classifier_agreement_pairs_each_indexed_image_with_its_vector(tmp_path, data_root, random_checkpoint):
    from casereview.data import subset_indices
    from casereview.studies.task3_report import classifier_agreement
    from casereview.tools.case_index import open_index
    from casereview.tools.index_build import build_index
    from casereview.training.predict import predict_proba

    settings = index_settings(tmp_path, data_root, random_checkpoint, limit=30)
    build_index(settings, "cnn", progress=False)
    index = open_index(settings, "cnn")
    test = load_split("test", data_root)
    picked = subset_indices(len(test), 30)  # the indexed test cases: a random subset, not test[:30]
    clf = index.embedder.classifier
    proba = predict_proba(clf, test.images[picked])
    # a threshold at the median makes the random network's predictions depend on the image
    clf.meta["calibration"] = {**clf.meta["calibration"], "threshold": float(np.median(proba))}
    got = classifier_agreement(settings, index)
    correct = (proba >= clf.threshold) == test.labels[picked]
    assert got["n_correct"] == int(correct.sum()) and got["n_wrong"] == int((~correct).sum())
    vectors, labels, _ = index.vectors("test")
    train_vectors, train_labels, _ = index.vectors("train")
    top = np.argsort(-(vectors @ train_vectors.T), axis=1, kind="stable")[:, :5]
    precision = (train_labels[top] == labels[:, None]).mean(axis=1)  # P@5 of each query, exactly
    assert got["p_correct"] == pytest.approx(precision[correct].mean())
    assert got["p_wrong"] == pytest.approx(precision[~correct].mean())
