"""app/ imports run one way: pages -> sidebar -> widgets / links -> charts -> figures -> explanations -> compute
-> models / images -> jobs -> device / _cache (the map at the top of app/main.py).

Read from the source with `ast` (every import statement, those inside functions included), so a backwards
import fails here before it can make a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"

# A module may import app modules of a lower layer only (never its own layer, never a higher one).
LAYERS: dict[str, int] = {
    "_cache": 0, "device": 0, "access": 0, "cli": 0, "model_cache": 1,
    "jobs": 1,
    "models": 2, "images": 2,
    "compute": 3,
    "explanations": 4, "knockouts": 4,
    "figures": 5,
    "charts": 6, "sandbox": 6,
    "widgets": 7, "links": 7, "mechanisms": 7,
    "sidebar": 8, "tours": 8,
    "export": 9,
    "main": 10, "views": 10,  # every page of app/views/
}


def module_name(path: Path) -> str:
    """`app/jobs.py` -> "jobs"; every page of `app/views/` -> "views"."""
    return "views" if path.parent.name == "views" else path.stem


def app_imports(source: str, package: str = "app") -> set[str]:
    """The app modules a source file imports (first name under `app.`), however it imports them."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level:  # relative: inside app/ every relative import names an app module
                found.update([parts[0]] if parts[0] else [a.name for a in node.names])
            elif parts[0] == package:
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
    return found


def backwards_imports(name: str, source: str) -> list[str]:
    """The imports of module `name` that do not go to a lower layer."""
    return sorted(f"{name} (layer {LAYERS[name]}) imports {other} (layer {LAYERS.get(other, '?')})"
                  for other in app_imports(source) if LAYERS.get(other, LAYERS[name]) >= LAYERS[name])


def app_files() -> list[Path]:
    return sorted(p for p in APP.rglob("*.py") if p.name != "__init__.py")


def test_every_app_module_has_a_layer() -> None:
    missing = {module_name(p) for p in app_files()} - set(LAYERS)
    assert not missing, f"add these modules to LAYERS (and to the map in app/main.py): {sorted(missing)}"


@pytest.mark.parametrize("path", app_files(), ids=lambda p: str(p.relative_to(APP)))
def test_imports_run_one_way(path: Path) -> None:
    assert backwards_imports(module_name(path), path.read_text()) == []


@pytest.mark.parametrize("path", [p for p in app_files() if p.parent == APP and p.stem != "main"],
                         ids=lambda p: p.name)
def test_each_module_says_what_it_owns_and_may_import(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "May import" in doc or path.stem == "_cache", f"{path.name}: say what it owns and may import"


def test_the_check_catches_a_backwards_import() -> None:
    """The same check on sources with a backwards import, written in each way Python allows."""
    assert backwards_imports("jobs", "from app.compute import Context") == ["jobs (layer 1) imports compute (layer 3)"]
    assert backwards_imports("jobs", "def f():\n    from app import widgets") != []
    assert backwards_imports("models", "import app.images") != []  # same layer: no import between peers
    assert backwards_imports("figures", "from .sidebar import sidebar") != []
    assert backwards_imports("views", "from app import compute, widgets") == []
    assert backwards_imports("compute", "from app.jobs import memo\nimport t2t") == []


def test_the_library_imports_nothing_of_the_app() -> None:
    for package in ("t2t", "analysis"):
        for path in (ROOT / package).rglob("*.py"):
            assert not app_imports(path.read_text()), f"{path.relative_to(ROOT)} imports app/"
            assert "import streamlit" not in path.read_text(), f"{path.relative_to(ROOT)} imports streamlit"
