"""The import layering of DESIGN.md: each layer imports only from layers below it (or itself).

    core (config, data, schemas, records, ...) <- training <- tools <- agents <- graphs <- evaluation <- cli <- studies

The studies (research: task reports, studies, their figures and commands) are the top: they may use
everything (the task-2 report runs a batch; their commands register with the CLI), and nothing imports
them, not even by a module name in a string: the CLI finds their commands through an entry point.

``python tests/test_layers.py`` prints the folder -> folder import edges as a Mermaid graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["core", "training", "tools", "agents", "graphs", "evaluation", "cli", "studies"]
FOLDERS = {  # layer -> source folder (each top-level folder maps into the casereview namespace; pyproject.toml)
    "core": [REPO / "core"],
    "training": [REPO / "training"],
    "tools": [REPO / "tools"],
    "agents": [REPO / "agents"],
    "graphs": [REPO / "graphs"],
    "evaluation": [REPO / "evaluation"],
    "cli": [REPO / "cli"],
    "studies": [REPO / "studies"],
}
# what else ships or runs the product: it may use any layer but the studies
OTHER_CODE = [REPO / "notebooks" / "execute.py", *sorted((REPO / "benchmarks").glob("*.py"))]


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


@pytest.mark.parametrize("path", [p for layer, p in source_files() if layer != "studies"] + OTHER_CODE,
                         ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_imports_the_studies(path):
    """Not by an import, nor by a module name in a string (``importlib.import_module("casereview.studies...")``)."""
    assert "casereview.studies" not in path.read_text(), f"{path.relative_to(REPO)} refers to casereview.studies"


def test_the_cli_finds_the_studies_commands_through_the_entry_point():
    from importlib.metadata import entry_points

    from casereview.cli import PLUGIN_GROUP, build_parser

    assert {ep.value for ep in entry_points(group=PLUGIN_GROUP)} == {"casereview.studies.commands:register"}
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"report", "study", "robustness"} <= set(commands)


def test_a_plugin_that_does_not_import_leaves_the_other_commands_working(monkeypatch, capsys):
    from importlib.metadata import EntryPoint

    import casereview.cli as cli

    broken = EntryPoint(name="broken", value="casereview.no_such_module:register", group=cli.PLUGIN_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken])
    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    assert "review" in commands and "report" not in commands
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: the commands of casereview.no_such_module:register are not available")
    assert len(err.splitlines()) == 1


def folder_edges() -> dict[tuple[str, str], int]:
    """(importing layer, imported layer) -> number of import statements, for layers that differ."""
    edges: dict[tuple[str, str], int] = {}
    for layer, path in source_files():
        for target in {layer_of_module(m) for m in imported_modules(path)} - {None, layer}:
            edges[(layer, target)] = edges.get((layer, target), 0) + 1
    return edges


def test_the_drawing_has_only_downward_edges():
    edges = folder_edges()
    assert ("cli", "evaluation") in edges and ("studies", "cli") in edges
    assert all(LAYERS.index(a) > LAYERS.index(b) for a, b in edges)


if __name__ == "__main__":  # the drawing: each arrow is "imports", labelled with the number of importing files
    print("graph BT")
    for (a, b), n in sorted(folder_edges().items(), key=lambda e: (LAYERS.index(e[0][0]), LAYERS.index(e[0][1]))):
        print(f"  {a} -->|{n}| {b}")


def module_level_imports(path: Path) -> list[str]:
    """Modules imported when ``path`` is imported (its top-level statements, not its functions')."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_matplotlib_loads_only_where_a_figure_is_drawn():
    """Only figure modules (``*_figures.py``) and the studies import matplotlib when they load; the product
    imports a figure module inside the function that draws, so its commands start without it."""
    for layer, path in source_files():
        if layer == "studies" or path.name.endswith("_figures.py"):
            continue
        eager = [m for m in module_level_imports(path) if m.startswith("matplotlib") or m.endswith("_figures")]
        assert not eager, f"{path.relative_to(REPO)} imports {eager} when it loads"
