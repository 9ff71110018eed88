"""Plotly figures of images and token grids, and what they are drawn with (no Streamlit calls).

Owns: the style (colours, fonts, `scale` for colour scales), encoding pixels for the browser
(`png_uri`, `colorize`, `upscale`, overlays, and their cached versions), `image_figure` and what is
drawn over an image (heat maps of a token grid, boxes, the chosen token's ring, grid lines, the
transparent token picker), the geometry of grids (`cell_box`, `neighbours`, `scaled_index`), and
figure specs (`image_spec`, `spec_figure`, `merge_layout`).

Figure specs: a figure can be built as plain dicts, `{"data": [trace dicts], "layout": {...}}`, already in
the form plotly's validation gives (every `add_*` here takes a go.Figure or such a spec). Building a
go.Figure validates every property and Streamlit's whole template (`image_figure`: ~8 ms, a copy as
much again); a page that answers a widget move builds specs and `spec_figure` wraps one, unvalidated, in
0.4 ms when it is drawn (issue 29). tests/app/test_figure_specs.py checks that validating the app's specs
changes nothing.

Coordinates: an image of H x W pixels is drawn so that pixel (y, x) covers [x, x + 1] x [y, y + 1],
y pointing down; a token grid of h x w cells is stretched over the same extent, cell (r, c)
covering [c W / w, (c + 1) W / w] x [r H / h, (r + 1) H / h]. Receptive-field boxes
(top, left, bottom, right), bottom/right exclusive, are drawn as they are.

May import: app.jobs (`memo`: encoded images live in the byte cache), plotly, numpy, PIL,
matplotlib. Not app.compute or anything above (figures take arrays, not models).
"""

from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from torch import Tensor

from app.jobs import memo

Box = tuple[int, int, int, int]  # top, left, bottom, right (pixels, bottom/right exclusive)
Spec = dict  # a figure as plain dicts, {"data": [trace dicts], "layout": {...}}, in plotly's validated form
Fig = go.Figure | Spec  # what the `add_*` functions draw on


PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4")
T2T_COLOUR = "#d62728"
VIT_COLOUR = "#1f77b4"
CHOSEN = "#ff1744"
NEIGHBOUR = "#00e5ff"
FONT = {"size": 15}
GRID = {"gridcolor": "#e6e6e6", "zerolinecolor": "#cccccc", "automargin": True}
CHART = {"plot_bgcolor": "white", "paper_bgcolor": "white"}
# the legend under the x-axis title, at the bottom of the figure (the bottom margin keeps room for two rows)
BOTTOM_LEGEND = {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0}
TITLE_CHARS = 44  # a 15 px title line this long fits a half-width figure at 1280 px


@functools.cache
def scale(name: str) -> tuple[tuple[float, str], ...]:
    """A plotly colour scale by name, with every colour written as rgb(r, g, b).

    Streamlit's plotly template marks theme colours with placeholder hex codes (#000001, #000002,
    ...) and its frontend swaps every such code in a figure for a theme colour, so Inferno's first
    stop, #000004, would turn lavender; rgb() strings are left alone.
    """
    from plotly.colors import get_colorscale, hex_to_rgb

    return tuple((float(p), "rgb({}, {}, {})".format(*hex_to_rgb(c)) if c.startswith("#") else c)
                 for p, c in get_colorscale(name))


def presentation(layout: dict, factor: float = 1.3) -> dict:
    """Presentation mode on a figure's layout (a dict, changed in place and returned): every text and the
    height `factor` times larger, the margins kept for legends and axis titles with them."""
    font = layout.setdefault("font", {})
    font["size"] = round((font.get("size") or 12) * factor)
    layout["height"] = round((layout.get("height") or 420) * factor)
    title = layout.get("title") or {}
    texts = ([title] if title.get("text") else []) + list(layout.get("annotations") or ())
    for text in texts:
        text_font = text.setdefault("font", {})
        text_font["size"] = round((text_font.get("size") or FONT["size"]) * factor)
    margin = layout.get("margin") or {}  # room kept for legends and axis titles grows with their text
    for side in "tblr":
        if margin.get(side) is not None:
            margin[side] = round(margin[side] * factor)
    return layout


def png_config(filename: str) -> dict:
    """Plotly config: a toolbar with only the PNG download (always shown), no scroll or double-click zoom."""
    return {
        "displayModeBar": True, "displaylogo": False, "scrollZoom": False, "doubleClick": False,
        "modeBarButtonsToRemove": ["zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d",
                                   "autoScale2d", "resetScale2d", "toggleSpikelines", "hoverClosestCartesian",
                                   "hoverCompareCartesian", "zoom", "pan", "resetViews"],
        "toImageButtonOptions": {"format": "png", "filename": re.sub(r"[^A-Za-z0-9_-]+", "_", filename)[:80],
                                 "scale": 2},
    }


def png_uri(image: np.ndarray | Image.Image) -> str:
    """A data URI of a PNG, for go.Image: far smaller than sending the pixels as JSON numbers."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@memo  # in the per-image cache, under its budget in bytes
def cached_png_uri(key: str, _image: np.ndarray) -> str:
    """`png_uri` remembered by a caller's key (e.g. model + image), so reruns do not re-encode."""
    return png_uri(_image)


def spec_figure(spec: Spec) -> go.Figure:
    """A go.Figure of a spec, without plotly's validation (0.4 ms instead of ~8 ms for an image figure).

    Only for a spec already in the form validation gives (the specs built here and in app/charts.py;
    tests/app/test_figure_specs.py checks them): a figure built so validates nothing later either, so it
    is made to be drawn (`widgets.show`), not edited. Streamlit's default template is added as by
    go.Figure."""
    return go.Figure(spec, _validate=False)


def add_trace(fig: Fig, trace: dict) -> Fig:
    """Append a trace (a dict with its "type") to a go.Figure (validated there) or a spec."""
    if isinstance(fig, go.Figure):
        fig.add_trace(trace)
    else:
        fig["data"].append(trace)
    return fig


def merge_layout(fig: Fig, update: dict) -> Fig:
    """`fig.update_layout(update)` for a go.Figure or a spec: nested dicts are merged key by key (as plotly
    merges compound properties), anything else (numbers, strings, lists such as annotations) replaced."""
    if isinstance(fig, go.Figure):
        fig.update_layout(update)
    else:
        _merge(fig["layout"], update)
    return fig


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def image_spec(uri: str | None, size: tuple[int, int], height: int = 420, title: str | None = None,
               pixel: float = 1.0) -> Spec:
    """The spec of a figure showing an image (data URI) over an extent of `size` (H, W) units, hidden axes,
    y down (`image_figure` is this spec as a go.Figure).

    `pixel` is the size of one PNG pixel in those units (1 / factor for an enlarged image).
    """
    h, w = size
    data = [{"type": "image", "source": uri, "x0": pixel / 2, "y0": pixel / 2, "dx": pixel, "dy": pixel,
             "hoverinfo": "skip"}] if uri else []
    layout = {
        "height": height,
        "margin": {"l": 0, "r": 0, "t": 36 if title else 4, "b": 0},
        "xaxis": {"range": [0, w], "visible": False, "constrain": "domain"},
        "yaxis": {"range": [h, 0], "visible": False, "scaleanchor": "x", "constrain": "domain"},
        "showlegend": False,
        "plot_bgcolor": "rgba(0,0,0,0)",
        "font": dict(FONT),
    }
    if title:
        layout["title"] = {"text": title, "font": dict(FONT), "x": 0.01, "y": 0.99}
    return {"data": data, "layout": layout}


def image_figure(uri: str | None, size: tuple[int, int], height: int = 420, title: str | None = None,
                 pixel: float = 1.0) -> go.Figure:
    """A figure showing an image (data URI) over an extent of `size` (H, W) units, hidden axes, y down:
    `image_spec` as a (validated) go.Figure."""
    return go.Figure(image_spec(uri, size, height, title, pixel))


def add_grid_heatmap(fig: Fig, values: np.ndarray, extent: tuple[int, int], *, colorscale: str = "Inferno",
                     opacity: float = 0.6, zmin: float | None = None, zmax: float | None = None,
                     showscale: bool = True, colorbar_title: str = "", hover: str = "%{z:.3g}") -> Fig:
    """Overlay an (h, w) grid of values stretched over an image extent (H, W).

    The values go to the browser as float32 (half the bytes of float64; colours and 3-digit hovers are the
    same)."""
    gh, gw = values.shape
    dy, dx = extent[0] / gh, extent[1] / gw
    trace = {"type": "heatmap", "z": _float32(values), "x0": dx / 2, "dx": dx, "y0": dy / 2, "dy": dy,
             "opacity": opacity, "colorscale": scale(colorscale), "showscale": showscale,
             "hovertemplate": hover + "<extra></extra>"}
    trace.update({k: v for k, v in (("zmin", zmin), ("zmax", zmax)) if v is not None})
    if showscale:
        trace["colorbar"] = {"title": {"text": colorbar_title, "side": "right"}, "thickness": 12, "len": 0.8}
    return add_trace(fig, trace)


def add_log_heatmap(fig: Fig, ratio: np.ndarray, extent: tuple[int, int], unit: str,
                    floor: float = 1e-2, opacity: float = 0.75) -> Fig:
    """Overlay positive values (e.g. attention relative to uniform) on a log10 colour scale.

    Attention is often very peaked: on a linear scale a few tokens take the whole range and the rest
    look alike. Values below `floor` share the lowest colour; ticks read 0.01×, 0.1×, 1×, 10×, ...
    The values and the hovers' ratios go to the browser as float32 (as `add_grid_heatmap`).
    """
    z = np.log10(np.maximum(ratio, floor))
    top = max(1.0, float(np.ceil(z.max())))
    ticks = np.arange(np.log10(floor), top + 1e-9)
    gh, gw = ratio.shape
    dy, dx = extent[0] / gh, extent[1] / gw
    return add_trace(fig, {
        "type": "heatmap", "z": _float32(z), "customdata": _float32(ratio), "x0": dx / 2, "dx": dx, "y0": dy / 2,
        "dy": dy, "opacity": opacity, "colorscale": scale("Inferno"), "zmin": float(np.log10(floor)),
        "zmax": top, "hovertemplate": "%{customdata:.3g}" + unit + "<extra></extra>",
        "colorbar": {"title": {"text": unit, "side": "right"}, "thickness": 12, "len": 0.8, "tickvals": ticks,
                     "ticktext": [f"{10 ** t:g}×" for t in ticks]},
    })


def _float32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def add_token_picker(fig: Fig, grid: tuple[int, int], extent: tuple[int, int], label: str = "token",
                     height: int = 420) -> Fig:
    """A transparent scatter of the token centres of a (h, w) grid: clicking one selects it.

    Each point's customdata is (row, col) on that grid; hover shows it with the flat index.
    `maxdisplayed: 1` draws one marker instead of all (3136 SVG paths on the 56 x 56 grid took
    ~0.3 s of the browser's main thread on each redraw): plotly finds the clicked point among all
    of its data (hover, then click-to-select), drawn or not, so every cell stays clickable.
    The centres go as float32 (exact for the grids of 224 and 384 px images; 3136 points are 50 KB of
    float64 sent with every figure), the (row, col, index) as the smallest integers plotly writes.
    """
    return add_trace(fig, token_picker_trace(grid, extent, label, height))


def token_picker_trace(grid: tuple[int, int], extent: tuple[int, int], label: str = "token",
                       height: int = 420) -> dict:
    """The trace `add_token_picker` adds."""
    gh, gw = grid
    rows, cols = np.mgrid[0:gh, 0:gw]
    dy, dx = extent[0] / gh, extent[1] / gw
    return {
        "type": "scatter", "x": ((cols + 0.5) * dx).ravel().astype(np.float32),
        "y": ((rows + 0.5) * dy).ravel().astype(np.float32), "mode": "markers",
        "marker": {"size": max(5.0, 0.9 * height / max(gh, gw)), "color": "rgba(255,255,255,0.01)",
                   "symbol": "square", "maxdisplayed": 1},
        "selected": {"marker": {"color": "rgba(255,255,255,0.01)"}},
        "unselected": {"marker": {"opacity": 1}},
        "customdata": np.stack([rows.ravel(), cols.ravel(), (rows * gw + cols).ravel()], axis=-1),
        "hovertemplate": f"{label} (row %{{customdata[0]}}, col %{{customdata[1]}}) = #%{{customdata[2]}}"
                         "<extra></extra>",
        "name": "pick",
    }


def add_boxes(fig: Fig, boxes: Sequence[Box], color: str, width: float = 2.0, dash: str | None = None,
              name: str = "boxes") -> Fig:
    """Rectangles (top, left, bottom, right) in image coordinates, as one line trace named `name`.

    One trace with None between rectangles, not layout shapes: plotly validates every shape on each
    update, which made a figure with a dozen boxes cost a tenth of a second to build.
    """
    xs: list[float | None] = []
    ys: list[float | None] = []
    for top, left, bottom, right in boxes:
        xs += [left, right, right, left, left, None]
        ys += [top, top, bottom, bottom, top, None]
    return add_trace(fig, {"type": "scatter", "x": xs, "y": ys, "mode": "lines", "name": name, "hoverinfo": "skip",
                           "showlegend": False, "line": {"color": color, "width": width, "dash": dash or "solid"}})


def add_chosen(fig: Fig, box: Box, extent: tuple[int, int], height: int, color: str = CHOSEN,
               name: str = "chosen") -> Fig:
    """The chosen window or token: a thick box on a white halo, and a ring when the box is small on screen.

    A 7 px window of a 224 px image is ~13 px on a 420 px figure, too small to find at a glance from
    the back of a room; the ring (trace `name` + "_ring", at least 46 px across) marks its place.
    `extent` (H, W) and `height` (figure pixels) give the box's size on screen.
    """
    add_boxes(fig, [box], "white", width=7, name=name + "_halo")
    add_boxes(fig, [box], color, width=4, name=name)
    top, left, bottom, right = box
    on_screen = max(bottom - top, right - left) * height / max(extent)
    if on_screen < 48:
        add_trace(fig, {"type": "scatter", "x": [(left + right) / 2], "y": [(top + bottom) / 2], "mode": "markers",
                        "name": name + "_ring", "hoverinfo": "skip", "showlegend": False,
                        "marker": {"symbol": "circle-open", "size": max(46.0, 2.2 * on_screen), "color": color,
                                   "line": {"width": 4, "color": color}}})
    return fig


def add_grid_lines(fig: Fig, grid: tuple[int, int], extent: tuple[int, int], color: str = "white",
                   width: float = 1.0) -> Fig:
    """The lines of a (h, w) grid over an image extent, as one line trace (fast for many lines)."""
    gh, gw = grid
    xs: list[float | None] = []
    ys: list[float | None] = []
    for r in range(gh + 1):
        y = r * extent[0] / gh
        xs += [0, extent[1], None]
        ys += [y, y, None]
    for c in range(gw + 1):
        x = c * extent[1] / gw
        xs += [x, x, None]
        ys += [0, extent[0], None]
    return add_trace(fig, {"type": "scatter", "x": xs, "y": ys, "mode": "lines",
                           "line": {"color": color, "width": width}, "hoverinfo": "skip"})


def cell_box(row: int, col: int, grid: tuple[int, int], extent: tuple[int, int]) -> Box:
    """The box a grid cell covers when the grid is stretched over the extent."""
    dy, dx = extent[0] / grid[0], extent[1] / grid[1]
    return int(row * dy), int(col * dx), int((row + 1) * dy), int((col + 1) * dx)


def neighbours(row: int, col: int, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The up to 8 cells around (row, col), clipped to the grid."""
    return [(r, c) for r in range(row - 1, row + 2) for c in range(col - 1, col + 2)
            if (r, c) != (row, col) and 0 <= r < grid[0] and 0 <= c < grid[1]]


def scaled_index(index: int, size_from: int, size_to: int) -> int:
    """The cell of a `size_to` grid under cell `index` of a `size_from` grid covering the same image."""
    return min(size_to - 1, index * size_to // size_from)


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def colorize(values: np.ndarray, cmap: str = "gray", vmin: float = 0.0, vmax: float = 1.0,
             nan_color: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """(h, w) values -> (h, w, 3) uint8 through a matplotlib colormap; NaN gets `nan_color`."""
    from matplotlib import colormaps

    scaled = (values - vmin) / max(vmax - vmin, 1e-12)
    rgb = colormaps[cmap](np.nan_to_num(np.clip(scaled, 0, 1)), bytes=True)[..., :3]
    rgb[np.isnan(values)] = nan_color
    return rgb


def upscale_factor(size: tuple[int, ...], target: int = 480) -> int:
    """The integer enlargement that brings the longer side of `size` near `target` pixels."""
    return max(1, target // max(size[:2]))


def upscale(rgb: np.ndarray, target: int = 480) -> np.ndarray:
    """Nearest-neighbour enlargement by `upscale_factor`.

    Browsers smooth small images when they scale them up; enlarging first keeps cells crisp.
    """
    factor = upscale_factor(rgb.shape, target)
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


@memo
def cached_overlay_uri(key: str, _image: np.ndarray, _heat: Callable[[], np.ndarray]) -> str:
    """`overlay_uri` remembered by a caller's key (model + image + map), so reruns do not redo it;
    `_heat()` gives the (S, S) map in [0, 1] and is only called on a miss."""
    return overlay_uri(_image, _heat())


def overlay_uri(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55, cmap: str = "jet") -> str:
    """PNG data URI of an (S, S, 3) image blended with an (S, S) map in [0, 1] through a colormap."""
    rgb = colorize(heat, cmap).astype(np.float32)
    a = alpha * np.clip(heat, 0, 1)[..., None] ** 0.5  # faint where the map is low, so the image shows
    out = image.astype(np.float32) * (1 - a) + rgb * a
    return png_uri(np.clip(out, 0, 255).astype(np.uint8))


def wrap(text: str, width: int) -> str:
    """Words joined into lines of at most ~`width` characters, with plotly's <br> between lines."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)
