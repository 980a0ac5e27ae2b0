"""What produced a result: package versions, git commit, file hashes, timestamps."""

from __future__ import annotations

import hashlib
import json
import logging
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


# A query value that cannot be a credential: a number, a version or a date (``?v=2``, ``?api-version=2024-02-01``)
_PLAIN_VALUE = re.compile(r"[0-9][0-9.-]{0,15}")
# Names that mark a credential even when its value looks like a number
_SECRET_NAME = re.compile(r"key|token|secret|pass|sig|auth|cred|session|code", re.IGNORECASE)


def _query_value(name: str, value: str) -> str:
    return value if _PLAIN_VALUE.fullmatch(value) and not _SECRET_NAME.search(name) else "***"


def redact_url(url: str | None) -> str | None:
    """``url`` with its credentials replaced by ``***``: the userinfo (``user:secret@``) and the value of
    every query parameter whatever its name (a key may hide behind any name: ``?code=``), except
    numbers, versions and dates under names that do not name a credential (``?api-version=2024``). Every URL that is
    written (provenance, records) or logged (messages) goes through this; the request itself still uses
    the full URL."""
    if not url:
        return url
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
    except ValueError:  # not a URL at all (a broken IPv6 literal): nothing of it is shown
        return "<unparseable URL>"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(k, _query_value(k, v)) for k, v in pairs]
    if "@" not in parts.netloc and hidden == pairs and (pairs or not parts.query):
        return url  # nothing to hide: the URL exactly as given
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = urlencode(hidden, safe="*") if pairs else ("***" if parts.query else "")
    clean = urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))
    return clean if "://" in url else clean.removeprefix("//")


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# "Authorization: Bearer sk-...", "api_key=...", "'x-api-key': '...'" as servers and clients echo them
_SECRET_FIELD = re.compile(
    r"(?i)((?:authorization|proxy-authorization|api[-_]?key|x-api-key|token|password|secret|cookie)['\"]?\s*[:=]\s*['\"]?)"
    r"(?:(?:bearer|basic|token)\s+)?[^\s'\",;&}]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact_text(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """Someone else's text (a server's error body, an HTTP client's log line) with what may be a
    credential replaced by ``***``: every URL through :func:`redact_url`, header and field values named
    like credentials, bearer tokens, and each of ``secrets`` (the key this process sends) wherever it
    appears."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _URL.sub(lambda m: redact_url(m.group()) or "", text)
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + "***", text)
    return _BEARER.sub(lambda m: m.group(1) + " ***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's text through :func:`redact_text` (the HTTP clients log
    full request URLs at debug level, credentials included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact_text(message), None
        return True
