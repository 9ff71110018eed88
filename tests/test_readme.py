"""The README's quickstart runs as written: every ```python block marked `<!-- test: quickstart -->`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- test: quickstart -->"


def quickstart_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    """The code of each fenced python block that directly follows the marker line."""
    pattern = re.compile(re.escape(MARKER) + r"\s*\n```python\n(.*?)\n```", re.S)
    return pattern.findall(readme.read_text(encoding="utf-8"))


def write_photo(folder: Path) -> Path:
    """`photo.jpg`, the file the quickstart opens: a shape of the embedded models' test set."""
    from t2t.data.synthetic import LocalStructureDataset

    path = folder / "photo.jpg"
    LocalStructureDataset("test", size=1).image(0).save(path, quality=95)
    return path


def run_quickstart(python: str | Path, folder: Path) -> subprocess.CompletedProcess:
    """Each block in a fresh interpreter started in `folder` (not the repository), which holds photo.jpg."""
    blocks = quickstart_blocks()
    assert blocks, f"README.md has no python block marked {MARKER}"
    script = "\n\n".join(blocks) + "\nprint('QUICKSTART-OK', tuple(maps.shape))\n"
    return subprocess.run([str(python), "-c", script], cwd=folder, capture_output=True, text=True, timeout=300)


def test_readme_quickstart_runs_as_written(tmp_path):
    write_photo(tmp_path)
    out = run_quickstart(sys.executable, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "QUICKSTART-OK (1, 14, 14)" in out.stdout
    # it printed the top-3 of the embedded model's own classes
    import t2t

    names = t2t.create_model("t2t_vit_7", pretrained="embedded").class_names
    printed = out.stdout.splitlines()[0]
    assert sum(f"'{n}'" in printed for n in names) == 3, printed


def test_the_marker_finds_blocks_and_only_python_ones(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{MARKER}\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n{MARKER}\n```bash\nls\n```\n")
    assert quickstart_blocks(readme) == ["x = 1"]
    img = np.asarray(Image.open(write_photo(tmp_path)))
    assert img.shape == (224, 224, 3)
