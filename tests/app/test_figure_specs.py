"""Figures built as specs of plain dicts (app/figures.py, app/charts.py, `widgets.show`; issue 29).

A page that answers a widget move builds its figures as dicts and draws them without plotly's validation,
which was most of the time such a move took in Python. That is only right while the dicts are already what
validation makes of them: these tests validate every kind of spec the app builds, and every chart the
Tokens-to-Token and Attention pages send, and require that validation changes nothing. They also require
that `widgets.show` (styling a spec) draws what `widgets.styled` (styling a go.Figure, as the lessons to take
home do) gives, and leaves the caller's figure alone.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly.subplots import make_subplots
from streamlit.testing.v1 import AppTest

from app import charts, figures, widgets

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
SIZE = (224, 224)
URI = "data:image/png;base64,iVBORw0KGgo="


def sent(fig: go.Figure) -> dict:
    """What the browser gets: the figure's JSON, parsed."""
    return json.loads(pio.to_json(fig, validate=False))


def validated(spec: dict) -> dict:
    """The same spec after plotly's validation (go.Figure builds and checks every property)."""
    return sent(go.Figure(copy.deepcopy(spec)))


def build(fig: figures.Fig, rng: np.random.Generator) -> figures.Fig:
    """Every `add_*` of app/figures.py on `fig` (a go.Figure or a spec)."""
    figures.add_grid_heatmap(fig, rng.random((7, 7)).astype(np.float32), SIZE, colorscale="Greens", opacity=0.35,
                             zmin=0, zmax=4, colorbar_title="windows", hover="in %{z} windows")
    figures.add_grid_heatmap(fig, rng.random((14, 14)), SIZE, showscale=False)
    figures.add_log_heatmap(fig, rng.random((14, 14)) * 5, SIZE, "× uniform", floor=1e-3)
    figures.add_boxes(fig, [(1, 2, 9, 10), (3, 4, 11, 12)], figures.NEIGHBOUR, width=1.5, dash="dot", name="near")
    figures.add_chosen(fig, (5, 6, 12, 13), SIZE, 420)  # small on screen: with its ring
    figures.add_chosen(fig, (0, 0, 200, 200), SIZE, 420, color="#00e676", name="big")
    figures.add_grid_lines(fig, (14, 14), SIZE)
    return figures.add_token_picker(fig, (56, 56), SIZE)


def specs() -> dict[str, dict]:
    rng = np.random.default_rng(0)
    maps = rng.random((12, 14, 14))
    return {
        "image": build(figures.image_spec(URI, SIZE, title="A title long enough to be wrapped on two lines, or more"),
                       rng),
        "no image, no title": build(figures.image_spec(None, SIZE, height=320, pixel=0.5), rng),
        "mosaic": charts.mosaic_spec(maps, 4, title="channels"),
        "mosaic, every option": charts.mosaic_spec(
            maps, 3, cmap="inferno", title="Block (rows) × head (columns)", row_labels=[f"b{i}" for i in range(4)],
            col_labels=["h0", "h1", "h2"], pickable=True, hover_names=[f"n{i}" for i in range(12)], highlight=4,
            marked=[1, 2], labels=["", "x", "y"] + [""] * 9, height=520),
    }


@pytest.mark.parametrize("name", list(specs()))
def test_specs_are_what_validation_makes_of_them(name: str) -> None:
    spec = specs()[name]
    assert sent(figures.spec_figure(copy.deepcopy(spec))) == validated(spec)


def test_the_builders_figures_are_their_specs_validated() -> None:
    """image_figure / mosaic_figure and the add_* functions on a go.Figure (app/export.py, the other pages) give
    what the spec path gives."""
    on_figure = build(figures.image_figure(URI, SIZE, title="t"), np.random.default_rng(0))
    on_spec = build(figures.image_spec(URI, SIZE, title="t"), np.random.default_rng(0))
    assert isinstance(on_figure, go.Figure)
    assert sent(on_figure) == validated(on_spec)
    maps = np.random.default_rng(1).random((6, 5, 5))
    options = {"title": "m", "pickable": True, "row_labels": ["a", "b"], "highlight": 2}
    assert sent(charts.mosaic_figure(maps, 3, **options)) == validated(charts.mosaic_spec(maps, 3, **options))


def test_merge_layout_merges_as_update_layout() -> None:
    update = {"margin": {"t": 80}, "xaxis": {"range": [-3, 9]}, "annotations": [{"text": "a", "x": 0, "y": 0}],
              "height": 500}
    spec = figures.image_spec(URI, SIZE, title="t")
    fig = figures.image_figure(URI, SIZE, title="t")
    figures.merge_layout(spec, update)
    figures.merge_layout(fig, update)
    assert spec["layout"]["margin"] == {"l": 0, "r": 0, "t": 80, "b": 0}  # merged, not replaced
    assert sent(fig) == validated(spec)


def chart_figures() -> dict[str, go.Figure]:
    """One go.Figure of each kind the pages draw (and one with subplots and annotations)."""
    rng = np.random.default_rng(2)
    sub = make_subplots(rows=2, cols=1)
    sub.add_trace(go.Scatter(x=[1, 2], y=[1, 3]), row=2, col=1)
    sub.update_layout(title="subplots", annotations=[{"text": "note", "x": 0, "y": 0, "font": {"size": 11}}])
    return {
        "image": build(figures.image_figure(URI, SIZE, title="Red: window of the chosen token; blue: its 8 "
                                                              "neighbours"), rng),
        "mosaic": charts.mosaic_figure(rng.random((12, 4, 4)), 3, title="t", row_labels=["a"] * 4, pickable=True),
        "top-k": charts.topk_figure([("a", 0.5), ("b", 0.2)], "T2T-ViT: t2t_vit_7, a long title of many words",
                                    "#d62728"),
        "per head": charts.head_scatter({"A": (rng.random((7, 4)), "#f00")}, "distance", "px", highlight=("A", 2, 1)),
        "strip": charts.strip_figure([rng.random((4, 4)), rng.random((8, 8))], ["one", "two"]),
        "matrix": charts.matrix_figure(rng.random((3, 4)), "x", "y", "CKA"),
        "heads grid": charts.head_grid_figure(rng.random((3, 4)) - 0.5, (3, 4), [(1, 2)], "importance", pickable=True),
        "no title, no axes": go.Figure(go.Bar(x=[1], y=[2])),
        "subplots": sub,
    }


@pytest.mark.parametrize("present", [False, True])
@pytest.mark.parametrize("name", list(chart_figures()))
def test_show_draws_what_styled_gives(name: str, present: bool) -> None:
    """`widgets.show` styles a spec of the figure (`styled_spec`, drawn unvalidated); the lessons to take home
    style the go.Figure itself (`styled`): the same figure either way, with and without presentation mode."""
    fig = chart_figures()[name]
    shown = sent(figures.spec_figure(widgets.styled_spec(fig.to_dict(), present)))
    assert shown == sent(widgets.styled(go.Figure(fig), present))
    layout = shown["layout"]
    assert layout["dragmode"] is False and layout["xaxis"]["fixedrange"] and layout["yaxis"]["fixedrange"]
    if name not in ("no title, no axes", "subplots"):  # the two figures without the app's font
        assert layout["font"]["size"] == (round(15 * 1.3) if present else figures.FONT["size"])


def test_styled_spec_leaves_its_spec_alone() -> None:
    """A spec kept between runs (Attention's `reused`) is styled anew on every run, never compounded."""
    spec = specs()["mosaic, every option"]
    before = copy.deepcopy(spec)
    once = widgets.styled_spec(spec, present=True)
    twice = widgets.styled_spec(spec, present=True)
    assert sent(figures.spec_figure(once)) == sent(figures.spec_figure(twice))
    assert once["layout"]["font"]["size"] == round(15 * 1.3)
    assert sent(figures.spec_figure(spec)) == sent(figures.spec_figure(before))


def test_pages_send_charts_in_validated_form() -> None:
    """Every chart of Tokens-to-Token (all steps, a channel enlarged) and Attention (a head, the top-60% mask),
    as sent to the browser: validating its JSON changes nothing."""
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    at.session_state["mosaic_attn1_channel"] = 3
    at.radio(key="t2t_step").set_value("All steps").run()
    charts_sent = {f"tokens {el.proto.id}": el.proto.spec for el in at.get("plotly_chart")}
    at.switch_page("views/2_attention.py").run()
    at.selectbox(key="att_head").set_value(1).run()
    at.toggle(key="att_top60").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    charts_sent.update({f"attention {el.proto.id}": el.proto.spec for el in at.get("plotly_chart")})
    assert len(charts_sent) >= 16
    for name, spec in charts_sent.items():
        assert sent(go.Figure(json.loads(spec))) == json.loads(spec), name


def _two_figures_and_a_fragment() -> None:
    import plotly.graph_objects as go
    import streamlit as st

    from app import widgets

    widgets.show(go.Figure(), key="page_figure")

    @st.fragment
    def part() -> None:
        widgets.show(go.Figure(), key="fragment_figure")
        st.button("move")

    part()
    st.write(",".join(widgets.shown_keys()))


def test_shown_keys_do_not_grow_with_reruns_that_skip_new_run() -> None:
    """A fragment's rerun (a widget move) skips main.py, which forgets last run's figures (`widgets.new_run`):
    `show` notes each key once, so the list a tour step reads stays the page's figures, not one per move."""
    at = AppTest.from_function(_two_figures_and_a_fragment).run()
    for _ in range(3):
        at.button[0].click().run()
    assert not at.exception
    assert widgets.SHOWN_KEY in at.session_state
    assert at.session_state[widgets.SHOWN_KEY] == ["page_figure", "fragment_figure"]
