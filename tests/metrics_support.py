"""Comparing computed numbers with pinned ones, and batch metrics without their measured times."""

from __future__ import annotations

import math
from typing import Any


def assert_close(got, want, where: str = "metrics", tol: float = 1e-12) -> None:
    """Equal structure, equal strings and integers, floats within ``tol`` (nan equals nan)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}", tol)
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]", tol)
    elif isinstance(want, float):
        assert isinstance(got, (int, float)), f"{where}: {got!r} is not a number"
        assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= tol, f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def without_latency(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` less the measured times (for comparing two runs of the same batch)."""
    return metrics | {"arms": {k: {f: v for f, v in a.items() if f != "latency"} for k, a in metrics["arms"].items()}}
