"""The Colab notebook runs the way Colab runs it: a fresh Python environment without casereview, the
notebook's own install cell (`pip install "git+<URL>"`, here a clone URL of this repository), then every
cell in a headless kernel, with PneumoniaMNIST coming through medmnist's download code (served on
127.0.0.1, see tests/fresh_machine.py).

Offline and small so that it stays fast: the template reporter (no GPU, no token), the hub switched off
(so the BiomedCLIP section must skip itself with a message), a random-weight classifier and a case
index of 60 images per split, all through ordinary settings (environment variables).
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fresh_machine import REPO, clone_url, medmnist_mirror, offline_pip_env, scratch_venv

NOTEBOOK = REPO / "notebooks" / "casereview_colab.ipynb"
PNG = b"\x89PNG\r\n\x1a\n"


def outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def text_of(nb) -> str:
    return "\n".join(o.get("text", "") + "".join(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
                     for o in outputs(nb))


# cells that must show figures (found by a line of their source) -> how many
FIGURE_CELLS = {
    "task1": "task1 = evaluate(",  # confusion at the threshold and at 0.5, ROC/PR, reliability, errors, correct, saliency
    "image search": "image_search.png",
    "case image": 'state = run_until("load_case")',
    "neighbours": 'state = run_until("retrieve")',
}


def pngs_of(nb, marker: str) -> int:
    cell = next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_notebook_defaults_agree_with_pyproject_and_readme():
    repository = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert f'REPO_URL = "{repository}"' in nb.cells[1].source  # the form field's default
    assert "#@param" in nb.cells[1].source
    owner_repo = repository.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{NOTEBOOK.name}"
    assert colab in (REPO / "README.md").read_text() and colab in nb.cells[0].source
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # shipped without outputs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_colab_notebook_runs_in_a_fresh_environment(tmp_path, data_root, random_checkpoint, monkeypatch):
    work = tmp_path / "content"  # Colab's working folder: nothing named casereview in it
    work.mkdir()
    with medmnist_mirror(data_root / "pneumoniamnist.npz", tmp_path) as mirror:
        python = scratch_venv(tmp_path / "venv", tmp_path)
        kernels = tmp_path / "jupyter" / "kernels" / "fresh"
        kernels.mkdir(parents=True)
        (kernels / "kernel.json").write_text(json.dumps({
            "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "fresh venv", "language": "python"}))
        for name in [k for k in __import__("os").environ if k.startswith("CASEREVIEW_")]:
            monkeypatch.delenv(name)  # no data root: the download path, as on Colab
        for name, value in {**mirror.env(tmp_path / "home"), **offline_pip_env()}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
        monkeypatch.setenv("CASEREVIEW_REPO_URL", clone_url(tmp_path))
        monkeypatch.setenv("CASEREVIEW_CLASSIFIER_CHECKPOINT", str(random_checkpoint))
        monkeypatch.setenv("CASEREVIEW_INDEX_LIMIT", "60")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # CI's 2 shared cores: one torch thread is faster here

        nb = nbformat.read(NOTEBOOK, as_version=4)
        try:
            NotebookClient(nb, timeout=600, kernel_name="fresh", resources={"metadata": {"path": str(work)}}).execute()
        finally:
            nbformat.write(nb, tmp_path / "executed.ipynb")  # for a look after a failure

    assert not [o for o in outputs(nb) if o.output_type == "error"]
    text = text_of(nb)
    # installed by the notebook's own cell into the fresh environment, not found in the source tree
    assert re.search(rf"casereview from {re.escape(str(tmp_path / 'venv'))}/lib/python[\d.]+/site-packages/casereview", text), text[:2000]
    assert mirror.requests, "the data did not come through medmnist's download"
    assert "CPU runtime: Task 2's reports will come from the template backend" in text
    assert "the reports below come from the TEMPLATE backend" in text
    assert "Skipped: the Hugging Face hub is not reachable here" in text  # BiomedCLIP guarded
    assert "validation comparison:" in text and "wrote " in text  # Task 2: the batch comparison and the report

    pngs = [base64.b64decode(o["data"]["image/png"]) for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert all(p.startswith(PNG) for p in pngs)
    figures = {key: pngs_of(nb, marker) for key, marker in FIGURE_CELLS.items()}
    assert figures == {"task1": 7, "image search": 1, "case image": 1, "neighbours": 1}, figures
    markdown = [o["data"]["text/markdown"] for o in outputs(nb) if "text/markdown" in o.get("data", {})]
    case_md = next(m for m in markdown if m.startswith("# Case review: test:42"))
    for m in markdown:
        assert "]()" not in m  # no empty image link
        for url in re.findall(r"!\[[^\]]*\]\(([^)]*)\)", m):
            assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]).startswith(PNG)
    assert "![case](data:image/png;base64," in case_md

    runs = work / "casereview_runs"  # the notebook's work folder, relative to where it runs
    assert json.loads((runs / "task1" / "metrics.json").read_text())["n"] == 624
    assert (runs / "chroma").is_dir()
    assert "template" in (runs / "reports" / "task2_report_generation.md").read_text()


@pytest.mark.parametrize("url, message", [
    ("", "placeholder from [project.urls] in pyproject.toml"),
    ("https://github.com/OWNER/casereview", "placeholder from [project.urls] in pyproject.toml"),
    ("file:///nonexistent/casereview.git", "Cannot reach the repository file:///nonexistent/casereview.git"),
])
def test_install_cell_says_what_is_wrong_with_the_repository_url(url, message, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    install = next(c.source for c in nb.cells if c.cell_type == "code" and "def install(" in c.source)
    namespace: dict = {}
    exec(nb.cells[1].source, namespace)  # the form's defaults
    namespace["REINSTALL"] = True
    monkeypatch.setenv("CASEREVIEW_REPO_URL", url)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        exec(install, namespace)  # fails before pip runs
