"""Page 7: the soft-split sandbox (issue 29): choose the kernel, stride and padding of T2T-ViT's three soft
splits and the image size, and see at once what they give: each stage's grid and token count, how much
neighbouring windows share, the window of one backbone token beside a ViT patch, the T2T attention cost,
the parameters and MACs of the sidebar's T2T-ViT built that way; "Try it" runs the current image through
it (random weights). The computations and figures are app/sandbox.py; everything below the header is one
`st.fragment`, so a control reruns this page's part only, not the sidebar.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

import t2t
from app import charts, compute, figures, jobs, links, sandbox, widgets
from app.sandbox import PAPER
from t2t.images import PreprocessSteps, preprocess_steps

URL_PATH = "sandbox"  # this page's st.Page url_path (main.py) and links.PAGE_PARAMS entry
SPLIT_KEYS = tuple(tuple(f"sb_{what}{i}" for what in "ksp") for i in range(3))  # kernel, stride, padding
SIZE_KEY, TRY_KEY = "sb_size", "sb_try"
STEPS = ("t2t.split0", "t2t.attn1", "t2t.split1", "t2t.attn2", "t2t.split2", "t2t.project")

ctx = compute.context()
lm, vm = ctx.t2t, ctx.vit
NAME = lm.name if lm.name in t2t.list_models("t2t") else "t2t_vit_7"  # the architecture built: the sidebar's
LO, HI = sandbox.IMAGE
DEFAULT_SIZE = min(HI, max(LO, lm.img_size // sandbox.IMAGE_STEP * sandbox.IMAGE_STEP))
PATCH = int(getattr(getattr(vm.model, "patch_embed", None), "patch_size", 16))

st.header("Soft-split sandbox")
widgets.explain_text(
    "T2T-ViT makes its tokens with three **soft splits**: windows of *kernel*×*kernel* cells, moved by a "
    "*stride*, over a map padded by *padding* on every side. The paper chose 7/4/2 for the image, then 3/2/1 "
    "twice. Change them (and the image size) and see at once how many tokens each stage makes, how much "
    "neighbouring windows **overlap**, how large a backbone token's window grows next to ViT's 16×16 patch, "
    "what the T2T attention costs (it grows with the **square** of the tokens) and what the whole model costs. "
    "A choice that gives no token, or leaves part of the image unseen, says why. **Try it** runs the image "
    "through a model built that way, with random weights: the shapes are real, the numbers are not trained."
)


@jobs.memo
def _input(model_key: str, image_key: str, size: int, _lm, _img) -> PreprocessSteps:
    """The current image at `size` px with the T2T-ViT's own transform (its mean, std and crop)."""
    return preprocess_steps(_img, _lm.cfg["mean"], _lm.cfg["std"], size, _lm.crop_pct)


@jobs.memo
def _tried(name: str, splits: sandbox.Splits, size: int, model_key: str, image_key: str, _x: torch.Tensor) -> dict:
    """One forward of `sandbox.random_model(name, splits, size)` on the image: each T2T step's grid, shape
    and token lengths (h, w) from the trace, and the logits' size."""
    model = sandbox.random_model(name, splits, size)
    with torch.no_grad():
        tr = t2t.trace(model, _x, attention=False)
    return {"grids": [tuple(tr.grid(n)) for n in STEPS], "shapes": [tuple(tr.shape(n)) for n in STEPS],
            "norms": [np.linalg.norm(figures.to_numpy(tr[n][0]), axis=1).reshape(tr.grid(n)) for n in STEPS],
            "blocks": tuple(tr.grid("blocks.0")), "classes": int(tr["logits"].shape[-1])}


def paper_values(size: int) -> dict[str, int]:
    """Session-state values of the paper's choice at `size` px (the button's on_click sets them)."""
    values = {key: v for keys, split in zip(SPLIT_KEYS, PAPER, strict=True) for key, v in zip(keys, split, strict=True)}
    return {**values, SIZE_KEY: size}


def clamp_state() -> None:
    """Defaults for controls not set yet; values from a link or an older run kept within the controls' ranges."""
    ranges = (sandbox.KERNEL, sandbox.STRIDE, sandbox.PADDING)
    for keys, split in zip(SPLIT_KEYS, PAPER, strict=True):
        for key, default, (lo, hi) in zip(keys, split, ranges, strict=True):
            st.session_state[key] = min(hi, max(lo, int(st.session_state.get(key, default))))
    size = int(st.session_state.get(SIZE_KEY, DEFAULT_SIZE))
    st.session_state[SIZE_KEY] = min(HI, max(LO, LO + (size - LO) // sandbox.IMAGE_STEP * sandbox.IMAGE_STEP))


def controls() -> tuple[sandbox.Splits, int]:
    """The number inputs: (kernel, stride, padding) of each soft split, the image side."""
    columns = st.columns(4)
    splits = []
    for i, (column, keys) in enumerate(zip(columns[:3], SPLIT_KEYS, strict=True)):
        with column:
            st.markdown(f"**Soft split {i}**" + (" (image)" if i == 0 else f" (map of split {i - 1})"))
            k = st.number_input("kernel (window side)", *sandbox.KERNEL, key=keys[0])
            s = st.number_input("stride", *sandbox.STRIDE, key=keys[1])
            p = st.number_input("padding", *sandbox.PADDING, key=keys[2])
            paper = PAPER[i]
            same = (k, s, p) == paper
            st.caption(f"the paper: {paper[0]} / {paper[1]} / {paper[2]}" + (" ✓" if same else ""))
            splits.append((int(k), int(s), int(p)))
    with columns[3]:
        st.markdown("**Image**")
        size = int(st.number_input("side (pixels)", LO, HI, step=sandbox.IMAGE_STEP, key=SIZE_KEY))
        st.button("The paper's choice", on_click=st.session_state.update, args=(paper_values(DEFAULT_SIZE),),
                  help=f"7/4/2, 3/2/1, 3/2/1 on a {DEFAULT_SIZE} px image", key="sb_paper")
        st.caption(f"Built as **{NAME}** (the sidebar's T2T-ViT): {lm.model.embed_dim} wide, "
                   f"{len(lm.model.blocks)} blocks.")
    return tuple(splits), size  # type: ignore[return-value]


def stage_table(box: sandbox.Sandbox) -> None:
    head = ("| step | kernel / stride / padding | cuts | (n + 2p − k) / s + 1 | grid | tokens | numbers per token "
            "| window (px) | shared with a neighbour |\n|---|---|---|---|---|---|---|---|---|")
    rows = []
    for st_ in box.stages:
        k, s, p = st_.split
        cuts = f"{st_.side_in}×{st_.side_in} " + ("image" if st_.index == 0 else f"map of split {st_.index - 1}")
        windows = f"{st_.exact:.6g}" + (f" → **{st_.grid}**" if st_.grid != st_.exact else "")
        if st_.grid == 0:
            rows.append(f"| soft split {st_.index} | {k} / {s} / {p} | {cuts} | {windows} | — | **0** | — | — | — |")
            continue
        shared = (f"{st_.overlap} px ({st_.overlap_share:.0%})" if st_.overlap >= 0 else
                  f"none: {-st_.overlap} px apart")
        paper = " (paper)" if st_.split == PAPER[st_.index] else ""
        rows.append(f"| soft split {st_.index}{paper} | {k} / {s} / {p} | {cuts} | {windows} | {st_.grid}×{st_.grid} "
                    f"| **{st_.tokens:,}** | {st_.width:,} | {st_.field}×{st_.field} | {shared} |")
    n = box.img_size
    g = (n - PATCH) // PATCH + 1
    rows.append(f"| ViT hard split | {PATCH} / {PATCH} / 0 | {n}×{n} image | {(n - PATCH) / PATCH + 1:.6g} | "
                f"{g}×{g} | **{g * g:,}** | {3 * PATCH * PATCH:,} | {PATCH}×{PATCH} | 0 px (0%) |")
    st.markdown(head + "\n" + "\n".join(rows))


def problems(box: sandbox.Sandbox) -> None:
    for problem in box.problems:
        if problem.level == "error":
            st.error(problem.text, icon=":material/block:")
        elif problem.level == "warning":
            st.warning(problem.text)
    infos = [p.text for p in box.problems if p.level == "info"]
    if infos:
        st.caption("**Whole windows?** CNN Explainer's check asks (n + 2p − k) / s + 1 to be a whole number of "
                   "windows; nn.Unfold rounds it down. " + " ".join(infos))


def costs(box: sandbox.Sandbox, paper: sandbox.Sandbox) -> tuple[int, int]:
    """Metrics: backbone tokens, parameters, GMACs, both T2T attention costs, each against the paper's splits
    at the same image size. Returns (parameters, MACs)."""
    params, macs = sandbox.model_cost(NAME, box.splits, box.img_size)
    p_params, p_macs = sandbox.model_cost(NAME, paper.splits, paper.img_size)
    same = box.is_paper

    def delta(now: float, then: float, text: str) -> str | None:
        return None if same else text.format(now - then) + (f" ({now / then:.2g}× the paper's)" if then else "")

    m = st.columns(5)
    m[0].metric("Backbone tokens", f"{box.backbone.tokens:,}",
                delta(box.backbone.tokens, paper.backbone.tokens, "{:+,}"), delta_color="off")
    m[1].metric("Parameters", f"{params / 1e6:.3f} M", delta(params, p_params, "{:+,}"), delta_color="off",
                help="every state-dict element, as `python -m t2t list` counts them")
    m[2].metric("GMACs (one image)", f"{macs / 1e9:.3f}", delta(macs / 1e9, p_macs / 1e9, "{:+.3f}"),
                delta_color="off", help="torch's FLOP counter / 2 on the meta device, as `python -m t2t list`")
    for i in range(2):
        now, then = sandbox.attention_cost(box.stages[i]), sandbox.attention_cost(paper.stages[i])
        m[3 + i].metric(f"T2T attention {i + 1} cost", sandbox.short(now),
                        None if same else f"{now / then:.3g}× the paper's", delta_color="off",
                        help=f"tokens² × {sandbox.TOKEN_DIM}: the multiply-adds of its attention scores q kᵀ")
    return params, macs


def pictures(box: sandbox.Sandbox, uri: str) -> None:
    """The windows of each stage on the image, two by two (four in a row were too small to read at 1280 px),
    the backbone token beside ViT's patch."""
    centre_box = sandbox.token_box(box, 2, (box.backbone.grid // 2, box.backbone.grid // 2))
    centre = ((centre_box[0] + centre_box[2]) / 2, (centre_box[1] + centre_box[3]) / 2)
    top, bottom = st.columns(2), st.columns(2)
    with top[0]:
        widgets.show(sandbox.window_figure(uri, box, 0), key="sb_window0")
    with top[1]:
        widgets.show(sandbox.window_figure(uri, box, 1), key="sb_window1")
    with bottom[0]:
        widgets.show(sandbox.window_figure(uri, box, 2), key="sb_window2")
    with bottom[1]:
        widgets.show(sandbox.vit_figure(uri, box.img_size, PATCH, centre), key="sb_vit")
    b = box.backbone
    st.caption(
        f"Red: the window of the token at the centre of each grid; dotted blue: its left and right neighbours'. "
        f"A backbone token of T2T-ViT is made of a {b.field}×{b.field} px window of the image (away from the "
        f"border), " + (f"sharing {b.overlap} px ({b.overlap_share:.0%}) with each neighbour" if b.overlap > 0 else
                        "sharing nothing with its neighbours") +
        f"; a ViT token is one {PATCH}×{PATCH} patch, sharing nothing. (Attention then mixes tokens: these are the "
        "pixels a token is *made of*, not all it can see.)")


def attention_words(box: sandbox.Sandbox, paper: sandbox.Sandbox) -> str:
    a1, a2 = box.stages[0], box.stages[1]
    cost, ratio = sandbox.attention_cost(a1), sandbox.attention_cost(a1) / sandbox.attention_cost(paper.stages[0])
    kind = t2t.get_config(NAME).args["tokens_type"]
    words = (f"T2T attention 1 attends over the {a1.tokens:,} tokens of soft split 0, T2T attention 2 over the "
             f"{a2.tokens:,} of soft split 1. As softmax attention its scores cost tokens² × "
             f"{sandbox.TOKEN_DIM} = {cost:,} multiply-adds in layer 1"
             + ("" if box.is_paper else f", {ratio:.3g}× the paper's") + " (attention × values as much again). ")
    if kind == "performer":
        words += (f"{NAME} uses the Performer, whose cost grows with tokens × {sandbox.TOKEN_DIM // 2} × "
                  f"{sandbox.TOKEN_DIM} instead: the reason the paper chose it for these long sequences.")
    else:
        words += f"{NAME} uses softmax attention in its T2T layers: it pays this."
    return words


def try_it(box: sandbox.Sandbox, steps: PreprocessSteps) -> None:
    on = st.toggle("**Try it**: run the current image through a model with this configuration", key=TRY_KEY)
    if not on:
        return
    why = sandbox.too_large_to_run(NAME, box)
    if why is not None:
        st.warning(f"Not run: {why}. Make the grids smaller (larger strides or kernels, or a smaller image).")
        return
    with st.spinner("Building and running the model …"):
        out = _tried(NAME, box.splits, box.img_size, lm.key, ctx.image.key, steps.tensor)
    st.warning(f"**Random weights.** {NAME} built with these soft splits has no trained weights (the released "
               "and project-trained ones fit the paper's splits only): the shapes and grids below are real, the "
               "values are those of random weights and mean nothing; its prediction is not shown.",
               icon=":material/casino:")
    rows = [f"| `{name}` | {g[0]}×{g[1]} | {shape[1]:,} | {shape[2]:,} |"
            for name, g, shape in zip(STEPS, out["grids"], out["shapes"], strict=True)]
    st.markdown("| trace step | grid | tokens | numbers per token |\n|---|---|---|---|\n" + "\n".join(rows))
    computed = [(s.grid, s.grid) for s in box.stages for _ in (0, 1)]
    agree = list(out["grids"]) == computed
    st.caption(f"The trace's grids {'are' if agree else 'are NOT'} the ones computed above "
               f"({', '.join(f'{g[0]}×{g[1]}' for g in out['grids'][::2])}); the backbone's {len(lm.model.blocks)} "
               f"blocks work on {out['blocks'][0]}×{out['blocks'][1]} tokens plus the class token.")
    widgets.show(charts.strip_figure(out["norms"], [f"{n}: token length" for n in STEPS], colorscale="Viridis"),
                 key="sb_trace")


def write_view_to_url() -> None:
    """The view in the address bar after a move here: a fragment rerun skips main.py, which writes it after full
    runs. Not in a session's first run with a link (main.py's notices quote the link's own values first) nor on
    a guided tour's address (?tour=..., kept for the tour's step by main.py)."""
    if not links.link_pending() and "tour" not in st.query_params:
        links.write_to_url(URL_PATH)


@st.fragment
def sandbox_view() -> None:
    clamp_state()
    splits, size = controls()
    box = sandbox.analyse(splits, size)
    paper = sandbox.analyse(PAPER, size)
    problems(box)
    stage_table(box)
    if not box.valid:
        st.info("Nothing more to show until every soft split gives at least one token.")
        write_view_to_url()
        return
    costs(box, paper)
    steps = _input(lm.key, ctx.image.key, size, lm, ctx.image.image)
    uri = figures.cached_png_uri(f"{lm.key}|{ctx.image.key}|{size}", np.asarray(steps.cropped))
    pictures(box, uri)
    left, right = st.columns([2, 3])
    with left:
        widgets.show(sandbox.cost_figure(box, paper), key="sb_cost")
    with right:
        st.markdown(attention_words(box, paper))
    try_it(box, steps)
    write_view_to_url()


sandbox_view()
