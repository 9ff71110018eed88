"""Page 4: the T2T-ViT paper's Fig. 2 view (channel grids, invalid channels), the same figure as the official
notebook draws it (analysis/paper_fig2.py), redundancy across depth, CKA."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st
import torch
from PIL import Image

from analysis.paper_fig2 import NOTEBOOK_CHANNELS, invalid_summary, notebook_image, paper_feature_maps
from analysis.redundancy import METRICS
from app import charts, compute, figures, widgets
from app.device import guarded
from app.jobs import CACHE, memo
from app.models import LoadedModel

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

# --- Fig. 2 as the official notebook draws it (analysis/paper_fig2.py) ------------------------------------------
FIG2_SIZES = {224: "224 px", 512: "512 px (the notebook's)", 1024: "1024 px (its comment's; a few seconds)"}
FIG2_DEPTHS = {0: "patch embedding / T2T module (layer_0, layer_1)", 1: "block 1 (layer_2)",
               2: "block 2 (layer_3)", 3: "block 3 (layer_4)"}
FIG2_INPUTS = {"notebook": "neither (the notebook's)", "model": "both, the table made for this size (ours)"}


@memo
def _fig2_notebook_maps(model_key: str, image_key: str, size: int, depth: int, inputs: str, _lm: LoadedModel,
                        _img: Image.Image) -> tuple[np.ndarray, float]:
    """(D, size/16, size/16) channel maps by the notebook's protocol, and the seconds they took."""
    start = time.perf_counter()
    x = notebook_image(_img, size).to(_lm.device)
    table = "none" if inputs == "notebook" else "sinusoid" if _lm.family == "t2t" else "interpolated"
    maps = paper_feature_maps(_lm.model, x, depth, table, class_token=inputs == "model")
    return maps[0].float().cpu().numpy(), time.perf_counter() - start


def fig2_notebook_maps(lm: LoadedModel, size: int, depth: int, inputs: str) -> tuple[np.ndarray, float]:
    args = (lm.key, ctx.image.key, size, depth, inputs, lm, ctx.image.image)
    if _fig2_notebook_maps.key_of(*args) in CACHE:  # type: ignore[attr-defined]
        return _fig2_notebook_maps(*args)
    with st.spinner(f"Running {lm.role} at {size} px …"):
        return guarded(_fig2_notebook_maps, *args)


@st.fragment
def fig2_as_the_notebook_draws_it(threshold: float) -> None:
    """The official notebook's protocol for both models: its controls rerun this part only."""
    st.subheader("Fig. 2 as the official notebook draws it")
    st.markdown(
        "The authors' only code for this figure is `visualization_vit.ipynb` in the official repository, for ViT.\n"
        "- **The notebook's steps**: the whole image squeezed to a square (bilinear, no crop), pixels in [0, 1] "
        "(no mean / std); the patch embedding, then the blocks, **with no class token and no position "
        "embedding**; each channel of the tokens laid out on the token grid; the **first 36 channels**, each in "
        "grey from its own minimum to its own maximum. It ran ViT-L/16 at 512 px (its comment: 1024 or 2048 px "
        "for sharper maps).\n"
        "- **Ours**: the same steps for T2T-ViT (its T2T module in place of the patch embedding), the models of "
        "the sidebar, the other sizes, the class token and position table put back on request (T2T-ViT: the "
        "sinusoid table made for the size; ViT: its learned table resized bicubically, as timm does), and the "
        "red frames and counts of invalid channels (the threshold above; the notebook marks none)."
    )
    for key, options, default in (("fr_nb_size", FIG2_SIZES, 512), ("fr_nb_depth", FIG2_DEPTHS, 1),
                                  ("fr_nb_inputs", FIG2_INPUTS, "notebook")):
        if st.session_state.get(key) not in options:
            st.session_state[key] = default
    a, b, c = st.columns(3)
    size = a.radio("Image size", list(FIG2_SIZES), format_func=FIG2_SIZES.__getitem__, key="fr_nb_size",
                   help="Any multiple of 16 works (analysis.paper_fig2); 1024 px takes a few seconds on a CPU for "
                   "the embedded models, longer for large ones.")
    depth = b.radio("Tokens after", list(FIG2_DEPTHS), format_func=FIG2_DEPTHS.__getitem__, key="fr_nb_depth",
                    help="The notebook saves five figures, layer_0 to layer_4: the patch embedding twice (before "
                    "and after its dropout, the same tensor), then blocks 1 to 3.")
    inputs = c.radio("Class token and position embedding", list(FIG2_INPUTS), format_func=FIG2_INPUTS.__getitem__,
                     key="fr_nb_inputs", help="Both put back is the model as it runs. The table: T2T-ViT's fixed "
                     "sinusoid made for this size; ViT's learned table resized bicubically (as timm does).")
    counts: dict[str, tuple[int, int]] = {}
    for col, lm in zip(st.columns(2), ctx.models, strict=True):
        maps, seconds = fig2_notebook_maps(lm, int(size), int(depth), inputs)  # (D, h, w)
        summary = invalid_summary(torch.from_numpy(maps)[None], NOTEBOOK_CHANNELS, threshold)
        invalid = summary["invalid"][0].numpy()
        shown = maps[:NOTEBOOK_CHANNELS]
        counts[lm.role] = (int(summary["count"][0]), maps.shape[0])
        stage = f"block {depth}" if depth else "T2T module" if lm.family == "t2t" else "patch embedding"
        with col:
            fig = charts.mosaic_figure(
                shown, 6, marked=[i for i in range(len(shown)) if invalid[i]], cmap="gray", height=460,
                title=f"{lm.role} {lm.name}, {stage}<br>{size} px, first {len(shown)} of {maps.shape[0]} channels, "
                      f"{maps.shape[1]}×{maps.shape[2]} tokens")
            widgets.show(fig, key=f"fr_nb_mosaic_{lm.role}")
            st.metric("Invalid channels on these maps", f"{counts[lm.role][0]} of {maps.shape[0]} "
                      f"({float(summary['fraction'][0]):.0%})")
            st.caption(f"{int(summary['shown_count'][0])} of the {len(shown)} shown (red frames). Computed in "
                       f"{seconds:.1f} s on {lm.device}, kept for this image.")
    tr_, vr_ = ctx.t2t.role, ctx.vit.role
    fewer = counts[tr_][0] / counts[tr_][1] < counts[vr_][0] / counts[vr_][1]
    protocol = "by the notebook's protocol" if inputs == "notebook" else "with the class token and table (ours)"
    st.markdown(
        f"**The paper's claim** (its Fig. 2: ViT-L/16 and T2T-ViT-24 trained on ImageNet): many of ViT's maps are "
        f"invalid, fewer of T2T-ViT's. **On this image, {protocol}** at threshold {threshold:g}: "
        f"{tr_} has {counts[tr_][0]} of {counts[tr_][1]} invalid channels, {vr_} {counts[vr_][0]} of "
        f"{counts[vr_][1]}: " + ("T2T-ViT has the smaller share, as the paper says." if fewer else
                                 "neither has any, so the claim cannot show here." if not any(
                                     n for n, _ in counts.values()) else
                                 "T2T-ViT does not have the smaller share here.")
    )


fig2_as_the_notebook_draws_it(threshold)

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
