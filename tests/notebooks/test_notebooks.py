"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, and the committed ones are current.

Notebooks are executed from an in-memory copy (the committed file is never touched; the executed
copy is saved under pytest's tmp_path for inspection) with the working directory notebooks/, by a
"python3" kernel that runs this very interpreter: a temporary kernelspec put first on JUPYTER_PATH,
so the test does not depend on where (or whether) a kernel was installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell


def load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A JUPYTER_PATH whose "python3" kernel is this interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return root


@pytest.fixture
def kernel_env(jupyter_path, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(jupyter_path), os.environ.get("JUPYTER_PATH", "")]))
    for name in list(os.environ):  # the notebooks' defaults (embedded weights), whatever the caller's shell says
        if name.startswith("T2T_LENS_") and name != "T2T_LENS_REQUIRE_BROWSER":
            monkeypatch.delenv(name)


def run_notebook(nb: nbformat.NotebookNode, cwd: Path = NOTEBOOKS) -> nbformat.NotebookNode:
    """Execute every cell in a fresh "python3" kernel; raises CellExecutionError on the first failure."""
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]


def test_the_four_notebooks_exist_and_are_built_by_the_script():
    build = load_build()
    assert [p.name for p in PATHS] == sorted(build.NOTEBOOKS)
    assert {p.name[:2] for p in PATHS} == {"01", "02", "03", "04"}


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path, kernel_env, tmp_path):
    nb = nbformat.read(path, as_version=4)
    try:
        run_notebook(nb)
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, outputs and all, to look at
    assert not error_outputs(nb)
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "notebook ran in" in last, "the last cell did not run"


def test_a_failing_notebook_fails_the_runner(kernel_env):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('boom')"),
                nbformat.v4.new_code_cell("y = 2")]
    with pytest.raises(CellExecutionError, match="boom"):
        run_notebook(nb)
    assert nb.cells[2].execution_count is None  # execution stopped at the failing cell


def test_committed_notebooks_match_their_source():
    build = load_build()
    for path in PATHS:
        committed = build.sources(nbformat.read(path, as_version=4))
        assert committed == build.sources(build.build(path.name)), (
            f"{path.name} differs from notebooks/_build.py: run python notebooks/_build.py --execute")


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_notebooks_carry_their_outputs(path):
    """Committed after a full, clean run: every code cell executed in order, no errors, trained weights."""
    import t2t

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "not executed top to bottom"
    assert not error_outputs(nb)
    assert any(o.output_type == "display_data" for c in code for o in c.outputs) or path.name.startswith("04")
    setup = "".join(o.get("text", "") for o in code[0].outputs)
    if {"t2t_vit_7", "deit_tiny_patch16_224"} <= set(t2t.list_embedded()):
        assert setup.count("weights: embedded") == 2, "saved outputs are not from the embedded (trained) models"
