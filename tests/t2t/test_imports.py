"""The t2t modules import each other without a cycle, and each model module imports alone.

The graph is read from the source with `ast`, counting every import: at module level, under
`if TYPE_CHECKING:` (a type-only import still says which module sits above which) and inside
functions. Edges into the package root `t2t` (its `__init__` re-exports the public API, so it sits
above every module by design) are left out: a module that reaches a re-exported name through
`import t2t` is not a layer below the package.

Importing `t2t.X` normally runs `t2t/__init__.py` first, whose fixed import order hides a cycle that
another entry point would hit; a fresh interpreter here imports each model module with a bare package
in place of `t2t` and no other t2t module loaded, so only the module and what it imports itself run.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "t2t"
# the modules of the models and the trace: what issue 26 found in a circle, and their home below them
MODEL_MODULES = ("t2t.tokens", "t2t.layers", "t2t.t2t_vit", "t2t.vit", "t2t.trace")


def module_names() -> dict[str, Path]:
    """Dotted name -> source file of every module under t2t/ (packages by their __init__.py)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(path: Path, package: str, known: set[str]) -> set[str]:
    """The modules of `known` that the source at `path` imports anywhere in its text."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base in known:
                out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}  # from pkg import mod
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the t2t modules it imports (the package root `t2t` left out as a target, see above)."""
    names = module_names()
    known = set(names) - {"t2t"}
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imported(path, package, known) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None: depth-first search with the path on a stack."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_finds_a_circle_and_only_a_circle() -> None:
    # the circle of issue 26: layers -> trace (Tape) -> t2t_vit (SOFT_SPLITS) -> layers
    circle = {"layers": {"trace"}, "trace": {"t2t_vit"}, "t2t_vit": {"layers"}, "vit": {"layers"}}
    cycle = find_cycle(circle)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"layers", "trace", "t2t_vit"}
    assert find_cycle({"layers": {"tokens"}, "trace": {"tokens"}, "t2t_vit": {"layers", "tokens"}}) is None


def test_imported_counts_type_checking_function_local_and_relative_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nimport torch\nif TYPE_CHECKING:\n    from t2t.trace import Tape\n"
                   "def f():\n    from t2t import validate\n    from .layers import Block\n")
    assert imported(src, "t2t", {"t2t.trace", "t2t.validate", "t2t.layers", "t2t.vit"}) == {
        "t2t.trace", "t2t.validate", "t2t.layers"}


def test_t2t_modules_import_without_a_cycle() -> None:
    graph = import_graph()
    assert set(MODEL_MODULES) <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_shared_names_have_a_home_below_the_model_modules() -> None:
    graph = import_graph()
    assert graph["t2t.tokens"] == set(), "t2t.tokens must import no other t2t module"
    for name in ("t2t.layers", "t2t.t2t_vit", "t2t.vit", "t2t.trace"):
        assert "t2t.tokens" in graph[name], name  # Tape (type) or the split geometry come from there
    assert "t2t.trace" not in graph["t2t.layers"] | graph["t2t.t2t_vit"] | graph["t2t.vit"]
    assert "t2t.t2t_vit" not in graph["t2t.trace"]


def test_the_moved_names_stay_importable_where_they_were() -> None:
    # (`t2t.trace` as an attribute is the function t2t/__init__ re-exports: the modules by name)
    tokens, trace, t2t_vit = (importlib.import_module(f"t2t.{m}") for m in ("tokens", "trace", "t2t_vit"))
    assert trace.Tape is tokens.Tape and trace.LazyAttention is tokens.LazyAttention
    assert t2t_vit.SOFT_SPLITS is tokens.SOFT_SPLITS and t2t_vit.grid_after is tokens.grid_after


ALONE = """
import importlib, json, sys, types
loaded = {{}}
for name in {names!r}:
    for m in [m for m in sys.modules if m == "t2t" or m.startswith("t2t.")]:
        del sys.modules[m]  # alone: no t2t module is loaded when `name` is imported
    package = types.ModuleType("t2t")
    package.__path__ = [{path!r}]  # a bare package: t2t/__init__.py (which imports everything) does not run
    sys.modules["t2t"] = package
    importlib.import_module(name)
    loaded[name] = sorted(m for m in sys.modules if m.startswith("t2t."))
print(json.dumps(loaded))
"""


def test_each_model_module_imports_alone_in_a_fresh_interpreter() -> None:
    # one interpreter (torch imported once) in which each module is imported with every t2t module unloaded
    done = subprocess.run([sys.executable, "-c", ALONE.format(path=str(PACKAGE), names=MODEL_MODULES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"a module failed to import alone:\n{done.stderr[-2000:]}"
    loaded = {name: set(mods) for name, mods in json.loads(done.stdout).items()}
    assert loaded["t2t.tokens"] == {"t2t.tokens"}
    assert loaded["t2t.layers"] == {"t2t.layers"}  # Tape is a type-only import there
    assert loaded["t2t.trace"] == {"t2t.trace", "t2t.tokens"}
    assert loaded["t2t.t2t_vit"] == {"t2t.t2t_vit", "t2t.layers", "t2t.tokens"}
    assert loaded["t2t.vit"] == {"t2t.vit", "t2t.layers"}
