"""Chroma's on-disk maintenance: free what deleted collections leave in a persistent Chroma folder, and measure it.

Chroma 1.5.9 keeps a deleted collection's HNSW segment folder and its catalogue pages; a case-index
build deletes collections (replaced, pruned or interrupted builds), so it calls these after each one.
Everything here works on a folder; a Chroma server manages its own disk.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

SQLITE_FILE = "chroma.sqlite3"  # Chroma's catalogue in a persistent folder


# What hnswlib writes into a vector segment's folder (Chroma 1.5.9): a folder holding anything else
# is not taken for a segment folder and never removed.
COMPACT_MIN_FREE = 1_000_000  # bytes of free pages in chroma.sqlite3 worth a VACUUM (0.25 s for a full cnn index's 25 MB)


HNSW_FILES = frozenset({"header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle"})


@dataclass
class Reclaimed:
    """What the items of deleted collections took in an on-disk Chroma and a build freed."""

    folders: int = 0
    bytes: int = 0  # of those folders
    catalogue_bytes: int = 0  # by which compacting chroma.sqlite3 shrank it

    def __add__(self, other: Reclaimed) -> Reclaimed:
        return Reclaimed(self.folders + other.folders, self.bytes + other.bytes, self.catalogue_bytes + other.catalogue_bytes)


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _segment_ids(folder: Path) -> set[str] | None:
    """The ids of every segment of every collection in the Chroma folder's catalogue (None: unreadable)."""
    try:
        with closing(sqlite3.connect(f"{(folder / SQLITE_FILE).resolve().as_uri()}?mode=ro", uri=True, timeout=10)) as db:
            return {str(row[0]) for row in db.execute("SELECT id FROM segments")}
    except sqlite3.Error:
        return None


def _segment_folder(entry: Path) -> bool:
    """A folder Chroma made for a vector segment: a plain folder named by a UUID holding only HNSW files."""
    try:
        named = str(uuid.UUID(entry.name)) == entry.name
    except ValueError:
        return False
    return (named and entry.is_dir() and not entry.is_symlink()
            and all(f.name in HNSW_FILES and f.is_file() and not f.is_symlink() for f in entry.iterdir()))


def orphan_segments(folder: Path) -> list[Path] | None:
    """Segment folders in an on-disk Chroma folder that no collection uses (None: the catalogue is unreadable).

    Chroma 1.5.9 names a collection's HNSW folder after its vector segment's id; deleting the
    collection removes its rows from ``chroma.sqlite3`` (table ``segments``) but leaves the folder,
    and neither the client nor ``chroma vacuum`` (a log purge and SQLite ``VACUUM``) removes it. The
    folders are listed before the catalogue is read: Chroma writes a segment's row when it creates the
    collection and its folder on the first add (a manifest, which holds no items, has the row and no
    folder), so a folder listed here whose collection is live is always in the catalogue read after.
    """
    if not (folder / SQLITE_FILE).is_file():
        return []
    candidates = [entry for entry in sorted(folder.iterdir()) if _segment_folder(entry)]
    live = _segment_ids(folder)
    if live is None:
        return None
    return [entry for entry in candidates if entry.name not in live]


def remove_orphan_segments(folder: Path) -> Reclaimed:
    """Delete the segment folders of deleted collections (replaced, pruned or killed builds) in one Chroma folder.

    Only direct entries of ``folder`` that :func:`orphan_segments` finds are touched; when the
    catalogue cannot be read nothing is removed."""
    reclaimed = Reclaimed()
    for entry in orphan_segments(folder) or []:
        size = _tree_bytes(entry)
        shutil.rmtree(entry)
        reclaimed += Reclaimed(1, size)
    return reclaimed


def compact_catalogue(folder: Path) -> Reclaimed:
    """``VACUUM`` chroma.sqlite3 when deleted collections left more than ``COMPACT_MIN_FREE`` bytes of free pages in it.

    SQLite keeps a deleted collection's pages for reuse, so a rebuild (new build beside the old one)
    leaves the catalogue at two builds' size for good; ``chroma vacuum`` does the same ``VACUUM`` (and a
    log purge, automatic in the databases Chroma creates now) but asks for confirmation. A ``VACUUM`` is one
    transaction: a busy or unreadable catalogue is left as it was (its free pages are reused)."""
    path = folder / SQLITE_FILE
    if not path.is_file():
        return Reclaimed()
    size = path.stat().st_size
    try:
        with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as db:
            free = db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
            if free <= COMPACT_MIN_FREE:
                return Reclaimed()
            db.execute("VACUUM")
    except sqlite3.Error:
        return Reclaimed()
    return Reclaimed(catalogue_bytes=size - path.stat().st_size)


def disk_usage(folder: Path) -> dict[str, int]:
    """Bytes an on-disk index location takes: ``total``, ``sqlite`` (the catalogue, items and metadata),
    ``segments`` and ``segment_folders`` (HNSW), and ``orphans``/``orphan_bytes`` (folders the next build
    removes)."""
    segments = [entry for entry in folder.iterdir() if _segment_folder(entry)]
    orphans = orphan_segments(folder) or []
    return {
        "total": _tree_bytes(folder),
        "sqlite": sum(f.stat().st_size for f in folder.glob(f"{SQLITE_FILE}*") if f.is_file()),
        "segments": sum(_tree_bytes(entry) for entry in segments),
        "segment_folders": len(segments),
        "orphans": len(orphans),
        "orphan_bytes": sum(_tree_bytes(entry) for entry in orphans),
    }


def reclaim(folder: Path) -> Reclaimed:
    """Free what deleted collections left in one Chroma folder: their segment folders and the catalogue's free pages."""
    return remove_orphan_segments(folder) + compact_catalogue(folder)
