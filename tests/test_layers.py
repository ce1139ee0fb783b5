"""The package's layers import downwards only: no module imports a later stage."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_anogan"

LAYERS = (
    {"settings", "errors", "events", "progress", "_atomic", "device", "resources"},
    {"io"},
    {"preprocess", "datasets"},
    {"models"},
    {"scoring"},
    {"mapping"},
    {"checkpoint", "model_card"},
    {"training"},
    {"pipeline"},
    {"evaluation"},
    # front ends: the CLI (its ``view`` command opens the widgets) and the napari plugin
    {"cli", "_widgets", "_reader", "_writer", "_sample_data"},
)
"""The pipeline's stages in order; a module may import its own stage and earlier ones.
That the core runs without napari and Qt is tested in test_packaging.py."""


def _layer(part: str) -> int:
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"napari_anogan.{part} is in no layer of LAYERS")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "napari_anogan" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


def test_no_module_imports_a_later_stage():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        own = _layer(rel.parts[0].removesuffix(".py"))
        for part in _imports(path):
            if part in {name for names in LAYERS for name in names} and _layer(part) > own:
                problems.append(f"{rel} imports napari_anogan.{part}")
    assert not problems, problems
