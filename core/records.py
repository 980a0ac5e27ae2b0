"""Saving case records: ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``, each written whole or not at all.

Record names never collide: a dataset case is ``test_42``; an image file is its readable
name plus a short hash of its full path, so ``a b.png`` and ``a_b.png`` (or two files of the
same name in different folders) get different records.
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

    The JSON is written last: a record whose JSON exists is complete.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir not in _TIDIED:  # once per folder and process: a resumed run leaves no orphan behind
        remove_orphan_tmp(out_dir)
        _TIDIED.add(out_dir)
    stem = stem or record_stem(record["case_id"])
    write_atomic(out_dir / f"{stem}.png", view_png(np.asarray(image, dtype=np.uint8)))
    write_atomic(out_dir / f"{stem}.md", render("case_review.md.j2", r=record, image_file=f"{stem}.png"))
    write_atomic(out_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    return out_dir / f"{stem}.json"
