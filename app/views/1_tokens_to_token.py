"""Page 1: the Tokens-to-Token module step by step, with the real tensors of the trace.

What depends on the chosen token and step (the sliders, the step radio, every clickable figure) is one
`st.fragment`: moving a slider or clicking a token reruns that part only, not the sidebar, the counts table
or the rest of the app (issue 29); a new image or model (the sidebar) reruns the whole page. The figures are
built as specs of plain dicts (app/figures.py), not validated go.Figure objects: a move builds them anew, and
plotly's validation was most of the time a move took in Python."""

from __future__ import annotations

import numpy as np
import streamlit as st

import t2t
from app import charts, compute, figures, links, models, widgets
from t2t.images import denormalize

ctx = compute.context()
lm, vm = ctx.t2t, ctx.vit
tr = ctx.trace(lm)
vtr = ctx.trace(vm)
model = lm.model
size = tuple(tr.image_size)  # (H, W) of the model input
g0, g1, g2 = tr.grid("t2t.split0"), tr.grid("t2t.split1"), tr.grid("t2t.split2")
vgrid = vtr.grid("patch_embed")
img = ctx.display_image(lm)
uri = figures.cached_png_uri(f"{lm.key}|{ctx.image.key}", img)

st.header("Tokens-to-Token, step by step")
widgets.explain_text(
    "ViT cuts the image into **hard, non-overlapping 16×16 patches**: an edge that crosses a patch border is "
    "split between two tokens, and the model must learn local structure from scratch. **T2T-ViT** builds its "
    "tokens gradually: a *soft split* gathers **overlapping** windows of pixels into tokens, a small "
    "transformer layer lets those tokens exchange information, the tokens are laid back on a 2-D map and "
    "split again, each time merging 3×3 neighbourhoods. Every image below is computed from the real tensors "
    "of one forward pass on the chosen image. **Click a token on any picture of the image** (or use the "
    "sliders) to choose it; **click a channel tile** to enlarge that channel. "
    "Look for: how the windows overlap, how far the T2T attention reaches, and how a backbone token of "
    "T2T-ViT sees a wider, overlapping area of the image than a ViT patch."
)


def counts_table() -> None:
    """How many tokens of how many numbers each step makes, read from the trace shapes."""
    def row(step: str, name: str, trace: t2t.Trace) -> str:
        shape = trace.shape(name)
        grid = trace.grid(name)
        return f"| {step} | `{name}` | {grid[0]}×{grid[1]} | **{shape[1]}** | {shape[2]} |"

    head = "| step | trace name | grid | tokens | numbers per token |\n|---|---|---|---|---|"
    k0, k1 = 7, 3  # window sides of the soft splits, shown in the text
    t2t_rows = [
        row(f"soft split 0: {k0}×{k0} windows, stride 4 (overlap 3 px)", "t2t.split0", tr),
        row("T2T attention 1 (re-structure)", "t2t.attn1", tr),
        row(f"reshape + soft split 1: {k1}×{k1}, stride 2", "t2t.split1", tr),
        row("T2T attention 2", "t2t.attn2", tr),
        row(f"reshape + soft split 2: {k1}×{k1}, stride 2", "t2t.split2", tr),
        row("linear projection → backbone", "t2t.project", tr),
    ]
    # one under the other: side by side, the second table ran past the page's right edge at 1280 px
    st.markdown(f"**{lm.name}** on a {size[0]}×{size[1]} input\n\n" + head + "\n" + "\n".join(t2t_rows))
    p = vm.model.patch_embed.patch_size
    st.markdown(
        f"**{vm.name}**\n\n" + head + "\n"
        + f"| hard split: {p}×{p} patches, stride {p} (no overlap) | (pixels) | {vgrid[0]}×{vgrid[1]} | "
          f"**{vgrid[0] * vgrid[1]}** | {3 * p * p} |\n"
        + row("linear projection → backbone", "patch_embed", vtr)
    )


counts_table()
n0, n1, n2 = (g[0] * g[1] for g in (g0, g1, g2))
m = st.columns(4)
m[0].metric("Soft split 0", f"{n0} tokens", help=f"{g0[0]}×{g0[1]} overlapping 7×7 windows")
m[1].metric(f"Soft split 1 (÷{n0 // n1})", f"{n1} tokens")
m[2].metric(f"Soft split 2 = backbone (÷{n1 // n2})", f"{n2} tokens")
m[3].metric("ViT hard split", f"{vgrid[0] * vgrid[1]} tokens", help="non-overlapping 16×16 patches")


def on(grid: tuple[int, int], rc0: tuple[int, int]) -> tuple[int, int]:
    """The token of a `grid` under the chosen token `rc0` of soft split 0's grid."""
    return figures.scaled_index(rc0[0], g0[0], grid[0]), figures.scaled_index(rc0[1], g0[1], grid[1])


def clickable(fig: figures.Spec, key: str, grid: tuple[int, int]) -> None:
    """Show a figure whose token picker on `grid` sets the chosen token."""
    widgets.show(fig, key=key, on_select=widgets.pick_callback(key, "tok_row", "tok_col", grid, g0))


def fields(stage: str, grid: tuple[int, int], rc: tuple[int, int]) -> tuple[figures.Box, list[figures.Box]]:
    """Receptive fields (pixels) of the chosen token of a stage and of its neighbours."""
    chosen = t2t.receptive_field(model, stage, rc, size)
    return chosen, [t2t.receptive_field(model, stage, n, size) for n in figures.neighbours(*rc, grid)]


def overlap_px(stage: str, grid: tuple[int, int]) -> int:
    """How many pixels two horizontally adjacent windows of a stage share (away from the border)."""
    r, c = grid[0] // 2, grid[1] // 2
    a = t2t.receptive_field(model, stage, (r, c), size)
    b = t2t.receptive_field(model, stage, (r, c + 1), size)
    return max(0, a[3] - b[1])


def window_figure(stage: str, grid: tuple[int, int], rc: tuple[int, int], title: str) -> figures.Spec:
    chosen, near = fields(stage, grid, rc)
    fig = figures.image_spec(uri, size, title=title)
    figures.add_boxes(fig, near, figures.NEIGHBOUR, width=1.5, dash="dot", name="neighbours")
    figures.add_chosen(fig, chosen, size, 420)
    return figures.add_token_picker(fig, grid, size)


def zoom_figure(stage: str, grid: tuple[int, int], rc: tuple[int, int], title: str) -> figures.Spec:
    """The neighbourhood of the chosen token, enlarged, with how many windows cover each pixel."""
    chosen, near = fields(stage, grid, rc)
    boxes = [chosen, *near]
    top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
    bottom, right = max(b[2] for b in boxes), max(b[3] for b in boxes)
    cover = np.zeros((bottom - top, right - left), dtype=np.float32)
    for t, lf, b, rt in boxes:
        cover[t - top:b - top, lf - left:rt - left] += 1
    crop = figures.upscale(np.ascontiguousarray(img[top:bottom, left:right]))
    # remembered per token: a slider moved back finds its crop encoded
    crop_uri = figures.cached_png_uri(f"{lm.key}|{ctx.image.key}|{stage}|{rc}|zoom", crop)
    fig = figures.image_spec(crop_uri, cover.shape, title=title, pixel=cover.shape[0] / crop.shape[0])
    figures.add_grid_heatmap(fig, cover, cover.shape, colorscale="Greens", opacity=0.35, zmin=0, zmax=4,
                       colorbar_title="windows", hover="this pixel is in %{z} of the 9 windows")
    shift = [(t - top, lf - left, b - top, rt - left) for t, lf, b, rt in boxes]
    figures.add_boxes(fig, shift[1:], figures.NEIGHBOUR, width=1.5, dash="dot")
    figures.add_chosen(fig, shift[0], cover.shape, 420)
    # clicking a window's centre makes it the chosen token (its customdata is its (row, col) on `grid`)
    tokens = [rc, *figures.neighbours(*rc, grid)]
    step = max(1, shift[0][2] - shift[0][0] - overlap_px(stage, grid))  # window stride in pixels
    return figures.add_trace(fig, {
        "type": "scatter", "x": [(lf + rt) / 2 for _, lf, _, rt in shift], "y": [(t + b) / 2 for t, _, b, _ in shift],
        "mode": "markers",
        "marker": {"size": 0.8 * step * 420 / max(cover.shape), "color": "rgba(255,255,255,0.01)", "symbol": "square"},
        "selected": {"marker": {"color": "rgba(255,255,255,0.01)"}}, "unselected": {"marker": {"opacity": 1}},
        "customdata": [[r, c, r * grid[1] + c] for r, c in tokens], "name": "pick",
        "hovertemplate": "window of token (row %{customdata[0]}, col %{customdata[1]}): click to choose it"
                         "<extra></extra>"})


def attention_figure(name: str, grid: tuple[int, int], rc: tuple[int, int], title: str, key: str) -> None:
    """The chosen query's attention row over the grid, on the image, and what the row sums to."""
    index = rc[0] * grid[1] + rc[1]
    row = figures.to_numpy(tr.attention_rows(name, [index])[0, 0, 0]).reshape(grid)
    fig = figures.image_spec(uri, size, title=title)
    figures.add_log_heatmap(fig, row * row.size, size, "× uniform", floor=1e-3)
    figures.add_chosen(fig, figures.cell_box(*rc, grid, size), size, 420, color="#00e676")
    clickable(figures.add_token_picker(fig, grid, size), key, grid)
    total = float(row.sum())
    if total < 0.5:
        sums = figures.to_numpy(tr.attention_row_sums(name)[0])
        st.warning(
            f"This row sums to {total:.2g}, not 1: the Performer's normaliser φ(q)·Σφ(k) underflowed for this "
            f"token, so it takes (almost) nothing from the others and the layer passes on its own value. "
            f"On this image that holds for {(sums < 0.5).mean():.0%} of the {sums.size} tokens.")
    else:
        st.caption(f"Colour (log scale): the weight on each token relative to uniform (1× = 1/{row.size}); "
                   f"the row sums to {total:.3f}.")


def map_window_figure(name: str, grid_in: tuple[int, int], grid_out: tuple[int, int], rc: tuple[int, int],
                      title: str) -> figures.Spec:
    """The 2-D token map a soft split cuts (channel norm), with the 3x3 windows of the chosen token."""
    tokens = figures.to_numpy(tr[name][0])  # (N, C)
    norm = np.linalg.norm(tokens, axis=1).reshape(grid_in)
    fig = figures.image_spec(None, size, title=title)
    figures.add_grid_heatmap(fig, norm, size, colorscale="Viridis", opacity=1.0, showscale=False,
                       hover="token norm %{z:.3g}")
    cell = (size[0] / grid_in[0], size[1] / grid_in[1])

    def window(r: int, c: int) -> figures.Box:  # 3x3 cells, stride 2, padding 1, in image units
        top, left = max(0, 2 * r - 1), max(0, 2 * c - 1)
        bottom, right = min(grid_in[0], 2 * r + 2), min(grid_in[1], 2 * c + 2)
        return int(top * cell[0]), int(left * cell[1]), int(bottom * cell[0]), int(right * cell[1])

    near = [window(*n) for n in figures.neighbours(*rc, grid_out)]
    figures.add_boxes(fig, near, figures.NEIGHBOUR, width=1.5, dash="dot")
    figures.add_chosen(fig, window(*rc), size, 420)
    return figures.add_token_picker(fig, grid_out, size)


def channel_mosaic(name: str, grid: tuple[int, int], count: int, title: str, key: str, rc0: tuple[int, int],
                   trace: t2t.Trace = tr, owner: models.LoadedModel = lm) -> None:
    """The first `count` channels of a step's tokens on their grid; click a tile to enlarge that channel.

    The enlarged channel shows the chosen token (`rc0` on soft split 0's grid) and is itself a token picker
    on `grid`.
    """
    tokens = figures.to_numpy(trace[name][0])[:, :count]  # (N, count)
    maps = tokens.T.reshape(-1, *grid)
    cache_key = f"{owner.key}|{ctx.image.key}|{name}|{count}"
    ncols = int(np.ceil(np.sqrt(len(maps))))
    mosaic_uri = figures.cached_png_uri(cache_key, figures.upscale(figures.colorize(charts.mosaic(maps, ncols),
                                                                                    "gray")))
    chosen_key = f"{key}_channel"
    channel = st.session_state.get(chosen_key)
    fig = charts.mosaic_spec(maps, ncols, title=title, uri=mosaic_uri, pickable=True, highlight=channel,
                             hover_names=[f"channel {i}: click to enlarge" for i in range(len(maps))])
    widgets.show(fig, key=key, on_select=widgets.tile_callback(key, len(maps), index_key=chosen_key))
    if channel is None or channel >= len(maps):
        st.caption("Click a tile to enlarge its channel.")
        return
    rc = on(grid, rc0)
    one = figures.image_spec(None, size, height=320, title=f"Channel {channel} of {name}, {grid[0]}×{grid[1]}")
    figures.add_grid_heatmap(one, maps[channel], size, colorscale="Greys", opacity=1.0, showscale=False,
                       hover=f"channel {channel}: %{{z:.3g}}")
    figures.add_chosen(one, figures.cell_box(*rc, grid, size), size, 320)
    clickable(figures.add_token_picker(one, grid, size, height=320), f"{key}_one", grid)
    st.caption(f"Channel {channel} enlarged, the chosen token ({rc[0]}, {rc[1]}) outlined: click a token to "
               "choose it, or another tile to change the channel.")


# ---- the steps ---------------------------------------------------------------------------------------------


def step_split0(rc0: tuple[int, int]) -> None:
    st.markdown(
        f"**Soft split 0.** The image is unfolded into {n0} overlapping 7×7 windows, one every 4 pixels "
        f"(padding 2): neighbouring windows share **{overlap_px('t2t.split0', g0)} pixels**, so an edge that "
        "crosses a window border is still whole in the next window. Each token is the 7×7×3 = 147 pixel "
        "values of its window, nothing more.")
    a, b = st.columns(2)
    with a:
        clickable(window_figure("t2t.split0", g0, rc0, "Red: window of the chosen token; blue: its 8 neighbours"),
                  "pick_split0", g0)
    with b:
        clickable(zoom_figure("t2t.split0", g0, rc0, "Zoomed in: green = pixels shared by windows"),
                  "zoom_split0", g0)
    index = rc0[0] * g0[1] + rc0[1]
    token = tr["t2t.split0"][0, index].reshape(3, 7, 7)  # channel-major (c, ki, kj), as nn.Unfold
    patch = (denormalize(token, lm.cfg["mean"], lm.cfg["std"]).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    p1, p2 = st.columns([1, 4])
    # a data URI (a few KB, lossless): an array would be a media file, one more request to the server on every move
    p1.image(figures.png_uri(np.repeat(np.repeat(patch, 20, axis=0), 20, axis=1)), width=140)
    p2.markdown(
        f"Token **#{index}** of `t2t.split0`, straight from the trace: its 147 numbers, un-normalised and laid "
        "back out as a 7×7 RGB window, are exactly the pixels inside the red box. (At the border, the window "
        "hangs over the zero padding, which shows as the dataset's mean colour.)")


def step_attention1(rc0: tuple[int, int]) -> None:
    kind = tr.lazy["t2t.attn1_map"].kind
    how = ("This is a **Performer**: it never forms the full "
           f"{n0}×{n0} attention matrix. The row shown is its implicit attention "
           "φ(q)·φ(k) / Σ φ(q)·φ(k), computed from the random features kept in the trace."
           if kind == "performer" else "This is softmax attention, one row of the full matrix.")
    st.markdown(
        f"**T2T attention 1 (re-structurization).** One transformer layer over the {n0} tokens lets each token "
        f"gather information from others. Left: where the chosen query token looks. {how} Right: the output, "
        f"{n0} tokens of 64 numbers, **reshaped back into a 2-D map**: each tile is one of the 64 channels on "
        f"the {g0[0]}×{g0[1]} grid.")
    attention_columns(1, g0, rc0)


def attention_columns(level: int, grid: tuple[int, int], rc0: tuple[int, int]) -> None:
    """T2T attention `level`: the chosen token's attention (left), the output as a 2-D map (right)."""
    a, b = st.columns(2)
    with a:
        attention_figure(f"t2t.attn{level}_map", grid, on(grid, rc0), "Attention of the chosen token (green box)",
                         f"pick_attn{level}")
    with b:
        channel_mosaic(f"t2t.attn{level}", grid, 64, f"t2t.attn{level} as a 2-D map: 64 channels, "
                       f"{grid[0]}×{grid[1]}", key=f"mosaic_attn{level}", rc0=rc0)


def step_split(level: int, rc0: tuple[int, int]) -> None:
    name_in, grid_in, grid_out = ("t2t.attn1", g0, g1) if level == 1 else ("t2t.attn2", g1, g2)
    rc = on(grid_out, rc0)
    stage = f"t2t.split{level}"
    n_in, n_out = grid_in[0] * grid_in[1], grid_out[0] * grid_out[1]
    box = t2t.receptive_field(model, stage, rc, size)
    st.markdown(
        f"**Soft split {level}.** The {n_in} tokens, laid out as a {grid_in[0]}×{grid_in[1]} map, are split "
        f"again into 3×3 neighbourhoods with stride 2: {n_in} → **{n_out} tokens** of 9×64 = 576 numbers. "
        f"Left: the map being split (colour: each token's length) with the 3×3 window of the chosen token. "
        f"Right: the pixels that window reaches back to — {box[2] - box[0]}×{box[3] - box[1]} px, overlapping "
        f"its neighbours by {overlap_px(stage, grid_out)} px.")
    a, b = st.columns(2)
    with a:
        clickable(map_window_figure(name_in, grid_in, grid_out, rc,
                                    f"{grid_in[0]}×{grid_in[1]} map → {grid_out[0]}×{grid_out[1]} tokens"),
                  f"pick_map{level}", grid_out)
    with b:
        clickable(window_figure(stage, grid_out, rc, "The same windows in pixels"), f"pick_split{level}", grid_out)


def step_attention2(rc0: tuple[int, int]) -> None:
    st.markdown(
        f"**T2T attention 2.** The same kind of layer on the {n1} tokens of soft split 1: a query now looks "
        f"over a {g1[0]}×{g1[1]} grid. Right: its output reshaped to a 2-D map (64 channels).")
    attention_columns(2, g1, rc0)


def step_projection(rc0: tuple[int, int]) -> None:
    p = vm.model.patch_embed.patch_size
    (vr, vc), (r2, c2) = on(vgrid, rc0), on(g2, rc0)
    box = t2t.receptive_field(model, "t2t.project", (r2, c2), size)
    t_mid = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    v_box = figures.cell_box(vr, vc, vgrid, size)
    v_mid = ((v_box[0] + v_box[2]) / 2, (v_box[1] + v_box[3]) / 2)
    st.markdown(
        f"**Projection, and ViT beside it.** A linear layer maps each of the {n2} tokens to the backbone width "
        f"({tr.shape('t2t.project')[2]}). Left: the {box[2] - box[0]}×{box[3] - box[1]} px windows of the chosen "
        f"backbone token and its neighbours, overlapping by {overlap_px('t2t.project', g2)} px. Right: ViT's "
        f"hard split into {vgrid[0] * vgrid[1]} non-overlapping {p}×{p} patches: neighbours only touch. "
        f"(Token ({r2}, {c2}) of T2T-ViT is centred at pixel ({t_mid[0]:g}, {t_mid[1]:g}), ViT's patch "
        f"({vr}, {vc}) at ({v_mid[0]:g}, {v_mid[1]:g}): same grid, shifted windows.)")
    a, b = st.columns(2)
    with a:
        clickable(window_figure("t2t.project", g2, (r2, c2), f"T2T-ViT: {n2} overlapping tokens"), "pick_proj", g2)
    with b:
        fig = figures.image_spec(uri if vm.img_size == lm.img_size else None, size,
                                 title=f"ViT: {vgrid[0] * vgrid[1]} hard {p}×{p} patches")
        figures.add_grid_lines(fig, vgrid, size, color="rgba(255,255,255,0.7)")
        near = [figures.cell_box(*n, vgrid, size) for n in figures.neighbours(vr, vc, vgrid)]
        figures.add_boxes(fig, near, figures.NEIGHBOUR, width=1.5, dash="dot")
        figures.add_chosen(fig, figures.cell_box(vr, vc, vgrid, size), size, 420)
        clickable(figures.add_token_picker(fig, vgrid, size), "pick_vit", vgrid)
    a, b = st.columns(2)
    with a:
        channel_mosaic("t2t.project", g2, 64, "T2T-ViT tokens entering the backbone: 64 channels",
                       key="mosaic_proj", rc0=rc0)
    with b:
        channel_mosaic("patch_embed", vgrid, 64, "ViT tokens entering the backbone: 64 channels", key="mosaic_vit",
                       rc0=rc0, trace=vtr, owner=vm)
    smooth = {owner.role: compute.neighbour_correlation(ctx, owner, name, grid)
              for owner, name, grid in ((lm, "t2t.project", g2), (vm, "patch_embed", vgrid))}
    t, v = smooth[lm.role], smooth[vm.role]
    st.caption("Each tile is one channel of the tokens on the token grid (min–max scaled per tile). Compare how "
               "smoothly each channel changes from a token to its neighbour: T2T-ViT's tokens overlap and have been "
               "mixed by two attention layers, ViT embeds each patch on its own. On this image, neighbouring tokens "
               f"correlate {t:.2f} in T2T-ViT's channels and {v:.2f} in ViT's (mean over channels, right and down "
               f"neighbours): {'smoother for T2T-ViT' if t > v else 'not smoother for T2T-ViT here'}.")


STEPS = {
    "1 · Soft split 0": step_split0,
    "2 · T2T attention 1": step_attention1,
    "3 · Soft split 1": lambda rc0: step_split(1, rc0),
    "4 · T2T attention 2": step_attention2,
    "5 · Soft split 2": lambda rc0: step_split(2, rc0),
    "6 · Projection vs ViT": step_projection,
}


def write_view_to_url() -> None:
    """The view in the address bar after a move in the fragment: a fragment rerun skips main.py, which writes
    it after full runs. Not in a session's first run with a link (main.py's notices quote the link's own
    values first) nor on a guided tour's address (?tour=..., kept for the tour's step by main.py)."""
    if not links.link_pending() and "tour" not in st.query_params:
        links.write_to_url("tokens")


@st.fragment
def chosen_token_and_steps() -> None:
    """The sliders of the chosen token (set also by clicking any figure), the step, and the step's figures:
    a move here reruns this function only."""
    for key, limit in (("tok_row", g0[0]), ("tok_col", g0[1])):
        st.session_state[key] = min(int(st.session_state.get(key, limit // 2)), limit - 1)
    st.subheader("Choose a token")
    s1, s2 = st.columns(2)
    r0 = s1.slider(f"token row on the {g0[0]}×{g0[1]} grid of soft split 0", 0, g0[0] - 1, key="tok_row")
    c0 = s2.slider(f"token column on the {g0[0]}×{g0[1]} grid of soft split 0", 0, g0[1] - 1, key="tok_col")
    (r1, c1), (r2, c2) = on(g1, (r0, c0)), on(g2, (r0, c0))
    st.caption(f"Chosen: token ({r0}, {c0}) of soft split 0 → token ({r1}, {c1}) of soft split 1 → "
               f"token ({r2}, {c2}) of soft split 2 (the backbone). Click a token on a picture to move it.")
    st.subheader("The steps")
    choice = st.radio("Step", [*STEPS, "All steps"], horizontal=True, key="t2t_step", label_visibility="collapsed")
    for title, draw in STEPS.items():
        if choice in (title, "All steps"):
            if choice == "All steps":
                st.markdown(f"#### {title}")
            draw((r0, c0))
    write_view_to_url()


chosen_token_and_steps()
