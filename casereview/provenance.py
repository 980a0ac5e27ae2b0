"""What produced a result: package versions, git commit, file hashes, timestamps."""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    under ``reports/``, which the report commands themselves rewrite, do not count)."""
    where = cwd or Path(__file__).resolve().parent
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
