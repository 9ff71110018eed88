"""Page 4: the T2T-ViT paper's Fig. 2 view (channel grids, invalid channels), redundancy across depth, CKA."""

from __future__ import annotations

import numpy as np
import streamlit as st

from analysis.redundancy import feature_maps, invalid_channels
from app import _state as S
from app import components as C

ctx = S.context()
st.header("Feature richness: how much do the channels carry?")
C.explain_text(
    "The T2T-ViT paper (Fig. 2) lays each **channel** of a block's tokens out on the token grid, like the "
    "feature maps of a CNN. In ViT many such maps are blank or nearly constant (**invalid**, marked with a red "
    "frame here) and many look alike (**redundant**); T2T-ViT's maps show more edges and local structure. "
    "Below the maps, numbers for every block: the share of invalid channels, how correlated the channels are, "
    "the **effective rank** (how many independent directions the features use) and the share of fine detail "
    "(high spatial frequency). At the bottom, **CKA** compares the two models block by block: 1 means two "
    "blocks represent images the same way. Look for: fewer red frames and a higher rank for T2T-ViT."
)

a, b, c = st.columns(3)
count = a.select_slider("Channels shown", [16, 36, 64, 100], value=36, key="fr_channels")
threshold = b.slider("Invalid below (× the layer's typical spread)", 0.02, 0.5, 0.1, 0.01, key="fr_threshold",
                     help="A channel is invalid when its spatial standard deviation is below this fraction of the "
                     "root-mean-square spread of all channels in the block.")
blocks: dict[str, int] = {}
with c:
    for lm in ctx.models:
        blocks[lm.role] = st.slider(f"{lm.role} block", 0, lm.num_blocks - 1, 0, key=f"fr_block_{lm.role}")

cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    tr = ctx.trace(lm)
    grid = tr.grid("blocks.0")
    blk = blocks[lm.role]
    maps_t = feature_maps(tr[f"blocks.{blk}"], grid)  # (1, D, h, w)
    invalid = S.to_numpy(invalid_channels(maps_t, threshold)[0]).astype(bool)
    maps = S.to_numpy(maps_t[0])
    shown = maps[:count]
    marked = [i for i in range(len(shown)) if invalid[i]]
    ncols = int(np.ceil(np.sqrt(count)))
    with col:
        fig = C.mosaic_figure(shown, ncols, marked=marked, cmap="gray", height=460,
                              title=f"{lm.role} {lm.name}, block {blk}: first {len(shown)} of {maps.shape[0]} channels")
        C.show(fig, key=f"fr_mosaic_{lm.role}")
        st.metric(f"Invalid channels in block {blk} (red frames)",
                  f"{invalid.sum()} of {invalid.size} ({invalid.mean():.0%})")

st.subheader("Across depth")
metrics = {lm.role: S.redundancy(ctx, lm, threshold) for lm in ctx.models}
colours = {ctx.t2t.role: C.T2T_COLOUR, ctx.vit.role: C.VIT_COLOUR}
labels = {lm.role: f"{lm.role} ({lm.name})" for lm in ctx.models}
titles = {
    "invalid_fraction": ("Invalid channels (lower = richer)", "fraction"),
    "mean_abs_corr": ("Mean |correlation| between channels (lower = less redundant)", "|r|"),
    "effective_rank": ("Effective rank of the tokens (higher = more directions)", "rank"),
    "high_freq_fraction": ("Share of fine detail (high spatial frequency)", "fraction"),
}
row1, row2 = st.columns(2), st.columns(2)
for slot, (metric, (title, ytitle)) in zip([*row1, *row2], titles.items(), strict=True):
    with slot:
        series = {labels[r]: (m[metric], colours[r]) for r, m in metrics.items()}
        fixed = (0.0, 1.0) if metric in ("invalid_fraction", "mean_abs_corr") else None
        C.show(C.depth_figure(series, title, ytitle, yrange=fixed), key=f"fr_{metric}")
st.caption("Computed on the chosen image. x is relative depth, so a 7-block and a 12-block model line up.")

st.subheader("CKA: do the two models' blocks represent images alike?")
k1, k2, k3 = st.columns(3)
n_images = k1.select_slider("Synthetic test images", [8, 16, 32, 64], value=16, key="cka_n")
reduce = k2.selectbox("Token features", ["mean", "cls", "patches"], key="cka_reduce",
                      format_func={"mean": "mean of the patch tokens", "cls": "class token",
                                   "patches": "all patch tokens (spatial)"}.__getitem__)
run_cka = k3.toggle("Compute CKA", value=ctx.device.startswith("cuda"), key="cka_on",
                    help="Runs both models on a batch of synthetic images: a few seconds on a CPU. "
                    "Does not depend on the chosen image, so it is computed once per model pair.")
if run_cka:
    values = S.cka(ctx.t2t, ctx.vit, int(n_images), reduce)
    C.show(C.matrix_figure(values, f"{ctx.vit.role} block", f"{ctx.t2t.role} block",
                           f"Linear CKA over {n_images} synthetic images"),
           key="cka_matrix")
    st.caption("Bright cells pair blocks that represent the images alike. A bright diagonal band means the two "
               "models build their features in the same order; a bright top-left block would mean T2T-ViT's "
               "first blocks already compute what ViT computes later.")
else:
    st.caption("Switch on *Compute CKA* to compare the blocks of the two models.")
