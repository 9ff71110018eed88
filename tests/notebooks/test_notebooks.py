"""Every notebook in notebooks/ is a jupytext pair in sync, runs top to bottom in a fresh kernel, and is
committed executed, with figures that fit the page.

A notebook is NAME.py (percent-format source) + NAME.ipynb (the same cells with their outputs), paired by
notebooks/jupytext.toml. "In sync" means what `jupytext --sync` would leave alone: the .ipynb written as a
percent script with the pairing's options is byte for byte the committed .py.

Notebooks are executed from an in-memory copy (the committed file is never touched; the executed copy is
saved under pytest's tmp_path for inspection) with the working directory notebooks/, by a "python3" kernel
that runs this very interpreter: a temporary kernelspec put first on JUPYTER_PATH, so the test does not
depend on where (or whether) a kernel was installed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import load_jupytext_config
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell
# Widest PNG (pixels) that GitHub's notebook view and JupyterLab's output area show unscaled, so that the
# 10 pt text of analysis.notebook.STYLE (at 96 dpi, one image pixel per CSS pixel) stays 10 pt on screen.
MAX_PNG_WIDTH = 840
SYNC_HINT = "run `jupytext --sync notebooks/*.py` (after editing the .py) or save the notebook in Jupyter"


def as_script(nb: nbformat.NotebookNode) -> str:
    """The percent script `jupytext --sync` writes for this notebook (notebooks/jupytext.toml's options)."""
    return jupytext.writes(nb, fmt="py:percent", config=load_jupytext_config(str(NOTEBOOKS)))


def sync_problem(ipynb: Path, script: str | None = None) -> str | None:
    """Why `ipynb` and its .py are not in sync (the first differing line), or None when they are."""
    script = ipynb.with_suffix(".py").read_text() if script is None else script
    expected = as_script(jupytext.read(ipynb))
    if expected == script:
        return None
    for n, (want, have) in enumerate(zip(expected.splitlines(), script.splitlines(), strict=False), start=1):
        if want != have:
            return f"line {n} of {ipynb.stem}.py is {have!r}, the .ipynb has {want!r}"
    return f"{ipynb.stem}.py has {len(script.splitlines())} lines, the .ipynb {len(expected.splitlines())}"


def png_width(data: str) -> int:
    """Width in pixels of a base64 PNG (from its IHDR chunk)."""
    return struct.unpack(">I", base64.b64decode(data[:64])[16:20])[0]


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
    # importing streamlit (the app tests, earlier in the same pytest run) sets MPLBACKEND=Agg in os.environ;
    # a kernel inheriting it draws no inline figures, unlike the Jupyter a reader opens the notebook in
    monkeypatch.delenv("MPLBACKEND", raising=False)


def run_notebook(nb: nbformat.NotebookNode, cwd: Path = NOTEBOOKS) -> nbformat.NotebookNode:
    """Execute every cell in a fresh "python3" kernel; raises CellExecutionError on the first failure."""
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def shown(nb: nbformat.NotebookNode) -> list[list[str]]:
    """Per code cell, the kinds of output it shows in order ("stdout", "figure", ...); consecutive chunks
    of one stream count once (how a stream is cut into chunks depends on timing)."""
    cells = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        kinds: list[str] = []
        for o in cell.outputs:
            kind = o.name if o.output_type == "stream" else "figure" if "image/png" in o.get("data", {}) \
                else o.output_type
            if not (kinds and kind == kinds[-1] and o.output_type == "stream"):
                kinds.append(kind)
        cells.append(kinds)
    return cells


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]


def test_the_six_notebooks_are_pairs():
    assert {p.name[:2] for p in PATHS} == {"01", "02", "03", "04", "05", "06"}
    scripts = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    assert scripts == [p.stem for p in PATHS], "every NAME.ipynb has its NAME.py and no other .py lives there"
    config = load_jupytext_config(str(NOTEBOOKS))
    for path in PATHS:  # the pairing Jupyter and `jupytext --sync` apply, from notebooks/jupytext.toml
        assert config.default_formats(str(path)) == "ipynb,py:percent"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_pair_is_in_sync(path):
    problem = sync_problem(path)
    assert problem is None, f"{path.name} and {path.stem}.py differ: {problem}; {SYNC_HINT}"


def test_the_sync_check_sees_an_edit_on_either_side(tmp_path):
    path = PATHS[0]
    script = path.with_suffix(".py").read_text()
    assert sync_problem(path, script) is None
    edited = script.replace("# %%\n", "# %%\nx = 1  # an edit in an editor\n", 1)
    assert edited != script and "line" in sync_problem(path, edited)

    nb = nbformat.read(path, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.source += "\ny = 2  # an edit in Jupyter"
    nbformat.write(nb, tmp_path / path.name)
    assert sync_problem(tmp_path / path.name, script) is not None


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path, kernel_env, tmp_path):
    nb = nbformat.read(path, as_version=4)
    saved = shown(nb)
    try:
        run_notebook(nb)
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, outputs and all, to look at
    assert not error_outputs(nb)
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "notebook ran in" in last, "the last cell did not run"
    assert shown(nb) == saved, f"{path.name} now shows other outputs than it was committed with: re-execute it"


def test_shown_tells_outputs_apart_but_not_stream_chunks():
    nb = nbformat.v4.new_notebook()
    out = nbformat.v4.new_output
    nb.cells = [nbformat.v4.new_code_cell("print(1); print(2)"), nbformat.v4.new_markdown_cell("text")]
    nb.cells[0].outputs = [out("stream", name="stdout", text="1\n"), out("stream", name="stdout", text="2\n")]
    assert shown(nb) == [["stdout"]]
    nb.cells[0].outputs = [out("stream", name="stdout", text="1\n2\n")]
    assert shown(nb) == [["stdout"]]
    nb.cells[0].outputs.append(out("display_data", data={"image/png": "iVBO", "text/plain": "<Figure>"}))
    nb.cells[0].outputs.append(out("stream", name="stderr", text="warning"))
    assert shown(nb) == [["stdout", "figure", "stderr"]]


def test_a_failing_notebook_fails_the_runner(kernel_env):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('boom')"),
                nbformat.v4.new_code_cell("y = 2")]
    with pytest.raises(CellExecutionError, match="boom"):
        run_notebook(nb)
    assert nb.cells[2].execution_count is None  # execution stopped at the failing cell


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_notebooks_carry_their_outputs(path):
    """Committed after a full, clean run: every code cell executed in order, no errors or warnings, trained weights."""
    import t2t

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "not executed top to bottom"
    assert not error_outputs(nb)
    stderr = [o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"warnings in the saved outputs: {stderr}"
    assert any(o.output_type == "display_data" for c in code for o in c.outputs)
    assert "notebook ran in" in "".join(o.get("text", "") for o in code[-1].outputs)
    setup = "".join(o.get("text", "") for o in code[0].outputs)
    if {"t2t_vit_7", "deit_tiny_patch16_224"} <= set(t2t.list_embedded()):
        assert setup.count("weights: embedded") == 2, "saved outputs are not from the embedded (trained) models"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_figures_fit_the_page_with_legible_text(path):
    """Every saved figure is shown unscaled, and no cell asks for text below the style's 10 pt."""
    nb = nbformat.read(path, as_version=4)
    widths = [png_width(o.data["image/png"]) for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert widths and max(widths) <= MAX_PNG_WIDTH, f"figure widths {widths} px, at most {MAX_PNG_WIDTH}"
    source = path.with_suffix(".py").read_text()
    small = re.findall(r"\b(?:fontsize|labelsize|size)\s*=\s*(?:[0-7](?:\.\d+)?|[89](?:\.\d+)?|\"[a-z-]*small\")\b",
                       source)
    assert not small, f"text smaller than 10 pt asked for: {small}"
    assert "notebook.use_style()" in source, "the notebook does not set the shared figure style"
