"""Page 2: the attention of any block and head of either model, and its statistics over heads and depth.

The model, block, head and query widgets and everything they change are one `st.fragment`: a move reruns
that part only, not the sidebar or the rest of the app (issue 29); the closing paragraph, which reads both
models whatever is chosen, is drawn by full runs only. Figures are specs of plain dicts (app/figures.py): a
move builds the chosen map anew without plotly's validation, and the charts it leaves as they were are not
built again (`reused`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.maps import keep_mass
from app import charts, compute, figures, links, widgets

ctx = compute.context()

st.header("Attention explorer")
widgets.explain_text(
    "In every block of the backbone, each token (the *query*) takes a weighted average of all tokens; the "
    "weights are its **attention**. A block has several **heads**, each with its own weights. Pick a model, a "
    "block and a head, then **click a token on the image** to see where it looks (or look from the class "
    "token, whose output the classifier reads). The thumbnail grid shows the same query in every block "
    "(rows) and head (columns): click a thumbnail to open it. Below, two numbers per head: the **mean "
    "attention distance** (how far, in pixels, a head looks on average; small = local like a convolution) and "
    "the **entropy** (low = focused on few tokens, high = spread out). Compare the two models' dots at the "
    "left of the distance chart (the first blocks): the section below says what they show on this image."
)
profiles = {m.role: compute.attention_profile(ctx, m) for m in ctx.models}  # each (blocks, heads): distance, entropy


def reused(chart_key: str, signature: tuple, build: Callable[[], go.Figure | figures.Spec]) -> figures.Spec:
    """The spec this session last built for `chart_key` if `signature` (everything it shows) is the same, else
    `build()`'s, as a spec. A block move with the mean of heads leaves the blocks x heads grid and both per-head
    charts as they were: building them again cost about 0.1 s each on the shared 2-core machine. One spec per
    chart is kept (the session's last); `widgets.show` styles a copy of it and never changes it."""
    store = st.session_state.setdefault("_att_figures", {})
    kept = store.get(chart_key)
    if kept is None or kept[0] != signature:
        built = build()
        kept = store[chart_key] = (signature, built.to_dict() if isinstance(built, go.Figure) else built)
    return kept[1]


def write_view_to_url() -> None:
    """The view in the address bar after a move in the fragment: a fragment rerun skips main.py, which writes
    it after full runs. Not in a session's first run with a link (main.py's notices quote the link's own
    values first) nor on a guided tour's address (?tour=..., kept for the tour's step by main.py)."""
    if not links.link_pending() and "tour" not in st.query_params:
        links.write_to_url("attention")


@st.fragment
def chosen_view() -> None:
    """Model, block, head and query, the maps they pick, and the chosen head among all heads' distance and
    entropy: a move here reruns this function only."""
    roles = {lm.role: lm for lm in ctx.models}
    role = st.radio("Model", list(roles), horizontal=True, key="att_model",
                    format_func=lambda r: f"{r}: {roles[r].label}")
    lm = roles[role]
    tr = ctx.trace(lm)
    grid = tr.grid("blocks.0")
    size = tuple(tr.image_size)
    nb, nh = lm.num_blocks, lm.num_heads

    defaults = (("att_block", nb, 0), ("att_row", grid[0], grid[0] // 2), ("att_col", grid[1], grid[1] // 2))
    for key, limit, default in defaults:
        st.session_state[key] = min(int(st.session_state.get(key, default)), limit - 1)
    if st.session_state.get("att_head", "mean") not in ["mean", *range(nh)]:
        st.session_state["att_head"] = "mean"

    a, b, c = st.columns([2, 2, 3])
    block = a.slider("Block", 0, nb - 1, key="att_block", format="%d", help="0 = first block")
    head = b.selectbox("Head", ["mean", *range(nh)], key="att_head",
                       format_func=lambda h: "mean of all heads" if h == "mean" else f"head {h}")
    with c:
        use_cls = st.toggle("Query: the class token", key="att_cls",
                            help="The classifier reads the class token; its attention shows what feeds the decision.")
        top60 = st.toggle("Keep only the tokens holding 60% of the attention", key="att_top60")
    q1, q2 = st.columns(2)
    row = q1.slider("Query token row", 0, grid[0] - 1, key="att_row", disabled=use_cls)
    col = q2.slider("Query token column", 0, grid[1] - 1, key="att_col", disabled=use_cls)
    query = 0 if use_cls else 1 + row * grid[1] + col  # the class token is token 0

    maps, on_cls = compute.query_attention(ctx, lm, query)  # (L, H, h, w) over the patches, (L, H) on the class
    shown = maps[block].mean(axis=0) if head == "mean" else maps[block, head]
    to_cls = on_cls[block].mean() if head == "mean" else on_cls[block, head]
    if top60:
        shown = keep_mass(shown[None])[0]
        maps = keep_mass(maps)

    left, right = st.columns(2)
    with left:
        uri = figures.cached_png_uri(f"{lm.key}|{ctx.image.key}", ctx.display_image(lm))
        who = "the class token" if use_cls else f"token ({row}, {col})"
        what = "mean of heads" if head == "mean" else f"head {head}"
        fig = figures.image_spec(uri, size, title=f"{lm.name}: block {block}, {what}, query {who}")
        figures.add_log_heatmap(fig, shown * shown.size, size, "× uniform", floor=1e-2 if not top60 else 1e-1)
        if not use_cls:
            figures.add_chosen(fig, figures.cell_box(row, col, grid, size), size, 420, color="#00e676")
        figures.add_token_picker(fig, grid, size)
        widgets.show(fig, key="att_pick", on_select=widgets.pick_callback("att_pick", "att_row", "att_col", grid,
                                                                          grid, unset_key="att_cls"))
        st.caption(f"Attention this query gives the class token: {to_cls:.1%}. The rest is spread over the "
                   f"{grid[0] * grid[1]} patch tokens shown.")
    with right:
        highlight = None if head == "mean" else block * nh + head
        fig = reused("att_tiles", (lm.key, ctx.image.key, query, top60, highlight), lambda: charts.mosaic_spec(
            maps.reshape(nb * nh, *grid), nh, cmap="inferno", title="Block (rows) × head (columns)",
            row_labels=[f"block {b}" for b in range(nb)], col_labels=[f"h{h}" for h in range(nh)], pickable=True,
            hover_names=[f"block {i // nh}, head {i % nh}" for i in range(nb * nh)], highlight=highlight,
            height=520))
        widgets.show(fig, key="att_tiles", on_select=widgets.tile_callback(
            "att_tiles", nb * nh, block_head_keys=("att_block", "att_head"), heads=nh))

    st.subheader("Where each head looks: distance and entropy")
    own = profiles[role]
    dist = own["distance"][block].mean() if head == "mean" else own["distance"][block, head]
    ent = own["entropy"][block].mean() if head == "mean" else own["entropy"][block, head]
    k1, k2, k3 = st.columns(3)
    k1.metric("Mean attention distance", f"{dist:.1f} px",
              help=f"Block {block}, {'mean of heads' if head == 'mean' else f'head {head}'}: the attention-weighted "
              "distance from the query to the tokens it looks at, averaged over queries.")
    k2.metric("Attention entropy", f"{ent:.2f} nats", help=f"uniform over all {1 + grid[0] * grid[1]} tokens: "
              f"{np.log(1 + grid[0] * grid[1]):.2f} nats")
    k3.metric("Image side", f"{size[1]} px", help="for scale: the largest possible distance is the diagonal")
    colours = {ctx.t2t.role: figures.T2T_COLOUR, ctx.vit.role: figures.VIT_COLOUR}
    mark = None if head == "mean" else (f"{role}", block, int(head))
    shown_for = (tuple(m.key for m in ctx.models), ctx.image.key, mark)  # what both per-head charts show
    d1, d2 = st.columns(2)
    with d1:
        widgets.show(reused("att_distance", shown_for, lambda: charts.head_scatter(
            {r: (p["distance"], colours[r]) for r, p in profiles.items()}, "Mean attention distance per head",
            "pixels", highlight=mark)), key="att_distance")
    with d2:
        widgets.show(reused("att_entropy", shown_for, lambda: charts.head_scatter(
            {r: (p["entropy"], colours[r]) for r, p in profiles.items()}, "Attention entropy per head", "nats",
            highlight=mark)), key="att_entropy")
    st.caption("One dot per head; x is the block's relative depth so the two models line up. The ringed dot is the "
               "head chosen above. Distances are between token centres, 16 px apart for both models at 224 px.")
    write_view_to_url()


chosen_view()

even = {m.role: compute.even_spread_distance(ctx, m) for m in ctx.models}
lines = []
for m in ctx.models:
    d = profiles[m.role]["distance"]  # (L, H)
    early = d[: max(1, int(np.ceil(d.shape[0] / 3)))]
    lines.append(f"**{m.role}**: every head between {d.min():.0f} and {d.max():.0f} px; the most local head of the "
                 f"first {early.shape[0]} blocks averages {early.min():.0f} px (even spread: {even[m.role]:.0f} px)")
local = {m.role: profiles[m.role]["distance"][: max(1, int(np.ceil(m.num_blocks / 3)))].min() < even[m.role] / 2
         for m in ctx.models}
if local[ctx.vit.role]:
    verdict = (f"Here {ctx.vit.role}'s first blocks do have a head looking locally (under half the even-spread "
               "distance), as the ViT paper found.")
else:
    verdict = ("**Not visible with these models**: no head of either model looks locally (every mean distance is "
               "over half the even-spread distance).")
st.markdown(
    "**What the ViT paper reports, and what these models show.** ViT trained on large image sets has, in its "
    "first blocks, some heads that attend locally (Dosovitskiy et al., 2021, Fig. 7: mean distances of a few "
    "tens of pixels next to heads that look across the image), since its hard patches see no neighbours; "
    "T2T-ViT's soft split mixes local structure in before the first block. On this image: "
    + "; ".join(lines) + ". " + verdict)
