"""Which dataset splits a module reads: the "never reads test" checks of training and calibration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


@contextmanager
def splits_read(module: ModuleType) -> Iterator[list[str]]:
    """The splits ``module.load_split`` is asked for inside the block, in order.

    A plain patch rather than ``monkeypatch``: the module-scoped fixtures that use it cannot take
    the function-scoped ``monkeypatch``.
    """
    seen: list[str] = []
    real = module.load_split

    def spy(split, *args, **kwargs):
        seen.append(split)
        return real(split, *args, **kwargs)

    module.load_split = spy
    try:
        yield seen
    finally:
        module.load_split = real
