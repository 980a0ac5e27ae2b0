"""What a caller may give the graph, checked before anything reads a file or loads a model.

A caller in this process (the CLI, batch, the notebook) passes its own :class:`Settings` in the
run context and may name any image path and precomputed evidence. A caller of LangGraph's server
cannot pass Python objects: it gives a dataset reference or the bytes of an image, and an image
path only inside the folders ``graph.caller_folders`` names. Every refusal is one line that never
says whether a path exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from casereview.config import Settings
from casereview.data import Case, case_from_bytes, check_ref, load_case, parse_ref
from casereview.errors import CaseReviewError
from casereview.paths import NAME_PATTERN
from casereview.schemas import CaseEvidence
from casereview.tools.context import RunContext

MAX_REF_CHARS = 1_000
NOT_A_CASE = ("case_ref must be a dataset reference such as test:42{folders}; to review an image of your own, "
              "send its bytes as image_base64")


class InputRefused(CaseReviewError):
    """A caller's input that the graph does not take (the run ends with this as its ``error``)."""


def trusted(ctx: RunContext) -> bool:
    """A caller in this process: only Python code can put a :class:`Settings` into the context."""
    return isinstance(ctx.settings, Settings)


def check_context(ctx: RunContext) -> None:
    """A served caller's context holds a run id and a reviewer name at most."""
    if ctx.settings is not None and not trusted(ctx):
        raise InputRefused("context.settings is not accepted from a caller: the server uses its own settings")
    if ctx.out is not None and not isinstance(ctx.out, Path):
        raise InputRefused("context.out is not accepted from a caller: records go to the server's work folder")
    if ctx.run_id is not None:
        if not isinstance(ctx.run_id, str) or not NAME_PATTERN.fullmatch(ctx.run_id):
            raise InputRefused("context.run_id must be a plain name: 1 to 128 letters, digits, '.', '_' or '-', "
                               "not starting with '.'")
    if ctx.reviewer is not None and (not isinstance(ctx.reviewer, str) or not 0 < len(ctx.reviewer) <= 200):
        raise InputRefused("context.reviewer must be a name of 1 to 200 characters")


def _allowed(path: Path, folders: list[Path]) -> bool:
    real = path.resolve()  # links resolved: a link inside a folder that points out of it is outside
    return any(real.is_relative_to(Path(f).resolve()) for f in folders)


def caller_case(state: dict[str, Any], ctx: RunContext, in_process: bool) -> Case:
    """The case a caller named (``case_ref``) or sent (``image_base64``), decoded once; an
    :class:`InputRefused` for anything else. ``in_process``: the caller passed its own settings
    (:func:`trusted`, asked of the context as the caller gave it) and may name any image path."""
    s: Settings = ctx.settings
    ref, data = state.get("case_ref"), state.get("image_base64")
    if (ref is None) == (data is None):
        raise InputRefused("give exactly one of case_ref (a dataset reference such as test:42) and image_base64 "
                           "(the bytes of a PNG or JPEG file, base64-encoded)")
    if data is not None:
        return _sent_case(data, s.graph.caller_image_max_bytes)
    if not isinstance(ref, str) or not ref.strip() or len(ref) > MAX_REF_CHARS:
        got = f"{len(ref.strip()):,} characters" if isinstance(ref, str) else f"a JSON {type(ref).__name__}"
        raise InputRefused(f"case_ref must be a non-empty string of at most {MAX_REF_CHARS:,} characters (got {got})")
    if parse_ref(ref) is None and not in_process:
        folders = s.graph.caller_folders
        if not folders or "\x00" in ref or not _allowed(Path(ref), folders):
            raise InputRefused(NOT_A_CASE.format(folders=", or an image path inside the folders this server "
                                                 "allows" if folders else ""))
        try:
            return load_case(ref, s.data.root, s.data.download)
        except CaseReviewError:  # a missing file and a bad one read alike: nothing about the disk leaks
            raise InputRefused(f"case_ref {ref[:200]!r} is not a readable image in the allowed folders") from None
    try:
        check_ref(ref, s.data.root, s.data.download)
    except CaseReviewError as exc:
        raise InputRefused(str(exc)) from None
    return load_case(ref, s.data.root, s.data.download)


def _sent_case(data: Any, max_bytes: int) -> Case:
    if not isinstance(data, str):
        raise InputRefused(f"image_base64 must be a base64 string, got {type(data).__name__}")
    if len(data) > (max_bytes * 4) // 3 + 4:
        raise InputRefused(f"image_base64 is over the limit of {max_bytes:,} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputRefused("image_base64 is not valid base64") from None
    name = f"upload-{hashlib.sha256(raw).hexdigest()[:12]}"  # the same bytes are the same case
    try:
        return case_from_bytes(raw, name)
    except CaseReviewError as exc:
        raise InputRefused(f"image_base64: {exc}") from None


def check_precomputed(value: Any) -> None:
    """Evidence computed ahead comes from this process only (a JSON caller cannot build the model)."""
    if value is not None and not isinstance(value, CaseEvidence):
        raise InputRefused("precomputed evidence is accepted only from a caller in the same process")
