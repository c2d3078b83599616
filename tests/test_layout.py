"""The package's rooms and who may import whom (ARCHITECTURE's layout), read from the source:
every ``import`` statement counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "drpose"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """drpose modules named by the import statements of one file (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "drpose" or name.startswith("drpose.")}


GRAPH = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _importers(source: str, target: str) -> list[str]:
    """Modules in room ``source`` that import anything in room ``target``."""
    def inside(name: str, room: str) -> bool:
        return name == room or name.startswith(room + ".")

    return sorted(module for module, names in GRAPH.items() if inside(module, source)
                  and any(inside(name, target) for name in names))


# The experiment (python -m drpose.eval experiment) trains the models it then judges: the one
# place that stands above both training and evaluation. Nothing else in drpose.eval imports
# drpose.train; its judges live below both (drpose/reward/judges.py).
ABOVE_BOTH = ("drpose.eval.experiment", "drpose.eval.__main__")


@pytest.mark.parametrize(("source", "target"), [
    ("drpose.motion", "drpose.data"),  # data builds on motion, never the reverse
    ("drpose.infer", "drpose.train"),  # inference needs no training defaults
    ("drpose.eval", "drpose.train"),
    ("drpose.train", "drpose.eval"),  # training and evaluation share what lies below both
    ("drpose.render", "drpose.data"),
])
def test_room_does_not_import(source, target):
    assert [m for m in _importers(source, target) if m not in ABOVE_BOTH] == []


def test_motion_and_data_modules_form_no_import_cycle():
    rooms = ("drpose.motion.", "drpose.data.")
    motion = {m: {n for n in names if n in GRAPH and n.startswith(rooms)}
              for m, names in GRAPH.items() if m.startswith(rooms)}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for name in motion[module]:
            visit(name, (*path, module))
        done.add(module)

    for module in motion:
        visit(module, ())


def test_one_module_draws_with_pil():
    drawers = sorted(module for module, path in
                     ((_module_name(p), p) for p in PACKAGE.rglob("*.py"))
                     if "ImageDraw" in path.read_text())
    assert drawers == ["drpose.render.draw"]
