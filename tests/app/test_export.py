"""Lessons to take home (app/export.py): a tour as one self-contained HTML file.

- The file holds every step's text with its fields computed for the export's models and image, each
  step's figures as plotly divs, plotly.js exactly once and inline, images as data: URIs, and nothing
  that loads from anywhere (no script, stylesheet or image by address).
- The figures are the pages' figures: the chosen window is the library's receptive field, the bars are
  the knocked-out model's probabilities.
- The Markdown of the texts is rendered, escaped; the command line writes the file and refuses an
  unknown tour with exit status 2.
The browser check (every step drawn with every request blocked) is tests/app/test_browser_tours.py.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import torch
from plotly.offline import get_plotlyjs

import t2t
from app import export, images, tours
from app.compute import Context

SMALL = '''title = "Three steps"
description = "A *short* tour."
[[step]]
title = "Windows"
page = "tokens"
params = { tok = [10, 20] }
look_at = "pick_split0"
text = "The image becomes **{tokens.split0} windows**. Neighbours share {split0.overlap} pixels."
[[step]]
page = "attention"
params = { model = "ViT", block = 2, head = 1 }
look_at = "att_pick"
text = "Block {attention.block}, {attention.head}: {attention.distance} px. Compare."
[[step]]
title = "Heads out"
page = "knockouts"
params = { vit_heads = ["0.0", "1.1"] }
look_at = "ko_top5_ViT"
text = "ViT's {knockout.vit.class} goes to {knockout.vit.after}. Then {knockout.vit.verdict}."
'''


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(export.model_for("T2T-ViT", "t2t_vit_7", "", "cpu"),
                   export.model_for("ViT", "deit_tiny_patch16_224", "", "cpu"), images.default_image(), "cpu")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tours.Tour:
    folder = tmp_path_factory.mktemp("lessons")
    (folder / "small.toml").write_text(SMALL, encoding="utf-8")
    return tours.load_tours([folder]).tours["small"]


@pytest.fixture(scope="module")
def page(small: tours.Tour, ctx: Context) -> str:
    return export.lesson_html(small, ctx)


def test_every_step_text_and_figure_is_in_the_file(page: str, small: tours.Tour, ctx: Context) -> None:
    for step in small.steps:
        text, problems = tours.fill(step.text, tours.StepView(ctx, tours.step_state(step)))
        assert problems == []
        assert export.markdown_html(text) in page
        assert f'id="step-{step.number}"' in page and f"Step {step.number} of 3" in page
        for key in export.step_figures(step):
            assert f'data-key="{key}"' in page
    keys = [k for step in small.steps for k in export.step_figures(step)]
    assert keys[0] == "pick_split0" and "zoom_split0" in keys and "ko_top5_T2T-ViT" in keys  # each with its pair
    assert page.count('class="plotly-graph-div"') == len(keys)
    assert page.count("Plotly.newPlot(") == len(keys)


def test_plotly_is_inlined_once_and_nothing_is_loaded_from_an_address(page: str) -> None:
    js = get_plotlyjs()
    assert page.count(js[:200]) == 1 and js in page
    tags = re.findall(r"<(?:script|link|img|iframe|source|video|audio)\b[^>]*>", page)
    assert not [t for t in tags if re.search(r"\b(?:src|href)\s*=", t) and "data:image/png;base64," not in t], tags
    sources = re.findall(r'"source":\s*"([^"]{0,40})', page)  # every image of every figure
    assert sources and all(s.replace("\\u002f", "/").startswith("data:image/png;base64,") for s in sources)
    figures = page.count('class="plotly-graph-div"')
    assert page.count('"showSendToCloud": false') == figures  # no "Share chart" button: nothing is ever sent


def figure_json(page: str, key: str) -> dict:
    """The data of the figure `key` as written into the page (Plotly.newPlot's arguments)."""
    block = page.split(f'data-key="{key}"', 1)[1]
    args = block.split("Plotly.newPlot(", 1)[1]
    data = json.JSONDecoder().raw_decode(args.split(",", 1)[1].lstrip())[0]
    return {"data": data}


def test_the_figures_are_the_pages_figures(page: str, ctx: Context) -> None:
    from analysis.knockout import knocked_out

    window = next(t for t in figure_json(page, "pick_split0")["data"] if t.get("name") == "chosen")
    top, left, bottom, right = t2t.receptive_field(ctx.t2t.model, "t2t.split0", (10, 20), ctx.t2t.img_size)
    assert (window["x"][:3], window["y"][:3]) == ([left, right, right], [top, top, bottom])
    bars = figure_json(page, "ko_top5_ViT")["data"][0]
    x = ctx.inputs(ctx.vit)
    with torch.no_grad(), knocked_out(ctx.vit.model, [(0, 0), (1, 1)], (), "zero", None):
        probs = ctx.vit.model(x).softmax(-1)[0]
    best = probs.topk(5)
    assert bars["y"][::-1] == [ctx.vit.class_names[i] for i in best.indices.tolist()]
    assert bars["text"][-1] == f"{float(best.values[0]):.1%}"


def test_every_shipped_step_has_figures_in_the_lesson() -> None:
    for tour in tours.load_tours().tours.values():
        for step in tour.steps:
            assert export.step_figures(step), (tour.name, step.number)


def test_markdown_subset_is_rendered_and_escaped() -> None:
    out = export.markdown_html("A **bold** and *italic* `code` [link](https://example.org).\n\n"
                                "- one\n- two <b>\n\n1. first\n2. second\n\n<script>alert(1)</script> x*y*z")
    assert "<p>A <strong>bold</strong> and <em>italic</em> <code>code</code> " in out
    assert '<a href="https://example.org">link</a>' in out
    assert "<ul><li>one</li><li>two &lt;b&gt;</li></ul>" in out
    assert "<ol><li>first</li><li>second</li></ol>" in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "x*y*z" in out  # a star inside a word is not emphasis
    bad = export.markdown_html('[click](javascript:alert(1)) [q](https://a.org/?x="y")')
    assert "javascript" not in bad and "<p>click" in bad and 'href="https://a.org/?x=&quot;y&quot;"' in bad


def test_the_command_line_writes_the_file_and_refuses_an_unknown_tour(tmp_path: Path, capsys) -> None:
    tour = tmp_path / "one.toml"
    tour.write_text(SMALL.split("[[step]]\npage = \"attention\"")[0], encoding="utf-8")
    out = tmp_path / "lesson.html"
    assert export.main(["--tour", str(tour), "--out", str(out), "--image", "photo:cat", "--device", "cpu"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Windows" in text and html.escape(images.sample_image("cat").label) in text
    assert f"{out}: Three steps, 1 steps, 2 figures" in capsys.readouterr().out
    assert export.main(["--tour", "no_such_tour", "--out", str(tmp_path / "x.html")]) == 2
    assert "no tour named 'no_such_tour'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
