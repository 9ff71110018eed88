"""Page 4: the T2T-ViT paper's Fig. 2 view (channel grids, invalid channels), redundancy across depth, CKA."""

from __future__ import annotations

import numpy as np
import streamlit as st

from analysis.redundancy import METRICS
from app import charts, compute, figures, widgets

ctx = compute.context()
st.header("Feature richness: how much do the channels carry?")
widgets.explain_text(
    "The T2T-ViT paper (Fig. 2) lays each **channel** of a block's tokens out on the token grid, like the "
    "feature maps of a CNN, and reports that in ViT trained on ImageNet many such maps are blank or nearly "
    "constant (**invalid**, marked with a red frame here) and many look alike (**redundant**), while T2T-ViT's "
    "show more edges and local structure. Below the maps, numbers for every block: the share of invalid "
    "channels, how correlated the channels are, the **effective rank** (how many independent directions the "
    "features use) and the share of fine detail (high spatial frequency). At the bottom, **CKA** compares the "
    "two models block by block: 1 means two blocks represent images the same way. Compare the red frames and "
    "the curves of the two models; the line under the charts says what they show on this image."
)

a, b, c = st.columns(3)
st.session_state.setdefault("fr_channels", 36)
if st.session_state["fr_channels"] not in (16, 36, 64, 100):
    st.session_state["fr_channels"] = 36
count = a.select_slider("Channels shown", [16, 36, 64, 100], key="fr_channels")
st.session_state.setdefault("fr_threshold", 0.1)
st.session_state["fr_threshold"] = min(0.5, max(0.02, float(st.session_state["fr_threshold"])))
threshold = b.slider("Invalid below (× the layer's typical spread)", 0.02, 0.5, step=0.01, key="fr_threshold",
                     help="A channel is invalid when its spatial standard deviation is below this fraction of the "
                     "root-mean-square spread of all channels in the block.")
blocks: dict[str, int] = {}
with c:
    for lm in ctx.models:
        key = f"fr_block_{lm.role}"
        st.session_state[key] = min(max(0, int(st.session_state.get(key, 0))), lm.num_blocks - 1)
        blocks[lm.role] = st.slider(f"{lm.role} block", 0, lm.num_blocks - 1, key=key)

cols = st.columns(2)
shown_invalid: dict[str, tuple[int, int]] = {}
for col, lm in zip(cols, ctx.models, strict=True):
    blk = blocks[lm.role]
    maps, invalid = compute.block_channels(ctx, lm, blk, threshold)  # (D, h, w), (D,) bool
    shown_invalid[lm.role] = (int(invalid.sum()), int(invalid.size))
    shown = maps[:count]
    marked = [i for i in range(len(shown)) if invalid[i]]
    ncols = int(np.ceil(np.sqrt(count)))
    with col:
        fig = charts.mosaic_figure(shown, ncols, marked=marked, cmap="gray", height=460,
                              title=f"{lm.role} {lm.name}, block {blk}: first {len(shown)} of {maps.shape[0]} channels")
        widgets.show(fig, key=f"fr_mosaic_{lm.role}")
        st.metric(f"Invalid channels in block {blk} (red frames)",
                  f"{invalid.sum()} of {invalid.size} ({invalid.mean():.0%})")

st.subheader("Across depth")
# The exact effective rank (an eigendecomposition per block) is computed on demand (issue 11: it stays exact).
width = {lm.role: int(ctx.trace(lm)["blocks.0"].shape[-1]) for lm in ctx.models}
st.session_state.setdefault("fr_rank", max(lm.num_blocks * width[lm.role] for lm in ctx.models) <= 12 * 384)
with_rank = st.toggle("Exact effective rank", key="fr_rank",
                      help="The Roy-Vetterli effective rank, exact: one eigendecomposition per block. Quick for the "
                      "small models; for large ones switch it on when you want it.")
wanted = tuple(k for k in METRICS if k != "effective_rank" or with_rank)
metrics = {lm.role: compute.block_metrics(ctx, lm, threshold, wanted) for lm in ctx.models}
colours = {ctx.t2t.role: figures.T2T_COLOUR, ctx.vit.role: figures.VIT_COLOUR}
labels = {lm.role: f"{lm.role} ({lm.name})" for lm in ctx.models}
titles = {
    "invalid_fraction": ("Invalid channels (lower = richer)", "fraction"),
    "mean_abs_corr": ("Mean |correlation| between channels (lower = less redundant)", "|r|"),
    "effective_rank": ("Effective rank of the tokens (higher = more directions)", "rank"),
    "high_freq_fraction": ("Share of fine detail (high spatial frequency)", "fraction"),
}
shown_titles = {k: v for k, v in titles.items() if k in wanted}
for start in range(0, len(shown_titles), 2):
    for slot, (metric, (title, ytitle)) in zip(st.columns(2), list(shown_titles.items())[start:start + 2]):
        with slot:
            series = {labels[r]: (m[metric], colours[r]) for r, m in metrics.items()}
            fixed = (0.0, 1.0) if metric in ("invalid_fraction", "mean_abs_corr") else None
            widgets.show(charts.depth_figure(series, title, ytitle, yrange=fixed), key=f"fr_{metric}")


def above_at(metric: str) -> tuple[int, int]:
    """At how many of 11 evenly spaced relative depths T2T-ViT's curve is above ViT's (interpolated)."""
    xs = np.linspace(0, 1, 11)
    t, v = (np.interp(xs, np.linspace(0, 1, len(metrics[r][metric])), metrics[r][metric])
            for r in (ctx.t2t.role, ctx.vit.role))
    return int((t > v).sum()), len(xs)


tr_, vr_ = ctx.t2t.role, ctx.vit.role
inv = {r: metrics[r]["invalid_fraction"] for r in metrics}
facts = [f"at threshold {threshold:g}, {tr_} has {shown_invalid[tr_][0]} of {shown_invalid[tr_][1]} invalid channels "
         f"in block {blocks[tr_]} and {vr_} {shown_invalid[vr_][0]} of {shown_invalid[vr_][1]} in block {blocks[vr_]} "
         f"(over all blocks: {tr_} {inv[tr_].mean():.0%}, {vr_} {inv[vr_].mean():.0%})"]
if with_rank:
    n_above, n = above_at("effective_rank")
    facts.append(f"{tr_}'s effective rank is above {vr_}'s at {n_above} of {n} relative depths (means "
                 f"{metrics[tr_]['effective_rank'].mean():.0f} of {width[tr_]} channels vs "
                 f"{metrics[vr_]['effective_rank'].mean():.0f} of {width[vr_]})")
n_detail, n = above_at("high_freq_fraction")
facts.append(f"{tr_}'s share of fine detail is above {vr_}'s at {n_detail} of {n} relative depths"
             + ("" if n_detail > n // 2 else " (the paper's 'more edges and local structure' for T2T-ViT is not "
                "what this number shows here)"))
fewer = inv[tr_].mean() < inv[vr_].mean()
claim = ("**As the paper reports, T2T-ViT has the fewer invalid channels here.**" if fewer else
         "**The paper's claim (many more invalid channels in ViT) is not visible with these models**: "
         + ("neither has any at this threshold" if inv[tr_].max() == 0 and inv[vr_].max() == 0 else
            f"{vr_} does not have more than {tr_}") + ". The paper's Fig. 2 shows ViT-L/16 trained on ImageNet.")
st.markdown("**On this image:** " + "; ".join(facts) + ". " + claim)
st.caption("Computed on the chosen image. x is relative depth, so a 7-block and a 12-block model line up.")

st.subheader("CKA: do the two models' blocks represent images alike?")
k1, k2, k3 = st.columns(3)
st.session_state.setdefault("cka_n", 16)
if st.session_state["cka_n"] not in (8, 16, 32, 64):
    st.session_state["cka_n"] = 16
n_images = k1.select_slider("Synthetic test images", [8, 16, 32, 64], key="cka_n")
reduce = k2.selectbox("Token features", ["mean", "cls", "patches"], key="cka_reduce",
                      format_func={"mean": "mean of the patch tokens", "cls": "class token",
                                   "patches": "all patch tokens (spatial)"}.__getitem__)
st.session_state.setdefault("cka_on", ctx.device.startswith("cuda"))
run_cka = k3.toggle("Compute CKA", key="cka_on",
                    help="Runs both models on a batch of synthetic images: a few seconds on a CPU. "
                    "Does not depend on the chosen image, so it is computed once per model pair.")
if run_cka:
    values = compute.cka(ctx.t2t, ctx.vit, int(n_images), reduce)  # None while it runs: a progress bar instead
    if values is not None:
        widgets.show(charts.matrix_figure(values, f"{ctx.vit.role} block", f"{ctx.t2t.role} block",
                               f"Linear CKA over {n_images} synthetic images"),
               key="cka_matrix")
        st.caption("Bright cells pair blocks that represent the images alike. A bright diagonal band means the two "
                   "models build their features in the same order; a bright top-left block would mean T2T-ViT's "
                   "first blocks already compute what ViT computes later.")
else:
    st.caption("Switch on *Compute CKA* to compare the blocks of the two models.")
