"""Lessons to take home (app/export.py): a tour as one self-contained HTML file.

- The file holds every step's text with its fields computed for the export's models and image, each
  step's figures as plotly divs, plotly.js exactly once and inline, images as data: URIs, and nothing
  that loads from anywhere (no script, stylesheet or image by address).
- The figures are the pages' figures: the chosen window is the library's receptive field, the bars are
  the knocked-out model's probabilities.
- The Markdown of the texts is rendered, escaped; the command line writes the file and refuses an
  unknown tour with exit status 2.
- AttnLRP / CP-LRP are drawn as the page draws them, signed relevance at the pixels (red for the class, blue
  against), their journey through the T2T module too; the Knock-outs page's AttnLRP head grid is the library's
  head relevance of the intact model; a figure the lesson does not draw is said so, with why.
- Every figure key a page can frame (read out of app/views/ with `ast`) has a builder or a stated reason.
The browser check (every step drawn with every request blocked) is tests/app/test_browser_tours.py.
"""

from __future__ import annotations

import ast
import base64
import html
import io
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
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
    """The data and layout of the figure `key` as written into the page (Plotly.newPlot's arguments)."""
    block = page.split(f'data-key="{key}"', 1)[1]
    args = block.split("Plotly.newPlot(", 1)[1].split(",", 1)[1].lstrip()
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(args)
    layout = decoder.raw_decode(args[end:].lstrip().removeprefix(",").lstrip())[0]
    return {"data": data, "layout": layout}


def array(value: dict | list) -> np.ndarray:
    """A plotly array as written into the page: a list, or a typed array ({"dtype", "bdata", "shape"})."""
    if isinstance(value, list):
        return np.asarray(value, dtype=float)
    flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return flat.reshape([int(n) for n in str(value.get("shape", len(flat))).split(",")]).astype(float)


def title(fig: dict) -> str:
    """A figure's title as one line (the app wraps long titles with <br>)."""
    return fig["layout"]["title"]["text"].replace("<br>", " ")


def png(uri: str) -> np.ndarray:
    """The RGB pixels (H, W, 3) of a data:image/png URI."""
    raw = base64.b64decode(uri.split("base64,", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(int)


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


# ----------------------------------------------------------------------------------------------
# AttnLRP / CP-LRP and the heads' relevance, as the pages draw them
# ----------------------------------------------------------------------------------------------

LRP = '''title = "Relevance"
[[step]]
page = "explanations"
params = { methods = ["attnlrp", "cp_lrp"], faith = false }
look_at = "exp_attnlrp_T2T-ViT"
text = "AttnLRP at the pixels. Red for the class."
[[step]]
page = "explanations"
params = { methods = ["attnlrp", "cp_lrp"], faith = false }
look_at = "exp_cp_lrp_ViT"
text = "CP-LRP at the pixels. Compare."
[[step]]
page = "explanations"
params = { methods = ["rollout", "cp_lrp"], carry = "stretch", faith = false }
look_at = "exp_strip"
text = "The journey back. Each step of it."
[[step]]
page = "knockouts"
params = { vit_heads = ["0.0", "1.1"] }
look_at = "ko_relevance_ViT"
text = "The heads' relevance. Compare."
[[step]]
page = "knockouts"
params = { prune = true }
look_at = "ko_pruning"
text = "Pruning curves. Not in the file."
'''


@pytest.fixture(scope="module")
def lrp_tour(tmp_path_factory: pytest.TempPathFactory) -> tours.Tour:
    folder = tmp_path_factory.mktemp("lrp")
    (folder / "lrp.toml").write_text(LRP, encoding="utf-8")
    return tours.load_tours([folder]).tours["lrp"]


@pytest.fixture(scope="module")
def lrp_page(lrp_tour: tours.Tour, ctx: Context) -> str:
    return export.lesson_html(lrp_tour, ctx)


def relevance(ctx: Context, role: str, method: str):
    """The library's relevance (analysis.lrp through analysis.explain) of the model's predicted class."""
    from analysis.explain import explain

    lm = ctx.t2t if role == "T2T-ViT" else ctx.vit
    x = ctx.inputs(lm)
    with torch.no_grad():
        target = int(lm.model(x).argmax(-1)[0])
    return lm, explain(method, lm.model, x, target=target, return_relevance=True)[1]


def test_lrp_maps_are_the_signed_relevance_at_the_pixels(lrp_page: str, lrp_tour: tours.Tour, ctx: Context) -> None:
    keys = [k for step in lrp_tour.steps[:2] for k in export.step_figures(step)]
    assert keys == ["exp_attnlrp_T2T-ViT", "exp_attnlrp_ViT", "exp_cp_lrp_ViT", "exp_cp_lrp_T2T-ViT"]
    for key in keys:
        _, method, role = re.fullmatch(r"(exp)_(attnlrp|cp_lrp)_(.+)", key).groups()
        lm, rel = relevance(ctx, role, method)
        pixels = rel.pixel_map[0].detach()
        fig = figure_json(lrp_page, key)
        drawn = png(fig["data"][0]["source"])
        img = ctx.display_image(lm)
        assert drawn.shape[:2] == img.shape[:2] == tuple(pixels.shape)  # at the pixels, not a token grid stretched
        expected = png(export.lrp_overlay_uri(f"test|{key}", img, pixels)[0])  # a new key: drawn from the reference
        assert np.abs(drawn - expected).max() <= 2, key
        # red where the relevance is for the class, blue where it is against, the image in grey where it is ~0
        values = pixels.numpy()
        top = np.quantile(np.abs(values), 0.995)
        hot, cold, flat = values > top / 2, values < -top / 2, np.abs(values) < top * 1e-4
        assert hot.any() and cold.any() and flat.any(), key
        assert (drawn[hot, 0] - drawn[hot, 2]).mean() > 40 and (drawn[cold, 2] - drawn[cold, 0]).mean() > 40, key
        assert np.abs(drawn[flat, 0] - drawn[flat, 2]).mean() < 10, key
        assert "red for, blue against" in title(fig)


def test_the_journey_is_the_relevance_of_each_t2t_step(lrp_page: str, ctx: Context) -> None:
    """Rollout stretched has no journey: the strip is CP-LRP's, T2T-ViT's stages from the backbone to the pixels."""
    from app.explanations import LRP_STAGES

    _, rel = relevance(ctx, "T2T-ViT", "cp_lrp")
    fig = figure_json(lrp_page, "exp_strip")
    panels = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(panels) == 2 + len(LRP_STAGES)  # the backbone's tokens, each T2T step, the pixels
    np.testing.assert_allclose(array(panels[0]["z"]), export.signed_scale(rel.tokens[0].detach()), atol=1e-6)
    assert array(panels[-1]["z"]).shape == tuple(s // 2 for s in rel.pixel_map.shape[1:])  # half resolution
    assert all(p["zmin"] == 0 and p["zmax"] == 1 for p in panels)  # one diverging range: white is 0
    titles = [a["text"].replace("<br>", " ") for a in fig["layout"]["annotations"]]
    assert titles[-1].startswith("← split 0: pixels") and f"Σ={float(rel.pixel_map[0].sum()):.3g}" in titles[-1]


def test_the_heads_relevance_is_the_intact_models(lrp_page: str, lrp_tour: tours.Tour, ctx: Context) -> None:
    assert export.step_figures(lrp_tour.steps[3]) == ["ko_relevance_ViT", "ko_relevance_T2T-ViT"]
    for role, out in (("ViT", [(0, 0), (1, 1)]), ("T2T-ViT", [])):
        _, rel = relevance(ctx, role, "attnlrp")  # the intact model: heads knocked out do not change it
        fig = figure_json(lrp_page, f"ko_relevance_{role}")
        np.testing.assert_allclose(array(fig["data"][0]["z"]), rel.heads[0].detach().numpy(), rtol=1e-5, atol=1e-6)
        crossed = [t for t in fig["data"] if t.get("name") == "out"]
        assert [(int(b), int(h)) for t in crossed for b, h in zip(array(t["y"]), array(t["x"]))] == out
        assert ("(intact model)" in title(fig)) == bool(out)


def test_a_figure_the_lesson_does_not_draw_is_said_so(lrp_page: str, lrp_tour: tours.Tour) -> None:
    step = lrp_tour.steps[4]
    assert export.step_figures(step) == ["ko_top5_T2T-ViT", "ko_top5_ViT"]  # the page's first figure instead
    section = lrp_page.split('id="step-5"', 1)[1]
    assert html.escape(f"(`ko_pruning`) is not drawn in the lesson file: {export.NOT_IN_LESSONS['ko_pruning']}") \
        in section


# ----------------------------------------------------------------------------------------------
# Every figure a page can frame: drawn by the lesson, or said why not
# ----------------------------------------------------------------------------------------------

VIEWS = Path(export.__file__).parent / "views"


def domains() -> dict[str, tuple]:
    """What a formatted value of a figure key stands for, where it is no parameter of a helper of the page."""
    from analysis.redundancy import METRICS
    from app.explanations import METHOD_NAMES

    return {"lm.role": ("T2T-ViT", "ViT"), "method": tuple(METHOD_NAMES), "metric": tuple(METRICS)}


class _PageKeys:
    """The keys a page file gives `widgets.show` (the figures `tours.after_page` can frame), read with `ast`:
    a literal; an f-string, each value by its domain; a parameter of a helper, from the helper's calls; a local
    name, from what is assigned to it."""

    def __init__(self, path: Path):
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.parent = {c: n for n in ast.walk(self.tree) for c in ast.iter_child_nodes(n)}
        self.domains = domains()

    def scope(self, node: ast.AST) -> ast.FunctionDef | ast.Module:
        while node in self.parent:
            node = self.parent[node]
            if isinstance(node, ast.FunctionDef):
                return node
        return self.tree

    def own(self, scope: ast.AST):
        """The nodes of a scope, not those of the functions defined inside it."""
        for child in ast.iter_child_nodes(scope):
            if not isinstance(child, ast.FunctionDef):
                yield child
                yield from self.own(child)

    def keys(self) -> set[str]:
        shows = [n for n in ast.walk(self.tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "widgets.show"]
        out: set[str] = set()
        for call in shows:
            key = next((k.value for k in call.keywords if k.arg == "key"), call.args[1] if len(call.args) > 1 else None)
            out |= self.values(key)
        return out

    def values(self, expr: ast.expr) -> set[str]:
        if isinstance(expr, ast.Constant):
            return {str(expr.value)}
        if isinstance(expr, ast.JoinedStr):
            parts = [self.values(v.value if isinstance(v, ast.FormattedValue) else v) for v in expr.values]
            return {"".join(p) for p in itertools.product(*parts)}
        scope = self.scope(expr)
        if isinstance(expr, ast.Name) and isinstance(scope, ast.FunctionDef) and \
                expr.id in [a.arg for a in scope.args.args]:
            return self.arguments(scope, expr.id)
        if ast.unparse(expr) in self.domains:
            return {str(v) for v in self.domains[ast.unparse(expr)]}
        if isinstance(expr, ast.Name):
            assigned = [n.value for n in self.own(scope) if isinstance(n, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == expr.id for t in n.targets)]
            if assigned:
                return set().union(*(self.values(a) for a in assigned))
        raise AssertionError(f"a figure key holds `{ast.unparse(expr)}`: say in domains() what it stands for")

    def arguments(self, fn: ast.FunctionDef, name: str) -> set[str]:
        """What the calls of helper `fn` pass as its parameter `name`."""
        params = [a.arg for a in fn.args.args]
        index, out = params.index(name), set()
        calls = [n for n in ast.walk(self.tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == fn.name]
        assert calls, f"{fn.name} is never called"
        for call in calls:
            given = [k.value for k in call.keywords if k.arg == name]
            out |= self.values(given[0] if given else call.args[index])
        return out


def page_figure_keys() -> set[str]:
    return set().union(*(_PageKeys(path).keys() for path in sorted(VIEWS.glob("*.py"))))


def test_every_figure_a_page_can_frame_is_in_the_lesson_or_said_why() -> None:
    keys = page_figure_keys()
    # read through helpers (clickable, channel_mosaic, attention_figure), loops and f-strings
    assert {"pick_split0", "pick_attn2", "mosaic_attn1_one", "exp_attnlrp_T2T-ViT", "exp_sanity_chefer_ViT",
            "fr_effective_rank", "ko_relevance_ViT", "dec_dla_ViT", "sb_window2"} <= keys
    missing = sorted(k for k in keys if k not in export.FIGURES and export.not_in_lessons(k) is None)
    assert not missing, f"figures of the pages with no builder in app/export.py FIGURES nor NOT_IN_LESSONS: {missing}"
    assert not [k for k in export.FIGURES if export.not_in_lessons(k)]  # drawn, or said why not: never both
    assert not set(export.FIGURES) - keys, "builders of figures no page draws (a key renamed on its page?)"
    for pattern in export.NOT_IN_LESSONS:
        assert any(re.fullmatch(pattern, k) for k in keys), f"NOT_IN_LESSONS names no page's figure: {pattern}"


# ----------------------------------------------------------------------------------------------
# The soft-split sandbox: its view computed from a step's parameters, as its page computes it
# ----------------------------------------------------------------------------------------------

SANDBOX = '''title = "Soft splits"
[[step]]
page = "sandbox"
params = { s0 = 2, k2 = 5, size = 160, try = true }
look_at = "sb_cost"
text = "Stride {sandbox.split0.stride}. The cost, {sandbox.attn1.ratio} times."
[[step]]
page = "sandbox"
params = { s0 = 2, k2 = 5, size = 160 }
look_at = "sb_window2"
text = "A window of {sandbox.split2.field} pixels. Beside a patch."
[[step]]
page = "sandbox"
params = { k1 = 15, s0 = 8, size = 32 }
text = "No token: {sandbox.split2.tokens}. Nothing drawn."
'''


@pytest.fixture(scope="module")
def sandbox_tour(tmp_path_factory: pytest.TempPathFactory) -> tours.Tour:
    folder = tmp_path_factory.mktemp("sandbox")
    (folder / "sandbox.toml").write_text(SANDBOX, encoding="utf-8")
    return tours.load_tours([folder]).tours["sandbox"]


def test_the_sandbox_figures_are_the_pages_for_a_steps_parameters(sandbox_tour: tours.Tour, ctx: Context) -> None:
    """The sandbox page run by AppTest with a step's values, and the lesson's builders on the same step: the same
    figures, trace for trace (images included), layout for layout."""
    from plotly.utils import PlotlyJSONEncoder
    from streamlit.testing.v1 import AppTest

    from app import widgets
    from app.compute import CTX_KEY

    state = tours.step_state(sandbox_tour.steps[0])
    at = AppTest.from_file(str(VIEWS / "7_soft_split_sandbox.py"), default_timeout=120)
    at.session_state[CTX_KEY] = ctx
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    drawn = {el.proto.id.split("-", 2)[-1]: json.loads(el.proto.spec) for el in at.get("plotly_chart")}
    assert set(drawn) == {"sb_window0", "sb_window1", "sb_window2", "sb_vit", "sb_cost", "sb_trace"}
    view = tours.StepView(ctx, state)
    for key, page_spec in drawn.items():
        ours = json.loads(json.dumps(widgets.styled_spec(export.FIGURES[key](view).to_dict()), cls=PlotlyJSONEncoder))
        assert ours["data"] == page_spec["data"], key
        assert {k: v for k, v in ours["layout"].items() if k != "template"} == \
            {k: v for k, v in page_spec["layout"].items() if k != "template"}, key


def test_the_sandbox_steps_in_the_lesson(sandbox_tour: tours.Tour, ctx: Context) -> None:
    """The cost bars are tokens² × the T2T width of nn.Unfold's grids (`t2t.tokens.grid_after`) for the step's
    splits and the paper's; the windows' figure is the configuration's; "Try it" only where the step turns it on;
    a configuration without a token draws nothing, as the page."""
    from t2t.tokens import SOFT_SPLITS, grid_after

    page = export.lesson_html(sandbox_tour, ctx)
    first, second, third = sandbox_tour.steps
    assert export.step_figures(first) == ["sb_cost", "sb_window0"]
    assert export.step_figures(second) == ["sb_window2", "sb_vit"]
    assert export.step_figures(third) == [export.PAGE_FIGURES["sandbox"], "sb_window1"]
    width = ctx.t2t.model.tokens_to_token.attention1.emb
    costs = {}
    for name, splits in (("this choice", ((7, 2, 2), (3, 2, 1), (5, 2, 1))), ("paper", SOFT_SPLITS)):
        side, costs[name] = 160, []
        for k, s, p in splits[:2]:
            side = grid_after(side, k, s, p)
            costs[name].append(side ** 4 * width)
    bars = {t["name"].split(" ")[0]: list(array(t["y"])) for t in figure_json(page, "sb_cost")["data"]}
    assert bars == {"this": costs["this choice"], "paper": costs["paper"]}
    window = figure_json(page, "sb_window0")
    assert title(window).startswith("Soft split 0: 79×79 tokens 7×7 px windows, 5 px (71%) shared")  # (160+4-7)//2+1
    view = tours.StepView(ctx, tours.step_state(first))
    assert export.FIGURES["sb_trace"](view) is not None
    assert export.FIGURES["sb_trace"](tours.StepView(ctx, tours.step_state(second))) is None  # not turned on
    section = page.split('id="step-3"', 1)[1]
    assert 'data-key="' not in section.split("</section>", 1)[0]
    assert "no token at all" in section.split("</section>", 1)[0]
