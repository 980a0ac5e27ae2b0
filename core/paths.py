"""One rule for paths built from user input: they resolve inside their root.

A name a user gives (a run id, a variant name) becomes a folder or file name under a root the
program chooses (``<workdir>/reviews``). :func:`resolve_inside` resolves the joined path, symlinks
and ``..`` included, and refuses anything that lands outside the root; :func:`check_name` refuses
names that are not one plain path component (separators, ``..``, control characters, newlines).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from casereview.errors import CaseReviewError

# One path component of letters, digits, '.', '_' and '-', not starting with '.' (no '..', no hidden files).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class UnsafePathError(CaseReviewError):
    """A name or path from user input that would leave the folder it belongs in."""


def check_name(value: str, what: str) -> str:
    """``value`` if it is a plain file-name component (``NAME_PATTERN``); else an :class:`UnsafePathError`."""
    if not NAME_PATTERN.fullmatch(value):
        raise UnsafePathError(
            f"{what} {value!r} is not a plain name: use 1 to 128 letters, digits, '.', '_' or '-', "
            "not starting with '.' (no '/', '..' or spaces)")
    return value


def resolve_inside(root: Path | str, *parts: str, what: str = "path") -> Path:
    """``root / parts...`` resolved (symlinks and ``..`` followed); an :class:`UnsafePathError` if the
    result is not inside ``root`` (itself resolved), so no part can climb out or jump elsewhere."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base) or target == base and parts:
        raise UnsafePathError(f"{what} {'/'.join(parts)!r} leads outside {root} (to {target}); give a name inside it")
    return target


def file_in_the_way(path: Path) -> Path | None:
    """The file that keeps ``path`` from being (or becoming) a folder: ``path`` itself or the first of its
    parents that exists, when that is not a folder; None when ``path`` is a folder or can be made one."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def check_folder(path: Path, what: str, purpose: str = "the output") -> Path:
    """``path`` if it is a folder or can be made one; an :class:`UnsafePathError` naming ``what`` if it,
    or the first of its parents that exists, is a file (checked before any work, so no traceback later)."""
    if (existing := file_in_the_way(path)) is not None:
        where = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise UnsafePathError(f"{what} {path} {where}; give a folder for {purpose}")
    return check_writable(path, what, purpose)


def check_writable(path: Path, what: str, purpose: str = "the output") -> Path:
    """``path`` if this process may write in it (or create it: its first existing parent is writable); an
    :class:`UnsafePathError` otherwise, before any work starts rather than as a ``PermissionError`` after it."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is where it would be created)"
        raise UnsafePathError(f"{what} {path} is not writable by this user{where}; give a folder you can write "
                              f"for {purpose}")
    return path
