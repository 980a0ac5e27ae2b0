"""What a fresh machine looks like to the first-run and Colab-notebook tests, built offline.

- :func:`clone_url`: the repository as a user gets it, a git URL to clone (only committed files).
- :func:`copy_source`: the working tree copied without what builds and runs leave in it.
- :func:`scratch_venv`: a new venv without this project, which sees the running environment's
  packages (so no download is needed) but not its ``casereview``; ``pip install`` of the project
  into it is real.
- :func:`medmnist_mirror`: medmnist's own download code (``PneumoniaMNIST(download=True)`` ->
  torchvision's ``download_url`` with the MD5 check) fetching the dataset file from a local HTTP
  server instead of Zenodo. Child processes get a ``sitecustomize`` that points
  ``medmnist.INFO["pneumoniamnist"]`` at the server (URL and MD5) when ``medmnist.info`` is imported;
  nothing else about the download changes. The server counts the requests it answered.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import site
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HIDDEN = ("casereview", "__editable__.casereview", "__editable___casereview")  # the running env's own install

SITECUSTOMIZE = '''\
"""Test shim: medmnist downloads PneumoniaMNIST from a local server (see tests/fresh_machine.py)."""
import importlib.abc, importlib.machinery, sys


class _MedmnistMirror(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "medmnist.info":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.INFO["pneumoniamnist"].update(url={url!r}, MD5={md5!r})

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _MedmnistMirror())
'''


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def copy_source(dest: Path) -> Path:
    """A copy of the working tree at ``dest`` without the venv, work folder, git data, caches and build output."""
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".venv", "runs", ".git", "__pycache__", "*.egg-info", "build"))
    return dest


def clone_url(tmp: Path) -> str:
    """A ``file://`` URL of this repository. In a git checkout that is the repository itself (a clone
    sees committed files only, like a user's); elsewhere a one-commit copy of the tree."""
    try:
        git("rev-parse", "--git-dir", cwd=REPO)
        return REPO.as_uri()
    except subprocess.CalledProcessError:
        src = copy_source(tmp / "source-repo")
        git("init", "-q", cwd=src)
        git("add", ".", cwd=src)
        git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "-m", "tree", cwd=src)
        return src.as_uri()


def _package_view(tmp: Path) -> Path:
    """A folder of links to the running environment's packages, minus this project's own install."""
    view = tmp / "site-view"
    view.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if entry.name.startswith(HIDDEN) or entry.suffix == ".pth" or (view / entry.name).exists():
                continue
            (view / entry.name).symlink_to(entry)
    return view


def scratch_venv(path: Path, tmp: Path, with_pip: bool = False) -> Path:
    """A new venv at ``path`` that imports the running environment's packages except casereview."""
    base = getattr(sys, "_base_executable", sys.executable)
    cmd = [base, "-m", "venv", str(path)] + ([] if with_pip else ["--without-pip"])
    subprocess.run(cmd, check=True, capture_output=True)
    site_dir = next(path.glob("lib/python*/site-packages"))
    (site_dir / "_running_env.pth").write_text(str(_package_view(tmp)) + "\n")
    return path / "bin" / "python"


def offline_pip_env() -> dict[str, str]:
    """pip settings for installing into a scratch venv without an index: every dependency is
    already importable, and the build uses the setuptools that is installed (no isolation)."""
    return {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@dataclass
class Mirror:
    url: str
    md5: str
    shim: Path  # folder holding sitecustomize.py: put it on PYTHONPATH
    requests: list[str] = field(default_factory=list)

    def env(self, home: Path) -> dict[str, str]:
        """Environment of a child process on a "fresh machine": empty home (so ~/.medmnist is
        empty), no data root, medmnist's download pointed at this mirror."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CASEREVIEW_", "VIRTUAL_ENV", "PYTHON", "MPLBACKEND"))}
        home.mkdir(parents=True, exist_ok=True)
        env.update(HOME=str(home), PYTHONPATH=str(self.shim), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   ANONYMIZED_TELEMETRY="False")
        return env


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, requests: list[str], **kwargs):
        self.requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # torchvision's redirect probe closes its first connection unread: not an error


@contextmanager
def medmnist_mirror(data_file: Path, tmp: Path) -> Iterator[Mirror]:
    """Serve ``data_file`` on 127.0.0.1 as if it were Zenodo's pneumoniamnist.npz."""
    served = tmp / "served"
    served.mkdir()
    shutil.copy(data_file, served / "pneumoniamnist.npz")
    md5 = hashlib.md5((served / "pneumoniamnist.npz").read_bytes()).hexdigest()
    requests: list[str] = []
    handler = functools.partial(_Handler, directory=str(served), requests=requests)
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/pneumoniamnist.npz?download=1"
    shim = tmp / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE.format(url=url, md5=md5))
    try:
        yield Mirror(url, md5, shim, requests)
    finally:
        server.shutdown()
        server.server_close()
