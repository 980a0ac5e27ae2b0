"""The import layering of DESIGN.md: each layer imports only from layers below it (or itself).

    core (config, data, schemas, records, ...) <- training <- tools <- agents <- graphs <- evaluation <- studies <- cli

Studies sit beside the evaluations: they may use them (the task-2 report runs a batch), never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["core", "training", "tools", "agents", "graphs", "evaluation", "studies", "cli"]
FOLDERS = {  # layer -> source folder (each top-level folder maps into the casereview namespace; pyproject.toml)
    "core": [REPO / "core"],
    "training": [REPO / "training"],
    "tools": [REPO / "tools"],
    "agents": [REPO / "agents"],
    "graphs": [REPO / "graphs"],
    "evaluation": [REPO / "evaluation"],
    "studies": [REPO / "studies"],
    "cli": [REPO / "cli"],
}


def layer_of_module(name: str) -> str | None:
    """The layer of an imported module name, None for modules outside the project."""
    parts = name.split(".")
    if parts[0] != "casereview":
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def source_files() -> list[tuple[str, Path]]:
    return [(layer, p) for layer, folders in FOLDERS.items() for f in folders for p in f.rglob("*.py")]


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if node.module == "casereview"]
    return names


def test_the_layer_map_covers_every_source_file():
    files = source_files()
    assert len(files) > 40 and {layer for layer, _ in files} == set(LAYERS)


@pytest.mark.parametrize(("layer", "path"), source_files(), ids=lambda x: x if isinstance(x, str) else x.name)
def test_imports_point_down(layer, path):
    upward = [m for m in imported_modules(path)
              if (target := layer_of_module(m)) is not None and LAYERS.index(target) > LAYERS.index(layer)]
    assert not upward, f"{path.relative_to(REPO)} ({layer}) imports from a higher layer: {upward}"


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from casereview.graphs.graph import build_graph\nimport casereview.cli\n")
    assert [layer_of_module(m) for m in imported_modules(bad)] == ["graphs", "cli"]
