"""The README's Quick start on a "fresh machine": the repository cloned from a git URL into a temporary
folder, installed into a new venv, and the README's main command run there verbatim, with
PneumoniaMNIST coming through medmnist's own download code (served from 127.0.0.1, see
tests/fresh_machine.py) into an empty home folder.

Differences from a user's machine, all for speed or for the lack of a network: the install reuses the
packages of the running environment instead of downloading them, and the case index holds a random
subset of 300 images per split (``CASEREVIEW_INDEX_LIMIT``, an ordinary setting) instead of all 5,856.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from fresh_machine import REPO, clone_url, medmnist_mirror, offline_pip_env, scratch_venv


def readme_command(prefix: str) -> str:
    """The one line of an indented code block in README.md that starts with ``prefix``."""
    lines = [ln.strip() for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith("    " + prefix)]
    assert len(lines) == 1, f"README.md should show exactly one command starting with {prefix!r}, found {lines}"
    return lines[0]


def test_readme_commands_name_no_private_paths():
    text = (REPO / "README.md").read_text()
    assert "../shared" not in text and "/work/" not in text
    install = readme_command("python -m venv .venv && . .venv/bin/activate && pip install")
    assert "pip install ." in install and "-e" not in install.split()  # a regular install for users
    main = readme_command("casereview index build")
    assert "CASEREVIEW_" not in main and "--data-root" not in main  # nothing set by hand


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_main_command_on_a_fresh_clone(tmp_path, data_root):
    main = readme_command("casereview index build")
    assert main == "casereview index build && casereview review test:42"
    with medmnist_mirror(data_root / "pneumoniamnist.npz", tmp_path) as mirror:
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", clone_url(tmp_path), str(clone)], check=True, capture_output=True)
        python = scratch_venv(clone / ".venv", tmp_path)
        home = tmp_path / "home"
        env = mirror.env(home)
        env.update(offline_pip_env())
        env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(clone / ".venv")
        # The README's install: `pip install .` in the clone (packages come from the running environment).
        subprocess.run([str(python), "-m", "pip", "install", "-q", "."], cwd=clone, env=env, check=True,
                       capture_output=True, text=True)
        assert (clone / ".venv" / "bin" / "casereview").is_file()

        env["CASEREVIEW_INDEX_LIMIT"] = "300"
        done = subprocess.run(["bash", "-c", main], cwd=clone, env=env, capture_output=True, text=True, timeout=800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # The data came through medmnist's download (torchvision opens the URL once to follow redirects, then
    # fetches it), the file passed its MD5 check and is kept in ~/.medmnist.
    assert mirror.requests and set(mirror.requests) == {"/pneumoniamnist.npz?download=1"}, mirror.requests
    kept = home / ".medmnist" / "pneumoniamnist.npz"
    assert hashlib.md5(kept.read_bytes()).hexdigest() == mirror.md5

    out = done.stdout
    assert re.search(r"cases-cnn-\S+: 900 cases at \S*runs/chroma, built", out), out
    assert "test:42  (ground truth: " in out
    for line in ("classifier", "neighbours", "report", "verification", "needs review"):
        assert re.search(rf"^\s+{line}\s", out, re.M), f"no {line!r} line in:\n{out}"
    assert "template" in out  # the default reporter, as the README says
    assert "1 of 1 case(s) reviewed" in done.stderr

    # Everything lands under ./runs of the working directory (the README's "where outputs go").
    records = list((clone / "runs" / "reviews").glob("*/*"))
    assert {p.suffix for p in records} >= {".json", ".md", ".png"}, records
    assert (clone / "runs" / "chroma").is_dir() and (clone / "runs" / "checkpoints.sqlite").is_file()
    md = next(p for p in records if p.suffix == ".md").read_text()
    assert "test:42" in md and "](" in md and "]()" not in md  # the case image is linked, not empty
