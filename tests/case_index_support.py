"""Helpers for the case-index tests: a tiny open_clip model built offline, settings for a small index."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_clip(folder: Path, seed: int = 0) -> str:
    """Save a randomly initialised tiny CLIP (config + weights) and return its ``local-dir:`` name.

    Random weights: it tests code paths (loading, image and text towers, search), never quality.
    """
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def index_settings(workdir: Path, data_root: Path, checkpoint: Path | None = None, limit: int = 40, **index):
    """Settings for a small index (the first ``limit`` images of each split) under ``workdir``."""
    from casereview.config import load_settings

    return load_settings(
        overrides={
            "data": {"root": data_root},
            "paths": {"workdir": workdir},
            "classifier": {"checkpoint": checkpoint, "device": "cpu"},
            "index": {"limit": limit, "device": "cpu", **index},
        }
    )


def build_killed_mid_add(workdir: str, data_root: str, limit: str) -> None:
    """Rebuild a pixels index and SIGKILL this process once part of the val collection is added.

    Run in a child process (``python -c``): no ``except``/``finally`` of the build runs, as when a
    user kills it; the train collection is complete and the val collection half built."""
    import os
    import signal

    from casereview.tools import index_build

    real_add = index_build._add

    def add_then_die(collection, ids, vectors, metadatas, progress):
        if collection.name.endswith("-val"):
            half = len(ids) // 2
            real_add(collection, ids[:half], vectors[:half], metadatas[:half], progress)
            os.kill(os.getpid(), signal.SIGKILL)
        real_add(collection, ids, vectors, metadatas, progress)

    index_build._add = add_then_die
    settings = index_settings(Path(workdir), Path(data_root), limit=int(limit), embedder="pixels")
    index_build.build_index(settings, rebuild=True, progress=False)
