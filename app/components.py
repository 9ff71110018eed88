"""Plotly figures and small widgets shared by the pages.

Coordinates: an image of H x W pixels is drawn so that pixel (y, x) covers [x, x + 1] x [y, y + 1],
y pointing down; a token grid of h x w cells is stretched over the same extent, cell (r, c)
covering [c W / w, (c + 1) W / w] x [r H / h, (r + 1) H / h]. Receptive-field boxes
(top, left, bottom, right), bottom/right exclusive, are drawn as they are.

Clicking a token: plotly heatmap cells fire no selection events, so clickable figures carry a
transparent scatter of token centres (`add_token_picker`); `pick_callback` turns a selected
point into widget values in session state (run as the chart's on_select callback, before the
script reruns, so the sliders can be set).
"""

from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from app._state import memo

Box = tuple[int, int, int, int]  # top, left, bottom, right (pixels, bottom/right exclusive)

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


def show(fig: go.Figure, key: str, on_select: Callable[[], None] | None = None, filename: str | None = None) -> None:
    """Draw a figure with its own colours (Streamlit's chart theme would replace the colour scales);
    with `on_select`, clicking a point of a picker calls it before the rerun.

    The toolbar holds one button, "Download plot as a png" (2x scale, for slides), named `filename`
    (default: the key). Axes are fixed: dragging selects nothing and zooms nothing, double-clicking
    changes nothing, so a figure can never be left zoomed or shrunk with no way back; clicks still
    pick points. No template is set here: assigning one costs ~20 ms of plotly validation per figure;
    charts set a white background themselves (`CHART`)."""
    fig.update_xaxes(fixedrange=True)
    fig.update_yaxes(fixedrange=True)
    fig.update_layout(dragmode=False)
    if st.session_state.get("present"):
        presentation(fig)
    if fig.layout.title.text:  # the title just above the plot, the toolbar's row above it: no overlap
        chars = TITLE_CHARS * FONT["size"] // (fig.layout.title.font.size or FONT["size"])  # bigger font, fewer
        text = fig.layout.title.text if "<br>" in fig.layout.title.text else wrap(fig.layout.title.text, chars)
        lines = text.count("<br>") + 1
        top = fig.layout.margin.t if fig.layout.margin.t is not None else 80
        size = fig.layout.title.font.size or FONT["size"]
        # hung from the top of the figure under the toolbar's row (a bottom-anchored title of two lines
        # would grow down into the plot), with the top margin grown to hold every line
        fig.update_layout(title={"text": text, "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 48}},
                          margin={"t": max(top, 54 + 1.4 * size * lines)})
    st.plotly_chart(fig, key=key, theme=None, config=png_config(filename or key),
                    **({"on_select": on_select, "selection_mode": "points"} if on_select is not None else {}))


def presentation(fig: go.Figure, factor: float = 1.3) -> None:
    """Presentation mode: every text of a figure and its height `factor` times larger."""
    fig.update_layout(font_size=round((fig.layout.font.size or 12) * factor),
                      height=round((fig.layout.height or 420) * factor))
    if fig.layout.title.text:
        fig.update_layout(title_font_size=round((fig.layout.title.font.size or FONT["size"]) * factor))
    for note in fig.layout.annotations or ():
        note.font.size = round((note.font.size or FONT["size"]) * factor)
    margin = fig.layout.margin  # room kept for legends and axis titles grows with their text
    fig.update_layout(margin={side: round(getattr(margin, side) * factor) for side in "tblr"
                              if getattr(margin, side) is not None})


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


def image_figure(uri: str | None, size: tuple[int, int], height: int = 420, title: str | None = None,
                 pixel: float = 1.0) -> go.Figure:
    """A figure showing an image (data URI) over an extent of `size` (H, W) units, hidden axes, y down.

    `pixel` is the size of one PNG pixel in those units (1 / factor for an enlarged image).
    """
    h, w = size
    data = [go.Image(source=uri, x0=pixel / 2, y0=pixel / 2, dx=pixel, dy=pixel, hoverinfo="skip")] if uri else []
    fig = go.Figure(data=data)
    fig.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 36 if title else 4, "b": 0},
        title={"text": title, "font": FONT, "x": 0.01, "y": 0.99} if title else None,
        xaxis={"range": [0, w], "visible": False, "constrain": "domain"},
        yaxis={"range": [h, 0], "visible": False, "scaleanchor": "x", "constrain": "domain"},
        showlegend=False,
        plot_bgcolor="rgba(0,0,0,0)",
        font=FONT,
    )
    return fig


def add_grid_heatmap(fig: go.Figure, values: np.ndarray, extent: tuple[int, int], *, colorscale: str = "Inferno",
                     opacity: float = 0.6, zmin: float | None = None, zmax: float | None = None,
                     showscale: bool = True, colorbar_title: str = "", hover: str = "%{z:.3g}") -> go.Figure:
    """Overlay an (h, w) grid of values stretched over an image extent (H, W)."""
    gh, gw = values.shape
    dy, dx = extent[0] / gh, extent[1] / gw
    fig.add_trace(go.Heatmap(
        z=values, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, opacity=opacity, colorscale=scale(colorscale), zmin=zmin,
        zmax=zmax,
        showscale=showscale, hovertemplate=hover + "<extra></extra>",
        colorbar={"title": {"text": colorbar_title, "side": "right"}, "thickness": 12, "len": 0.8}
        if showscale else None,
    ))
    return fig


def add_log_heatmap(fig: go.Figure, ratio: np.ndarray, extent: tuple[int, int], unit: str,
                    floor: float = 1e-2, opacity: float = 0.75) -> go.Figure:
    """Overlay positive values (e.g. attention relative to uniform) on a log10 colour scale.

    Attention is often very peaked: on a linear scale a few tokens take the whole range and the rest
    look alike. Values below `floor` share the lowest colour; ticks read 0.01×, 0.1×, 1×, 10×, ...
    """
    z = np.log10(np.maximum(ratio, floor))
    top = max(1.0, float(np.ceil(z.max())))
    ticks = np.arange(np.log10(floor), top + 1e-9)
    gh, gw = ratio.shape
    dy, dx = extent[0] / gh, extent[1] / gw
    fig.add_trace(go.Heatmap(
        z=z, customdata=ratio, x0=dx / 2, dx=dx, y0=dy / 2, dy=dy, opacity=opacity, colorscale=scale("Inferno"),
        zmin=float(np.log10(floor)), zmax=top, hovertemplate="%{customdata:.3g}" + unit + "<extra></extra>",
        colorbar={"title": {"text": unit, "side": "right"}, "thickness": 12, "len": 0.8, "tickvals": ticks,
                  "ticktext": [f"{10 ** t:g}×" for t in ticks]},
    ))
    return fig


def add_token_picker(fig: go.Figure, grid: tuple[int, int], extent: tuple[int, int], label: str = "token",
                     height: int = 420) -> go.Figure:
    """A transparent scatter of the token centres of a (h, w) grid: clicking one selects it.

    Each point's customdata is (row, col) on that grid; hover shows it with the flat index.
    `maxdisplayed: 1` draws one marker instead of all (3136 SVG paths on the 56 x 56 grid took
    ~0.3 s of the browser's main thread on each redraw): plotly finds the clicked point among all
    of its data (hover, then click-to-select), drawn or not, so every cell stays clickable.
    """
    gh, gw = grid
    rows, cols = np.mgrid[0:gh, 0:gw]
    dy, dx = extent[0] / gh, extent[1] / gw
    size = max(5.0, 0.9 * height / max(gh, gw))
    fig.add_trace(go.Scatter(
        x=((cols + 0.5) * dx).ravel(), y=((rows + 0.5) * dy).ravel(), mode="markers",
        marker={"size": size, "color": "rgba(255,255,255,0.01)", "symbol": "square", "maxdisplayed": 1},
        selected={"marker": {"color": "rgba(255,255,255,0.01)"}},
        unselected={"marker": {"opacity": 1}},
        customdata=np.stack([rows.ravel(), cols.ravel(), (rows * gw + cols).ravel()], axis=-1),
        hovertemplate=f"{label} (row %{{customdata[0]}}, col %{{customdata[1]}}) = #%{{customdata[2]}}<extra></extra>",
        name="pick",
    ))
    return fig


def add_boxes(fig: go.Figure, boxes: Sequence[Box], color: str, width: float = 2.0, dash: str | None = None,
              name: str = "boxes") -> go.Figure:
    """Rectangles (top, left, bottom, right) in image coordinates, as one line trace named `name`.

    One trace with None between rectangles, not layout shapes: plotly validates every shape on each
    update, which made a figure with a dozen boxes cost a tenth of a second to build.
    """
    xs: list[float | None] = []
    ys: list[float | None] = []
    for top, left, bottom, right in boxes:
        xs += [left, right, right, left, left, None]
        ys += [top, top, bottom, bottom, top, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip", showlegend=False,
                             line={"color": color, "width": width, "dash": dash or "solid"}))
    return fig


def add_chosen(fig: go.Figure, box: Box, extent: tuple[int, int], height: int, color: str = CHOSEN,
               name: str = "chosen") -> go.Figure:
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
        fig.add_trace(go.Scatter(x=[(left + right) / 2], y=[(top + bottom) / 2], mode="markers", name=name + "_ring",
                                 hoverinfo="skip", showlegend=False,
                                 marker={"symbol": "circle-open", "size": max(46.0, 2.2 * on_screen),
                                         "color": color, "line": {"width": 4, "color": color}}))
    return fig


def add_grid_lines(fig: go.Figure, grid: tuple[int, int], extent: tuple[int, int], color: str = "white",
                   width: float = 1.0) -> go.Figure:
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
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": color, "width": width}, hoverinfo="skip"))
    return fig


def cell_box(row: int, col: int, grid: tuple[int, int], extent: tuple[int, int]) -> Box:
    """The box a grid cell covers when the grid is stretched over the extent."""
    dy, dx = extent[0] / grid[0], extent[1] / grid[1]
    return int(row * dy), int(col * dx), int((row + 1) * dy), int((col + 1) * dx)


def neighbours(row: int, col: int, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The up to 8 cells around (row, col), clipped to the grid."""
    return [(r, c) for r in range(row - 1, row + 2) for c in range(col - 1, col + 2)
            if (r, c) != (row, col) and 0 <= r < grid[0] and 0 <= c < grid[1]]


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


# ----------------------------------------------------------------------------------------------
# Mosaics (channel grids, head x block thumbnails)
# ----------------------------------------------------------------------------------------------


def mosaic(maps: np.ndarray, ncols: int, normalize: bool = True, pad: int = 1) -> np.ndarray:
    """(n, h, w) maps -> one (rows (h + pad), ncols (w + pad)) array, tiles separated by NaN.

    With `normalize`, each tile is min-max scaled to [0, 1] on its own (a flat tile becomes 0.5).
    """
    n, h, w = maps.shape
    nrows = -(-n // ncols)
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), np.nan, dtype=np.float32)
    tiles = maps.astype(np.float32)
    if normalize:
        lo = tiles.min(axis=(1, 2), keepdims=True)
        hi = tiles.max(axis=(1, 2), keepdims=True)
        span = hi - lo
        tiles = np.where(span > 1e-12, (tiles - lo) / np.where(span > 1e-12, span, 1), 0.5)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tiles[i]
    return out


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


def mosaic_figure(maps: np.ndarray, ncols: int, *, labels: Sequence[str] | None = None,
                  marked: Sequence[int] = (), cmap: str = "gray", height: int = 420,
                  title: str | None = None, normalize: bool = True, pickable: bool = False,
                  hover_names: Sequence[str] | None = None, mark_color: str = "#ff1744",
                  highlight: int | None = None, uri: str | None = None, row_labels: Sequence[str] = (),
                  col_labels: Sequence[str] = ()) -> go.Figure:
    """A grid of small maps drawn as one image: channels of a block, or heads x blocks.

    `marked` tiles get a red frame (e.g. invalid channels), `highlight` a thick yellow one;
    `pickable` overlays a transparent scatter of tile centres whose customdata is the tile index.
    `uri` is the already encoded mosaic image (see `mosaic_uri`), to skip re-encoding on reruns.
    `row_labels` / `col_labels` are written left of the rows / above the columns.
    """
    n, h, w = maps.shape
    nrows = -(-n // ncols)
    size = (nrows * (h + 1) - 1, ncols * (w + 1) - 1)
    fig = image_figure(uri or mosaic_uri(maps, ncols, normalize, cmap), size, height, title,
                       pixel=1 / upscale_factor(size))
    def tile(i: int, grow: float = 0.0) -> Box:
        r, c = divmod(i, ncols)
        return (r * (h + 1) - grow, c * (w + 1) - grow, r * (h + 1) + h + grow, c * (w + 1) + w + grow)

    if marked:
        add_boxes(fig, [tile(i) for i in marked], mark_color, width=2.5, name="marked")
    if highlight is not None:
        add_boxes(fig, [tile(highlight, 0.5)], "#ffd600", width=4, name="highlight")
    annotations = []
    for i, text in enumerate(labels or []):
        if not text:
            continue
        r, c = divmod(i, ncols)
        annotations.append({"x": c * (w + 1) + 0.3, "y": r * (h + 1) + 0.3, "text": text, "showarrow": False,
                            "xanchor": "left", "yanchor": "top", "font": {"size": 14, "color": "#ffd600"},
                            "bgcolor": "rgba(0,0,0,0.5)"})
    for r, text in enumerate(row_labels):
        annotations.append({"x": -0.5, "y": r * (h + 1) + h / 2, "text": text, "showarrow": False,
                            "xanchor": "right", "font": {"size": 14}})
    for c, text in enumerate(col_labels):
        annotations.append({"x": c * (w + 1) + w / 2, "y": -0.5, "text": text, "showarrow": False,
                            "yanchor": "bottom", "font": {"size": 14}})
    if row_labels or col_labels:  # annotations outside the axis ranges are hidden: widen the ranges
        fig.update_xaxes(range=[-1.4 * w if row_labels else 0, size[1]])
        fig.update_yaxes(range=[size[0], -0.6 * h if col_labels else 0])
    if pickable:
        idx = np.arange(n)
        rr, cc = np.divmod(idx, ncols)
        names = list(hover_names) if hover_names else [str(i) for i in idx]
        fig.add_trace(go.Scatter(
            x=cc * (w + 1) + w / 2, y=rr * (h + 1) + h / 2, mode="markers",
            marker={"size": max(10.0, 0.8 * height / nrows), "color": "rgba(255,255,255,0.01)", "symbol": "square"},
            selected={"marker": {"color": "rgba(255,255,255,0.01)"}}, unselected={"marker": {"opacity": 1}},
            customdata=np.stack([idx, idx], axis=-1), text=names, hovertemplate="%{text}<extra></extra>",
        ))
    fig.update_layout(annotations=annotations)
    return fig


def mosaic_uri(maps: np.ndarray, ncols: int, normalize: bool = True, cmap: str = "gray") -> str:
    """The PNG data URI of `mosaic(maps)` through a colormap, enlarged for crisp tiles."""
    grid = mosaic(maps, ncols, normalize)
    lo, hi = (0.0, 1.0) if normalize else (float(np.nanmin(grid)), float(np.nanmax(grid)))
    return png_uri(upscale(colorize(grid, cmap, lo, hi)))


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


# ----------------------------------------------------------------------------------------------
# Charts
# ----------------------------------------------------------------------------------------------


def topk_figure(pairs: Sequence[tuple[str, float]], title: str, color: str, height: int = 300) -> go.Figure:
    """Horizontal bars of (class name, probability), the most likely on top."""
    names = [n for n, _ in pairs][::-1]
    probs = [p for _, p in pairs][::-1]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=color,
                           text=[f"{p:.1%}" for p in probs], textposition="auto",
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(height=height, margin={"l": 0, "r": 10, "t": 40, "b": 70}, title={"text": title, "font": FONT},
                      xaxis={"range": [0, 1], "tickformat": ".0%", "title": "probability", **GRID},
                      yaxis={"automargin": True}, font=FONT, **CHART)
    return fig


def depth_figure(series: dict[str, tuple[np.ndarray, str]], title: str, ytitle: str, height: int = 380,
                 relative: bool = True, yrange: tuple[float, float] | None = None) -> go.Figure:
    """Lines of a metric across depth, one per model: {label: (values (L,), colour)}.

    With `relative`, x is the block's relative depth (block / (L - 1)) so a 7-block and a 12-block
    model line up; the hover still names the block.
    """
    fig = go.Figure()
    for label, (values, color) in series.items():
        n = len(values)
        x = np.arange(n) / max(n - 1, 1) if relative else np.arange(n)
        fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=label, line={"color": color, "width": 3},
                                 customdata=np.arange(n),
                                 hovertemplate="block %{customdata}: %{y:.3g}<extra>" + label + "</extra>"))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 110}, title={"text": title, "font": FONT},
                      xaxis={"title": "relative depth (first block → last)" if relative else "block", **GRID},
                      yaxis={"title": ytitle, "range": list(yrange) if yrange else None, **GRID},
                      legend=BOTTOM_LEGEND, font=FONT, **CHART)
    return fig


def head_scatter(values: dict[str, tuple[np.ndarray, str]], title: str, ytitle: str, height: int = 400,
                 highlight: tuple[str, int, int] | None = None) -> go.Figure:
    """One dot per head and block, per model: {label: ((L, H) values, colour)}; x = relative depth."""
    fig = go.Figure()
    for label, (vals, color) in values.items():
        nb, nh = vals.shape
        blocks = np.repeat(np.arange(nb), nh)
        heads = np.tile(np.arange(nh), nb)
        x = blocks / max(nb - 1, 1)
        fig.add_trace(go.Scatter(x=x, y=vals.ravel(), mode="markers", name=label,
                                 marker={"color": color, "size": 9, "opacity": 0.75},
                                 customdata=np.stack([blocks, heads], axis=-1),
                                 hovertemplate="block %{customdata[0]}, head %{customdata[1]}: %{y:.3g}<extra>"
                                 + label + "</extra>"))
        if highlight and highlight[0] == label:
            b, h = highlight[1], highlight[2]
            fig.add_trace(go.Scatter(x=[b / max(nb - 1, 1)], y=[vals[b, h]], mode="markers", showlegend=False,
                                     marker={"color": "rgba(0,0,0,0)", "size": 18, "line": {"color": "black",
                                                                                          "width": 3}},
                                     hoverinfo="skip"))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 110}, title={"text": title, "font": FONT},
                      xaxis={"title": "relative depth (first block → last)", **GRID}, yaxis={"title": ytitle, **GRID},
                      legend=BOTTOM_LEGEND, font=FONT, **CHART)
    return fig


def matrix_figure(values: np.ndarray, xtitle: str, ytitle: str, title: str, height: int = 420,
                  zmin: float = 0.0, zmax: float = 1.0) -> go.Figure:
    """A labelled matrix (rows = y blocks, columns = x blocks), e.g. CKA; blocks numbered from 0 as elsewhere."""
    ny, nx = values.shape
    fig = go.Figure(go.Heatmap(z=values, x=np.arange(nx), y=np.arange(ny), colorscale=scale("Viridis"),
                               zmin=zmin, zmax=zmax, colorbar={"title": {"text": "CKA", "side": "right"}},
                               hovertemplate=f"{ytitle} %{{y}}, {xtitle} %{{x}}: %{{z:.2f}}<extra></extra>"))
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 40, "b": 40}, title={"text": title, "font": FONT},
                      xaxis={"title": xtitle, "dtick": 1, "automargin": True},
                      yaxis={"title": ytitle, "dtick": 1, "autorange": "reversed", "automargin": True},
                      font=FONT, **CHART)
    return fig


def strip_figure(maps: Sequence[np.ndarray], titles: Sequence[str], height: int = 260,
                 colorscale: str = "Inferno") -> go.Figure:
    """Maps of different resolutions side by side, each in its own square panel (one figure)."""
    n = len(maps)
    gap = 0.02
    width = (1 - gap * (n - 1)) / n
    fig = go.Figure()
    layout: dict = {}
    annotations = []
    for i, (m, t) in enumerate(zip(maps, titles, strict=True)):
        ax = "" if i == 0 else str(i + 1)
        fig.add_trace(go.Heatmap(z=m, colorscale=scale(colorscale), showscale=False, xaxis=f"x{ax}", yaxis=f"y{ax}",
                                 hovertemplate="%{z:.3g}<extra></extra>"))
        x0 = i * (width + gap)
        layout[f"xaxis{ax}"] = {"domain": [x0, x0 + width], "visible": False, "constrain": "domain"}
        layout[f"yaxis{ax}"] = {"visible": False, "autorange": "reversed", "scaleanchor": f"x{ax}",
                                "constrain": "domain"}
        annotations.append({"x": x0 + width / 2, "y": 1.0, "xref": "paper", "yref": "paper", "text": wrap(t, 12),
                            "showarrow": False, "xanchor": "center", "yanchor": "bottom", "font": {"size": 14}})
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 80, "b": 0}, annotations=annotations,
                      showlegend=False, font=FONT, **layout)
    return fig


def wrap(text: str, width: int) -> str:
    """Words joined into lines of at most ~`width` characters, with plotly's <br> between lines."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def explain_text(text: str) -> None:
    """The short explanation for students at the top of a page, in a quiet box."""
    st.info(text, icon=":material/school:")


# ----------------------------------------------------------------------------------------------
# What the models know
# ----------------------------------------------------------------------------------------------


def domain_warning(lm, image, what: str = "This image") -> str | None:
    """Why a prediction of model `lm` (an app LoadedModel) on `image` (an ImageChoice) means little, or None.

    The project-trained models know only the synthetic shape classes: a photo gets a forced choice
    among shapes. ImageNet models know no shape class. Random weights know nothing.
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
    if len(names) == 1000 and synthetic:  # ImageNet-1k: no class is a shape (other class lists: unknown)
        return (f"{who} knows the 1000 ImageNet-1k classes, none of which is a synthetic shape: its answer is "
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
