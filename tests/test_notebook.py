"""The walkthrough notebook runs end to end (headless kernel), on a small index and a random-weight
classifier so that it stays fast; it exercises the same code a Colab user runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "case_review_walkthrough.ipynb"


def test_walkthrough_notebook_executes(tmp_path, data_root, random_checkpoint, monkeypatch):
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(data_root))
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(tmp_path))
    monkeypatch.setenv("CASEREVIEW_CLASSIFIER_CHECKPOINT", str(random_checkpoint))
    monkeypatch.setenv("CASEREVIEW_INDEX_LIMIT", "60")
    monkeypatch.setenv("CASEREVIEW_REPORTER_BACKEND", "template")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(
        out.get("text", "") + "".join(str(v) for v in out.get("data", {}).values())
        for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "ran load_case" in text and "ran finalize" in text
    assert "Case review: test:42" in text  # the Markdown rendering of the final record
