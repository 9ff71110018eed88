"""Streamlit pieces the pages share: drawing a figure, click callbacks, texts for students, and
what the models know (outside-the-classes warnings, the class list).

Owns: `show` (a figure with its own colours, a PNG download button, fixed axes, presentation
mode; `styled` / `styled_spec` are that look without Streamlit, `shown_keys` the figures this run drew), the
on_select callbacks (`pick_callback`, `tile_callback`: module functions bound to plain values,
never closures over a page, which Streamlit would keep alive for the session's life),
`explain_text`, `domain_warning` / `domain_notice` / `class_list`.

Clicking a token: plotly heatmap cells fire no selection events, so clickable figures carry a
transparent scatter of token centres (`figures.add_token_picker`); `pick_callback` turns a selected
point into widget values in session state (run as the chart's on_select callback, before the
script reruns, so the sliders can be set).

May import: app.figures, streamlit, plotly, t2t (the registry: a release's dataset), t2t.data.synthetic.
Not app.compute (it takes a model and an image as they are; pages pass them).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Sequence

import plotly.graph_objects as go
import streamlit as st

import t2t
from app.figures import FONT, TITLE_CHARS, Spec, png_config, presentation, spec_figure, wrap

AXIS = re.compile(r"[xy]axis\d+")  # the second, third ... axes of a figure with subplots
SHOWN_KEY = "_t2t_lens_shown"  # the keys of the figures drawn in this session's current run (app/tours.py)


def show(fig: go.Figure | Spec, key: str, on_select: Callable[[], None] | None = None,
         filename: str | None = None) -> None:
    """Draw a figure (a go.Figure, or a spec of plain dicts: app/figures.py) with its own colours (Streamlit's
    chart theme would replace the colour scales); with `on_select`, clicking a point of a picker calls it
    before the rerun.

    The figure is drawn `styled` (fixed axes, title above the plot, presentation mode); the caller's figure
    or spec is left as it was. The toolbar holds one button, "Download plot as a png" (2x scale, for
    slides), named `filename` (default: the key). The key is noted for this run (`shown_keys`): a tour step
    frames the figure it is about.

    Styling the spec and wrapping it unvalidated (`spec_figure`) costs well under a millisecond; styling a
    go.Figure through plotly's own update calls cost ~5 ms a figure (issue 29: a widget move answers at once)."""
    spec = styled_spec(fig.to_dict() if isinstance(fig, go.Figure) else fig, bool(st.session_state.get("present")))
    shown = st.session_state.setdefault(SHOWN_KEY, [])
    if key not in shown:  # a fragment's rerun skips main.py's new_run: the list must not grow with each move
        shown.append(key)
    st.plotly_chart(spec_figure(spec), key=key, theme=None, config=png_config(filename or key),
                    **({"on_select": on_select, "selection_mode": "points"} if on_select is not None else {}))


def styled(fig: go.Figure, present: bool = False) -> go.Figure:
    """A figure as the app shows it (in place; no Streamlit): `styled_spec`'s layout set on the go.Figure.
    Used by the lessons to take home (app/export.py); `show` styles a spec of the figure instead."""
    layout = styled_spec(fig.to_dict(), present)["layout"]
    layout.pop("template", None)  # unchanged, and assigning one costs ~20 ms of plotly validation
    fig.update_layout(layout)
    return fig


def styled_spec(spec: Spec, present: bool = False) -> Spec:
    """A spec as the app shows it (no Streamlit): a new spec with the same traces and a styled copy of the
    layout. Axes fixed, so dragging selects nothing and zooms nothing and double-clicking changes nothing (a
    figure can never be left zoomed or shrunk with no way back; clicks still pick points); a long title
    wrapped and hung under the toolbar's row; with `present`, presentation mode's larger text.

    No template is set here: assigning one costs ~20 ms of plotly validation per figure; charts set a white
    background themselves (`CHART`)."""
    layout = copy.deepcopy({k: v for k, v in spec.get("layout", {}).items() if k != "template"})
    if "template" in spec.get("layout", {}):  # shared, never changed here
        layout["template"] = spec["layout"]["template"]
    # as fig.update_xaxes / update_yaxes: the first axis always, every other one the layout has
    for name in ("xaxis", "yaxis", *(k for k in layout if AXIS.fullmatch(k))):
        layout.setdefault(name, {})["fixedrange"] = True
    layout["dragmode"] = False
    if present:
        presentation(layout)
    title = layout.get("title") or {}
    if title.get("text"):  # the title just above the plot, the toolbar's row above it: no overlap
        size = (title.get("font") or {}).get("size") or FONT["size"]
        chars = TITLE_CHARS * FONT["size"] // size  # bigger font, fewer characters a line
        text = title["text"] if "<br>" in title["text"] else wrap(title["text"], chars)
        lines = text.count("<br>") + 1
        margin = layout.setdefault("margin", {})
        top = margin["t"] if margin.get("t") is not None else 80
        # hung from the top of the figure under the toolbar's row (a bottom-anchored title of two lines
        # would grow down into the plot), with the top margin grown to hold every line
        title.update({"text": text, "y": 1, "yref": "container", "yanchor": "top"})
        title.setdefault("pad", {})["t"] = 48
        layout["title"] = title
        margin["t"] = max(top, 54 + 1.4 * size * lines)
    return {**spec, "layout": layout}


def new_run() -> None:
    """Forget the figures the last run drew (main.py, at the start of each run)."""
    st.session_state[SHOWN_KEY] = []


def shown_keys() -> list[str]:
    """The keys of the figures `show` has drawn so far in this run."""
    return list(st.session_state.get(SHOWN_KEY) or [])


# Callbacks are module functions bound to a few names and numbers (functools.partial), never closures
# over a page's variables: Streamlit keeps every chart's callback in the session for as long as the
# session lives (a chart's widget id changes with its figure, and old ids are never dropped), so a
# closure kept the page's whole namespace (traces, attention arrays) alive, about 5 MB per image.
def pick_callback(chart_key: str, row_key: str, col_key: str, grid: tuple[int, int],
                  target_grid: tuple[int, int], unset_key: str | None = None) -> Callable[[], None]:
    """An on_select callback: the clicked token of a `grid` chart sets the (row, col) widgets.

    The widgets live on `target_grid` (e.g. the 56 x 56 grid of soft split 0 when the chart shows
    the 14 x 14 grid); the centre of the clicked cell is mapped onto it. `unset_key`, if given, is
    set to False on a click (e.g. "query the class token" when a patch token is picked).
    """
    return functools.partial(_select_token, chart_key, row_key, col_key, tuple(grid), tuple(target_grid), unset_key)


def _select_token(chart_key: str, row_key: str, col_key: str, grid: tuple[int, int], target_grid: tuple[int, int],
                  unset_key: str | None) -> None:
    picked = picked_cell(selected_points(chart_key), grid)
    if picked is None:
        return
    r, c = picked
    st.session_state[row_key] = min(target_grid[0] - 1, int((r + 0.5) * target_grid[0] / grid[0]))
    st.session_state[col_key] = min(target_grid[1] - 1, int((c + 0.5) * target_grid[1] / grid[1]))
    if unset_key is not None:
        st.session_state[unset_key] = False


def tile_callback(chart_key: str, n_tiles: int, index_key: str | None = None,
                  block_head_keys: tuple[str, str] | None = None, heads: int = 1) -> Callable[[], None]:
    """An on_select callback for a pickable mosaic of `n_tiles` tiles: the clicked tile's index goes to
    `index_key`, or (index // heads, index % heads) to the two `block_head_keys`."""
    return functools.partial(_select_tile, chart_key, n_tiles, index_key, block_head_keys, heads)


def _select_tile(chart_key: str, n_tiles: int, index_key: str | None, block_head_keys: tuple[str, str] | None,
                 heads: int) -> None:
    picked = picked_cell(selected_points(chart_key), (n_tiles, 1))
    if picked is None:
        return
    if index_key is not None:
        st.session_state[index_key] = picked[0]
    if block_head_keys is not None:
        st.session_state[block_head_keys[0]], st.session_state[block_head_keys[1]] = divmod(picked[0], heads)


def head_toggle_callback(chart_key: str, list_key: str) -> Callable[[], None]:
    """An on_select callback for a pickable blocks x heads grid (`charts.head_grid_figure`): the clicked
    (block, head) is added to, or taken out of, the list of "block.head" strings in `list_key`."""
    return functools.partial(_toggle_head, chart_key, list_key)


def _toggle_head(chart_key: str, list_key: str) -> None:
    picked = picked_cell(selected_points(chart_key), (1, 1))
    if picked is None:
        return
    name = f"{picked[0]}.{picked[1]}"
    now = list(st.session_state.get(list_key) or [])
    st.session_state[list_key] = [v for v in now if v != name] if name in now else [*now, name]


def selected_points(chart_key: str) -> list[dict]:
    """The points selected on the chart with this key ([] when none)."""
    state = st.session_state.get(chart_key)
    return list((state or {}).get("selection", {}).get("points", []))


def picked_cell(points: Sequence[dict], grid: tuple[int, int]) -> tuple[int, int] | None:
    """(row, col) of the last selected picker point, from its customdata or its point index."""
    for point in reversed(list(points)):
        data = point.get("customdata")
        if isinstance(data, dict):  # plotly.js reports a typed-array row as {"0": .., "1": ..}
            data = [data[k] for k in sorted(data, key=int)]
        if data is not None and len(data) >= 2:
            return int(data[0]), int(data[1])
        index = point.get("point_index", point.get("point_number"))
        if index is not None:
            return divmod(int(index), grid[1])
    return None


def explain_text(text: str) -> None:
    """The short explanation for students at the top of a page, in a quiet box."""
    st.info(text, icon=":material/school:")


# ----------------------------------------------------------------------------------------------
# What the models know
# ----------------------------------------------------------------------------------------------


def domain_warning(lm, image, what: str = "This image") -> str | None:
    """Why a prediction of model `lm` (an app LoadedModel) on `image` (an ImageChoice) means little, or None.

    The project-trained models know only the synthetic shape classes: a photo gets a forced choice
    among shapes. Released models (ImageNet-1k, CIFAR) know no shape class. Random weights know nothing.
    """
    from t2t.data.synthetic import CLASS_NAMES

    synthetic = image.key.startswith("synthetic:")
    names = lm.class_names
    who = f"{lm.role} ({lm.name}, {lm.weights_label})"
    if lm.source == "random":
        return f"{who} has random weights: its answer means nothing."
    if list(names) == list(CLASS_NAMES) and not synthetic:
        return (f"{what} is not one of the synthetic shapes, and {who} knows only the {len(names)} shape "
                f"classes: its answer is a forced choice among them, not what the image shows. For photos, "
                "choose *ImageNet-1k (download)* weights in the sidebar.")
    released = lm.source == "released" and lm.name in t2t.list_models()
    dataset = t2t.get_config(lm.name).dataset if released else ("ImageNet-1k" if len(names) == 1000 else None)
    if dataset and synthetic:  # a release's classes (ImageNet-1k, CIFAR-10, CIFAR-100): none is a shape
        return (f"{who} knows the {len(names)} {dataset} classes, none of which is a synthetic shape: its answer is "
                "the nearest of those classes, not the shape.")
    return None


def domain_notice(lm, image, short: bool = False) -> None:
    """`domain_warning` shown as a warning (short: one line, for beside each map)."""
    text = domain_warning(lm, image)
    if text is None:
        return
    if short:
        st.caption(f":warning: {lm.role}: outside what it was trained on (see above); this map explains a "
                   "forced choice." if lm.source != "random" else f":warning: {lm.role} has random weights.")
    else:
        st.warning(text)


def class_list(models) -> None:
    """The classes each model of the pair can answer with, in a folded box."""
    with st.expander("The classes these models know"):
        for lm in models:
            names = lm.class_names
            st.markdown(f"**{lm.role}** ({lm.name}, {lm.weights_label}), {len(names)} classes: " + ", ".join(names))
