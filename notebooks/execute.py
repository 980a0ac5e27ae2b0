"""Run the Colab notebook on this machine's CPU and write it back with its outputs, so that the committed
notebook shows what it does (GitHub renders the outputs).

    python notebooks/execute.py [--data-root DIR] [--workdir DIR] [--timeout S]

It runs every cell in a kernel of the current environment (where casereview is installed: the notebook's
install cell then keeps it), with no GPU (CUDA hidden) and no Hugging Face token, so Task 2's reports come
from the template backend; the BiomedCLIP section runs only where the hub is reachable. It needs the test
extras (nbclient, ipykernel: ``pip install -e ".[test]"``). The data comes
from ``--data-root`` (or ``CASEREVIEW_DATA_ROOT``), else through medmnist's download; outputs go to a
fresh temporary work folder unless ``--workdir`` names one (an index already built there is kept). The
notebook's source is not changed; its metadata records when, from which commit and how the outputs
were made (tests/test_notebook.py checks it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).resolve().with_name("casereview_colab.ipynb")


def coalesce_streams(nb: nbformat.NotebookNode) -> None:
    """Merge each cell's consecutive stdout (stderr) outputs into one and keep, of every line, what
    follows its last carriage return: what Jupyter shows of a progress bar is its final state, not one
    output per redraw."""
    for cell in nb.cells:
        merged: list = []
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == out.name:
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in out.text.split("\n"))
        if cell.cell_type == "code":
            cell.outputs = merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, help="folder holding pneumoniamnist.npz (default: $CASEREVIEW_DATA_ROOT, else download)")
    parser.add_argument("--workdir", type=Path, help="the notebook's work folder (default: a new temporary folder)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take (default 1800)")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help="notebook to run and rewrite (default: the Colab notebook)")
    args = parser.parse_args(argv)

    from casereview.provenance import git_commit, utc_now

    if args.data_root is not None and not (args.data_root / "pneumoniamnist.npz").is_file():
        print(f"error: no pneumoniamnist.npz in {args.data_root}", file=sys.stderr)
        return 2
    # the kernel inherits this environment: CPU only, no token, so the notebook takes its template path
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(name, None)
    if args.data_root is not None:
        os.environ["CASEREVIEW_DATA_ROOT"] = str(args.data_root.resolve())
    with tempfile.TemporaryDirectory(prefix="casereview-notebook-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp) / "casereview_runs"
        os.environ["CASEREVIEW_PATHS_WORKDIR"] = str(work)
        nb = nbformat.read(args.notebook, as_version=4)
        start = time.perf_counter()
        print(f"running {args.notebook.name} on CPU (template backend), work folder {work} ...", file=sys.stderr)
        # cwd: a folder without anything named casereview in it (it would shadow the installed package)
        try:
            NotebookClient(nb, timeout=args.timeout, resources={"metadata": {"path": tmp}}).execute()
        except CellExecutionError as exc:
            print(f"error: a cell failed, {args.notebook} is unchanged:\n{exc}", file=sys.stderr)
            return 1
        took = time.perf_counter() - start
    coalesce_streams(nb)
    nb.metadata["casereview"] = {
        "executed": utc_now(), "commit": git_commit(), "backend": "template", "device": "cpu",
        "command": "python notebooks/execute.py" + (" --data-root DIR" if args.data_root else ""),
        "seconds": round(took),
    }
    nbformat.write(nb, args.notebook)
    print(f"wrote {args.notebook} with its outputs ({took:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
