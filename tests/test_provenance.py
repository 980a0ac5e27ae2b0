"""Which commit a result names: the source tree's, or, for an installed package (the notebook's
`pip install git+URL` or `pip install <folder>`), the commit pip recorded in direct_url.json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from casereview import provenance


class FakeDistribution:
    def __init__(self, direct_url: dict | None):
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """casereview as if installed into a site-packages folder outside any git tree, with ``direct_url``."""
    site = tmp_path / "site-packages" / "casereview"
    site.mkdir(parents=True)
    monkeypatch.setattr(provenance, "__file__", str(site / "provenance.py"))

    def install(direct_url: dict | None) -> None:
        monkeypatch.setattr(provenance.metadata, "distribution", lambda name: FakeDistribution(direct_url))
    return install


def git_repo(path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout.strip()
    path.mkdir()
    (path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "one")
    return git("rev-parse", "HEAD")


def test_a_git_url_install_names_the_commit_pip_cloned(installed):
    installed({"url": "https://github.com/o/casereview", "vcs_info": {"vcs": "git", "commit_id": "a" * 40}})
    assert provenance.git_commit() == "a" * 40


def test_a_folder_install_names_that_folder_commit(installed, tmp_path):
    head = git_repo(tmp_path / "clone")
    installed({"url": (tmp_path / "clone").as_uri(), "dir_info": {}})
    assert provenance.git_commit() == head
    (tmp_path / "clone" / "pyproject.toml").write_text("changed")
    assert provenance.git_commit() == head + "+dirty"


def test_an_install_without_a_recorded_source_names_none(installed):
    installed(None)  # a wheel from an index: pip writes no direct_url.json
    assert provenance.git_commit() is None
    installed({"url": "https://example.org/casereview-1.0-py3-none-any.whl", "archive_info": {}})
    assert provenance.git_commit() is None


def test_the_source_tree_wins_over_the_install_record(monkeypatch):
    own = provenance._git_head(Path(provenance.__file__).resolve().parent)
    if own is None:
        pytest.skip("casereview is not imported from a git checkout here")
    monkeypatch.setattr(provenance.metadata, "distribution", lambda name: FakeDistribution(
        {"url": "https://github.com/o/casereview", "vcs_info": {"vcs": "git", "commit_id": "b" * 40}}))
    assert provenance.git_commit() == own
