"""Saving case records: ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``, each written whole or not at all.

Record names never collide: a dataset case is ``test_42``; an image file is its readable
name plus a short hash of its full path, so ``a b.png`` and ``a_b.png`` (or two files of the
same name in different folders) get different records.

A record file belongs to the run that wrote it (``provenance.run_id``): another run saving the
same case into the same folder is refused (:class:`RecordOwnedError`) instead of replacing it,
and a resumed run rewrites a file only when it holds no other run's record (:func:`record_owner`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from casereview.data import parse_ref
from casereview.errors import CaseReviewError, shown
from casereview.render import render

VIEW_SCALE = 8  # a 28x28 image is saved at 224x224 (nearest neighbour: the pixels as the models get them)


def record_stem(case_id: str) -> str:
    """A file stem for a case id: ``test:42`` -> ``test_42``; a path -> ``<name>-<hash of the path>``."""
    if parse_ref(case_id):
        return case_id.replace(":", "_")
    # \w keeps letters of any script readable (肺炎.png -> 肺炎-<hash>); the hash keeps names apart.
    name = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", Path(case_id).stem)).strip("_.")[:60] or "image"
    digest = hashlib.sha256(str(Path(case_id).resolve()).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


class RecordOwnedError(CaseReviewError):
    """The record file of a case already holds another run's record."""

    resumable = False  # resuming this run cannot make another run's file its own


def record_owner(path: Path) -> str | None:
    """The run id of the record at ``path``; None when there is no readable record there (no file, a
    corrupt or foreign JSON), which a save may replace."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    owner = data.get("provenance", {}).get("run_id") if isinstance(data, dict) and isinstance(data.get("provenance"), dict) else None
    return owner if isinstance(owner, str) else None


def check_record_owner(path: Path, run_id: str | None) -> None:
    """Raise :class:`RecordOwnedError` if ``path`` holds the record of a run other than ``run_id``."""
    owner = record_owner(path)
    if run_id is not None and owner is not None and owner != run_id:
        raise RecordOwnedError(
            f"{shown(path)} holds the record of run {shown(owner)}, not of run {shown(run_id)}: give this run its "
            f"own --out (or omit --out: each run gets <workdir>/reviews/<run id>), or resume run {shown(owner)} "
            f"with --run-id {shown(owner)}")


def claim_records(out_dir: Path, case_ids: list[str], run_id: str) -> None:
    """Before any case starts: refuse a folder where any of these cases already has another run's record."""
    for case_id in case_ids:
        check_record_owner(out_dir / f"{record_stem(case_id)}.json", run_id)


def is_saved(record: dict[str, Any], out_dir: Path) -> bool:
    """Whether ``out_dir`` holds this record's files as its own run wrote them (not merely a JSON of that name)."""
    path = out_dir / f"{record_stem(record['case_id'])}.json"
    return record_owner(path) == record["provenance"]["run_id"] and all(
        path.with_suffix(suffix).is_file() for suffix in (".md", ".png"))


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file in the same folder and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # remove_orphan_tmp reads the writer's pid from it
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.replace(path)
    except OSError as exc:  # a full disk mid-write: no partial temporary file stays, and the error names the file
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:  # Ctrl-C mid-write
        tmp.unlink(missing_ok=True)
        raise


def view_png(image: np.ndarray) -> bytes:
    """A 28x28 case image enlarged for viewing, as PNG bytes."""
    from io import BytesIO

    h, w = image.shape
    buf = BytesIO()
    Image.fromarray(image).resize((w * VIEW_SCALE, h * VIEW_SCALE), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_TIDIED: set[Path] = set()


def remove_orphan_tmp(folder: Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``folder`` (those of processes
    that no longer run; a live writer's file is kept); returns them."""
    removed = []
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_case_record(record: dict[str, Any], image: np.ndarray, out_dir: Path, stem: str | None = None) -> Path:
    """Write the record's JSON, its Markdown view and its image under ``out_dir``; returns the JSON path.

    The JSON is written last: a record whose JSON exists is complete. A record of another run in its
    place is never replaced (:class:`RecordOwnedError`).
    """
    stem = stem or record_stem(record["case_id"])
    provenance = record.get("provenance")
    check_record_owner(out_dir / f"{stem}.json", provenance.get("run_id") if isinstance(provenance, dict) else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir not in _TIDIED:  # once per folder and process: a resumed run leaves no orphan behind
        remove_orphan_tmp(out_dir)
        _TIDIED.add(out_dir)
    write_atomic(out_dir / f"{stem}.png", view_png(np.asarray(image, dtype=np.uint8)))
    write_atomic(out_dir / f"{stem}.md", render("case_review.md.j2", r=record, image_file=f"{stem}.png"))
    write_atomic(out_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    return out_dir / f"{stem}.json"
