"""`casereview report task3` on a small index built from a random checkpoint: renders, labels what it must."""

from __future__ import annotations

import json

from case_index_support import index_settings
from casereview.evaluation.retrieval_report import METRICS_NAME, write_task3_report


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
    assert "| Chroma's defaults | 16 | 100 | 100 |" in text
