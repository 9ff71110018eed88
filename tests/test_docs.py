"""The README and the documentation site: short, no broken link, a screenshot per app page, a strict build.

- `mkdocs build --strict` succeeds (a broken link or anchor, a page missing from the nav, a module the API
  reference cannot load: each is a warning, and strict makes it a failure);
- every module of `t2t/` and `analysis/` has its API reference page;
- README.md stays a newcomer's five minutes (at most 260 lines) and every relative link or image in it
  points at a file that exists;
- every page of the app's navigation (read from app/main.py, as scripts/screenshots.py reads it) has its
  1280 x 720 screenshot under docs/screenshots/, shown in the README;
- the docstring extension of the API reference (docs/griffe_plain_docstrings.py) keeps every word and the
  line structure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 260


def _load(path: Path, name: str) -> ModuleType:
    """A module from a file outside the packages (scripts/, docs/), without running anything but its imports."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def screenshots() -> ModuleType:
    return _load(ROOT / "scripts" / "screenshots.py", "t2t_lens_screenshots")


@pytest.fixture(scope="module")
def plain() -> ModuleType:
    return _load(ROOT / "docs" / "griffe_plain_docstrings.py", "t2t_lens_griffe_plain_docstrings")


def _mkdocs() -> list[str]:
    venv = ROOT / ".venv" / "bin" / "mkdocs"
    if venv.exists():
        return [str(venv)]
    if importlib.util.find_spec("mkdocs") is not None:
        return [sys.executable, "-m", "mkdocs"]
    if os.environ.get("CI"):
        pytest.fail("mkdocs is not installed (pip install -e '.[dev]')")
    pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [*_mkdocs(), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    assert (site / "index.html").exists()
    # the API reference rendered the docstrings, not empty pages: a known function of each package is on its page
    assert "receptive_field" in (site / "api" / "t2t.trace" / "index.html").read_text()
    assert "EXPLAINERS" in (site / "api" / "analysis.explain" / "index.html").read_text()
    assert not list(site.rglob("*.py")), "the docstring extension must not be published as a page"


# sub-packages documented on one page, as a whole (their modules are the stages of one command)
WHOLE_PACKAGES = ("analysis.report",)


def _modules() -> list[str]:
    """Every public module of t2t/ and analysis/, dotted: the two packages, each module, and the sub-packages
    of WHOLE_PACKAGES by their own name (private modules and __main__ left out)."""
    names = ["t2t", "analysis", *WHOLE_PACKAGES]
    for package in ("t2t", "analysis"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            dotted = ".".join(parts)
            if any(p.startswith("_") for p in parts) or any(dotted.startswith(w + ".") for w in WHOLE_PACKAGES):
                continue
            names.append(dotted)
    return names


def test_every_module_has_an_api_page() -> None:
    modules = _modules()
    assert {"t2t", "t2t.trace", "analysis.explain", "analysis.report", "t2t.data.synthetic"} <= set(modules)
    missing = [m for m in modules if not (ROOT / "docs" / "api" / f"{m}.md").exists()]
    assert not missing, f"no API reference page for {missing}: add docs/api/NAME.md (`::: NAME`) and its nav entry"
    for module in modules:
        assert f"::: {module}" in (ROOT / "docs" / "api" / f"{module}.md").read_text()


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it under {MAX_README_LINES} and move the rest into docs/")


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_SRC = re.compile(r"""<(?:img|a)\s[^>]*(?:src|href)=["']([^"']+)["']""")


def relative_targets(markdown: str) -> list[str]:
    """The relative link and image targets of a Markdown text, anchors and query strings cut off; fenced
    code is skipped (a `[0](x)` in code is no link)."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    targets = LINK.findall(text) + HTML_SRC.findall(text)
    out = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto: ... and anchors within the page
        out.append(target.split("#")[0].split("?")[0])
    return out


def test_relative_targets_finds_links_and_images() -> None:
    text = ('see [a](docs/a.md#x), ![b](docs/b.png "title") <img src="c.png"> [web](https://x.org) [top](#t)\n'
            "```python\nx = [0](1)\n```\n")
    assert relative_targets(text) == ["docs/a.md", "docs/b.png", "c.png"]


def test_readme_links_point_at_files() -> None:
    targets = relative_targets(README.read_text())
    assert targets, "the README links to nothing"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_app_pages_are_read_from_main(screenshots: ModuleType) -> None:
    pages = screenshots.app_pages()
    source = (ROOT / "app" / "main.py").read_text()
    hidden = source.count('visibility="hidden"')
    assert len(pages) == source.count("st.Page(") - hidden >= 1, "every visible st.Page(...) of app/main.py is a page"
    assert len({p["url_path"] for p in pages}) == len(pages)
    assert sum(p["default"] for p in pages) == 1
    assert any(p["url_path"] == "tokens_to_token" and p["default"] for p in pages)  # served at / (and at /tokens)


def test_app_pages_reads_any_navigation(screenshots: ModuleType, tmp_path: Path) -> None:
    main = tmp_path / "main.py"
    main.write_text('import streamlit as st\nPAGES = [\n'
                    '    st.Page("views/1_a.py", title="A", url_path="alpha"),\n'
                    '    st.Page("views/2_new_page.py", title="New", default=True),\n]\n')
    assert screenshots.app_pages(main) == [
        {"title": "A", "url_path": "alpha", "default": False},
        {"title": "New", "url_path": "new_page", "default": True},  # Streamlit's own url from the file name
    ]


def test_every_app_page_has_its_screenshot(screenshots: ModuleType) -> None:
    readme = README.read_text()
    shown = set(relative_targets(readme))
    for page in screenshots.app_pages():
        path = screenshots.screenshot_path(page["url_path"])
        assert path.exists(), (f"no screenshot of the page {page['title']!r}: "
                               f"run .venv/bin/python scripts/screenshots.py {page['url_path']}")
        assert path.is_relative_to(ROOT / "docs")
        assert png_size(path) == (screenshots.WIDTH, screenshots.HEIGHT) == (1280, 720)
        assert path.relative_to(ROOT).as_posix() in shown, f"README.md does not show {path.relative_to(ROOT)}"


def _words(text: str) -> list[str]:
    return text.split()


def test_docstrings_keep_their_words_and_lines(plain: ModuleType) -> None:
    text = (
        "Run the model once.\n"
        "\n"
        "Names, batch first:\n"
        "    logits (B, C)\n"
        "    T2T-ViT: t2t.split0 (B, N0, 147),\n"
        "             t2t.attn1 (B, N0, 64)\n"
        "Then prose again.\n"
        "\n"
        "attention:  record attention maps.\n"
        "keep_graph: keep the graph; every tensor, so after\n"
        "            `backward()` the maps carry `.grad`.\n"
        "gamma: None or the Gamma rule on every\n"
        "    linear layer.\n"
        "One forward and one backward.\n"
        "Similarities, per image:\n"
        "- `spearman`: rank correlation\n"
        "  of the token values;\n"
        "- `ssim`: structural similarity.\n"
    )
    md = plain.to_markdown(text)
    assert _words(md) == _words(text)  # not a word added, removed or moved
    lines = md.splitlines()
    # the indented table under "...:" is a code block: a blank line before it, 4 spaces, alignment kept
    i = lines.index("    logits (B, C)")
    assert lines[i - 1] == "" and lines[i - 2] == "Names, batch first:"
    assert lines[i + 2] == "             t2t.attn1 (B, N0, 64)"
    assert lines[i + 3] == "" and lines[i + 4] == "Then prose again."
    # each field starts a new line (a Markdown hard break ends the line before it); continuations are joined
    assert lines[lines.index("keep_graph: keep the graph; every tensor, so after") - 1].endswith("maps.  ")
    assert "            `backward()` the maps carry `.grad`.  " in lines  # the hanging indent: not code
    assert "    linear layer.  " in lines  # the line after a hanging indent starts anew
    # a list right under a sentence gets the blank line Markdown needs
    j = lines.index("- `spearman`: rank correlation")
    assert lines[j - 1] == ""


def test_docstrings_render_as_intended(plain: ModuleType) -> None:
    markdown = pytest.importorskip("markdown")
    html = markdown.markdown(plain.to_markdown(
        "Shapes:\n    x (B, N)\n    y (B, h, w)\na: one.\nb: two.\nText:\n- one\n- two\n"))
    assert "<pre><code>x (B, N)\ny (B, h, w)\n</code></pre>" in html
    assert "a: one.<br />\nb: two." in html
    assert "<li>one</li>" in html


def test_docs_do_not_link_outside_the_site() -> None:
    """Pages link to pages and images of docs/; a file of the repository is named in code, not linked (the
    site holds only docs/, so such a link is broken there)."""
    bad = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for target in relative_targets(page.read_text()):
            resolved = (page.parent / target).resolve()
            if not resolved.is_relative_to((ROOT / "docs").resolve()) or not resolved.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, bad
