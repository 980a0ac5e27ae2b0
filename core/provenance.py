"""What produced a result: package versions, git commit, file hashes, timestamps."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlparse, urlsplit, urlunsplit
from urllib.request import url2pathname

PACKAGES = (
    "casereview",
    "torch",
    "timm",
    "medmnist",
    "scikit-learn",
    "chromadb",
    "open_clip_torch",
    "transformers",
    "langgraph",
    "langchain-core",
    "jinja2",
)


@lru_cache(maxsize=16)
def _versions(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return tuple(out.items())


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (and Python), looked up once per process."""
    return dict(_versions(tuple(names)))


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the source tree, with ``+dirty`` when code or config differs from it (changes
    under ``reports/``, which the report commands themselves rewrite, do not count). Without ``cwd``,
    an installed (not editable) package has no git tree around it: then the commit pip recorded at
    install time (:func:`installed_commit`)."""
    commit = _git_head(cwd or Path(__file__).resolve().parent)
    return commit if commit is not None or cwd is not None else installed_commit()


def _git_head(where: Path) -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports"],
            cwd=where, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def installed_commit(distribution: str = "casereview") -> str | None:
    """The commit an installed package came from, from what pip wrote beside it (``direct_url.json``,
    PEP 610): the commit id of a ``git+URL`` install, or, for an install from a local folder, that
    folder's commit (read now: a folder moved on since the install shows its new commit). None for
    an install from a wheel or an index, which records no commit."""
    try:
        raw = metadata.distribution(distribution).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not raw:
        return None
    info = json.loads(raw)
    if "vcs_info" in info:
        return info["vcs_info"].get("commit_id")
    url = urlparse(info.get("url", ""))
    if "dir_info" in info and url.scheme == "file":
        return _git_head(Path(url2pathname(url.path)))
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Query parameters whose values are credentials (?api_key=..., ?token=..., ?sig=...).
_SECRET_QUERY = re.compile(r"key|token|secret|pass|sig|auth|cred|session", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """``url`` with its credentials replaced by ``***``: the userinfo (``user:secret@``) and the values of
    query parameters that look like tokens. Every URL that is written (provenance, records) or logged
    (messages) goes through this; the request itself still uses the full URL."""
    if not url:
        return url
    parts = urlsplit(url if "://" in url else f"//{url}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if "@" not in parts.netloc and not any(_SECRET_QUERY.search(k) for k, _ in pairs):
        return url  # nothing to hide: the URL exactly as given
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    clean = urlunsplit(parts._replace(netloc=netloc, query=query))
    return clean if "://" in url else clean.removeprefix("//")
