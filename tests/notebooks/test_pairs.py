"""`jupytext --sync` on a clean copy of notebooks/ rewrites nothing, whichever file of a pair is newer.

tests/notebooks/test_notebooks.py checks that each .py is what its .ipynb writes; this checks the
other direction too, with jupytext's own command: a notebook whose metadata lacks the pairing's
filters (notebook 05 once carried jupytext's `text_representation` instead) is rewritten by a sync
on a fresh clone, leaving a modified file nobody edited. Fast: no kernel, one sync run per case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jupytext.config import load_jupytext_config

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("*.ipynb"))


def pairing_metadata() -> dict[str, str]:
    """The notebook metadata `jupytext --sync` keeps under notebooks/jupytext.toml: its two filters."""
    config = load_jupytext_config(str(NOTEBOOKS))
    return {"cell_metadata_filter": config.cell_metadata_filter,
            "notebook_metadata_filter": config.notebook_metadata_filter}


def copy_notebooks(dest: Path, newer: str) -> dict[str, bytes]:
    """notebooks/ copied to dest with the .py ("py"), the .ipynb ("ipynb") or neither ("same") newer;
    returns every file's bytes."""
    dest.mkdir()
    for path in NOTEBOOKS.iterdir():
        if path.is_file():
            shutil.copyfile(path, dest / path.name)
    for path in dest.iterdir():
        t = 1_600_000_000 + (60 if path.suffix == f".{newer}" else 0)  # a clean clone gives no order to rely on
        os.utime(path, (t, t))
    return {p.name: p.read_bytes() for p in dest.iterdir()}


def sync(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet",
                           *sorted(p.name for p in folder.glob("*.py"))],
                          cwd=folder, capture_output=True, text=True, timeout=120)


def changed(folder: Path, before: dict[str, bytes]) -> list[str]:
    """Files the sync rewrote or created (a .py without its .ipynb gets one)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in before or p.read_bytes() != before[p.name])


def test_every_notebook_is_a_pair() -> None:
    assert len(PAIRS) >= 5
    assert {p.stem for p in PAIRS} == {p.stem for p in NOTEBOOKS.glob("*.py")}


@pytest.mark.parametrize("path", PAIRS, ids=lambda p: p.stem)
def test_notebook_carries_the_pairing_metadata(path: Path) -> None:
    metadata = json.loads(path.read_text())["metadata"]
    assert metadata.get("jupytext") == pairing_metadata(), (
        f"{path.name}: metadata.jupytext is {metadata.get('jupytext')}; `jupytext --sync` rewrites it")


@pytest.mark.parametrize("newer", ["py", "ipynb", "same"])
def test_sync_on_a_clean_copy_changes_nothing(tmp_path: Path, newer: str) -> None:
    folder = tmp_path / "notebooks"
    before = copy_notebooks(folder, newer)
    done = sync(folder)
    assert done.returncode == 0, done.stderr[-2000:]
    assert changed(folder, before) == [], "`jupytext --sync notebooks/*.py` rewrites these"


def test_sync_rewrites_a_notebook_without_the_pairing_metadata(tmp_path: Path) -> None:
    """What the check above would see if a notebook lost its metadata again (notebook 05's old header)."""
    folder = tmp_path / "notebooks"
    copy_notebooks(folder, "py")
    target = folder / PAIRS[0].name
    nb = json.loads(target.read_text())
    nb["metadata"]["jupytext"] = {"text_representation": {"extension": ".py", "format_name": "percent"}}
    target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sync(folder).returncode == 0
    assert target.name in changed(folder, before)
