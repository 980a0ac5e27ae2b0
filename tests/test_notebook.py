"""The Colab notebook runs the way Colab runs it: a fresh Python environment without casereview, the
notebook's own install cell, then every cell in a headless kernel. Twice: as on Colab (`pip install
"git+<URL>"`, here a clone URL of this repository, with PneumoniaMNIST coming through medmnist's download
code, served on 127.0.0.1, see tests/fresh_machine.py), and pointed at a local clone (`pip install
<folder>`) with the DATA_ROOT form field set (nothing downloaded).

Offline and small so that it stays fast: the template reporter (no GPU, no token), the hub switched off
(so the BiomedCLIP section must skip itself with a message), a random-weight classifier and a case
index of 60 images per split, all through ordinary settings (environment variables).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
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
    assert 'DATA_ROOT = ""  #@param' in nb.cells[1].source  # empty: medmnist downloads
    if any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"):  # committed with a run's outputs
        run = nb.metadata["casereview"]  # written by notebooks/execute.py: what made them
        assert run["command"].startswith("python notebooks/execute.py") and run["commit"] and run["backend"] == "template"
        assert not [o for o in outputs(nb) if o.output_type == "error"]
        assert "execute.py" in (REPO / "README.md").read_text()


def git_head(url: str) -> str:
    return subprocess.run(["git", "ls-remote", url, "HEAD"], check=True, capture_output=True, text=True).stdout.split()[0]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("source", ["git URL, download", "local folder, DATA_ROOT"])
def test_colab_notebook_runs_in_a_fresh_environment(source, tmp_path, data_root, random_checkpoint, monkeypatch):
    work = tmp_path / "content"  # Colab's working folder: nothing named casereview in it
    work.mkdir()
    url = clone_url(tmp_path)
    commit = git_head(url)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if source.startswith("local"):
        clone = tmp_path / "clone"  # a clone elsewhere than the working folder, installed from its path
        subprocess.run(["git", "clone", "-q", url, str(clone)], check=True, capture_output=True)
        url = str(clone)
        nb.cells[1].source = nb.cells[1].source.replace('DATA_ROOT = ""', f'DATA_ROOT = "{data_root}"')
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
        monkeypatch.setenv("CASEREVIEW_REPO_URL", url)
        monkeypatch.setenv("CASEREVIEW_CLASSIFIER_CHECKPOINT", str(random_checkpoint))
        monkeypatch.setenv("CASEREVIEW_INDEX_LIMIT", "60")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # CI's 2 shared cores: one torch thread is faster here

        try:
            NotebookClient(nb, timeout=600, kernel_name="fresh", resources={"metadata": {"path": str(work)}}).execute()
        finally:
            nbformat.write(nb, tmp_path / "executed.ipynb")  # for a look after a failure

    assert not [o for o in outputs(nb) if o.output_type == "error"]
    text = text_of(nb)
    # installed by the notebook's own cell into the fresh environment, not found in the source tree
    assert re.search(rf"casereview from {re.escape(str(tmp_path / 'venv'))}/lib/python[\d.]+/site-packages/casereview", text), text[:2000]
    if source.startswith("local"):
        assert f"installing {url}\n" in text and not mirror.requests  # pip install <folder>; the data from DATA_ROOT
        assert f"data: {data_root}" in text
    else:
        assert f"installing git+{url}\n" in text and mirror.requests, "the data did not come through medmnist's download"
    assert f"| commit {commit}" in text  # pip recorded where it installed from
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
    task2 = (runs / "reports" / "task2_report_generation.md").read_text()
    assert "template" in task2 and f"from commit `{commit}`" in task2  # the installed commit, not None


@pytest.mark.parametrize("url, message", [
    ("", "placeholder from [project.urls] in pyproject.toml"),
    ("https://github.com/OWNER/casereview", "placeholder from [project.urls] in pyproject.toml"),
    ("file:///nonexistent/casereview.git", "Cannot reach the repository file:///nonexistent/casereview.git"),
    ("/nonexistent/casereview", "REPO_URL /nonexistent/casereview is neither a git URL nor a folder holding"),
    (".", "is neither a git URL nor a folder holding casereview's source"),  # a folder, but not the project
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


def test_execute_script_runs_a_notebook_on_cpu_and_writes_its_outputs_back(tmp_path, data_root):
    """notebooks/execute.py (the command that refreshes the committed notebook's outputs), on a small
    notebook: outputs written into the file, the source unchanged, the run recorded in its metadata."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nprint('gpu:', repr(os.environ['CUDA_VISIBLE_DEVICES']), '| data:', os.environ['CASEREVIEW_DATA_ROOT'])"),
        nbformat.v4.new_code_cell("print(os.path.isdir('casereview'), os.environ['CASEREVIEW_PATHS_WORKDIR'].endswith('casereview_runs'))"),
        nbformat.v4.new_code_cell("import sys, time\nfor i in (10, 50, 100):  # a progress bar's redraws\n"
                                  "    print(f'\\rbar {i}%', end='', file=sys.stderr, flush=True); time.sleep(0.2)\n"
                                  "print(file=sys.stderr)")]
    path = tmp_path / "small.ipynb"
    nbformat.write(nb, path)
    done = subprocess.run([sys.executable, str(REPO / "notebooks" / "execute.py"), "--notebook", str(path),
                           "--data-root", str(data_root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ran = nbformat.read(path, as_version=4)
    assert [c.source for c in ran.cells] == [c.source for c in nb.cells]
    assert [o["text"] for o in outputs(ran)] == [f"gpu: '' | data: {data_root}\n", "False True\n", "bar 100%\n"]
    meta = ran.metadata["casereview"]
    assert meta["command"] == "python notebooks/execute.py --data-root DIR" and meta["backend"] == "template" and meta["commit"]

    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('boom')"))
    nbformat.write(nb, path)
    # --data-root again: the first cell reads the variable it sets, which need not be set here (README's default)
    failed = subprocess.run([sys.executable, str(REPO / "notebooks" / "execute.py"), "--notebook", str(path),
                             "--data-root", str(data_root)], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and "a cell failed" in failed.stderr and "boom" in failed.stderr
    assert not any(c.get("outputs") for c in nbformat.read(path, as_version=4).cells)  # left as it was
