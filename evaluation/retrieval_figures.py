"""Retrieval grids: each row is a query (image or text) beside its top-k neighbours with labels and similarities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from casereview.schemas import Neighbour
from casereview.data import load_split

AGREE, DISAGREE, NEUTRAL = "#1a7f37", "#cf222e", "black"


@dataclass
class GridRow:
    caption: str  # the query: case id and label, or the query text
    image: np.ndarray | None  # uint8 (28, 28); None for a text query
    label: str | None  # the query's known label; neighbours that share it are captioned in green
    neighbours: list[Neighbour]


def save_retrieval_grid(rows: Sequence[GridRow], path: Path, data_root: Path | None, title: str | None = None) -> Path:
    """Draw one row per query (query first, then its neighbours) and save it as an image file."""
    from matplotlib.figure import Figure  # imported where a figure is drawn: `search` without --grid never does

    k = max(len(r.neighbours) for r in rows)
    fig = Figure(figsize=(1.35 * (k + 1), 1.75 * len(rows) + (0.4 if title else 0)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), k + 1, squeeze=False))
    for row, ax_row in zip(rows, axes):
        for ax in ax_row:
            ax.set_axis_off()
        query_ax = ax_row[0]
        if row.image is not None:
            query_ax.imshow(row.image, cmap="gray", vmin=0, vmax=255)
        query_ax.set_title(f"QUERY\n{row.caption}", fontsize=7, fontweight="bold")
        for ax, neighbour in zip(ax_row[1:], row.neighbours):
            ax.imshow(load_split(neighbour.split, data_root).images[neighbour.index], cmap="gray", vmin=0, vmax=255)
            colour = NEUTRAL if row.label is None else AGREE if neighbour.label == row.label else DISAGREE
            ax.set_title(f"{neighbour.case_id}\n{neighbour.label}\nsim {neighbour.similarity:.3f}", fontsize=7, color=colour)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
