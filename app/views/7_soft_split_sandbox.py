"""Page 7: the soft-split sandbox (issue 29): choose the kernel, stride and padding of T2T-ViT's three soft
splits and the image size, and see at once what they give: each stage's grid and token count, how much
neighbouring windows share, the window of one backbone token beside a ViT patch, the T2T attention cost,
the parameters and MACs of the sidebar's T2T-ViT built that way; "Try it" runs the current image through
it (random weights). The computations and figures are app/sandbox.py, the view too (the controls' values
clamped, the defaults, the image at the chosen size: what app/export.py draws for a tour step); everything below the
header is one `st.fragment`, so a control reruns this page's part only, not the sidebar.
"""

from __future__ import annotations

import streamlit as st

import t2t
from app import charts, compute, links, sandbox, widgets
from app.sandbox import PAPER, SIZE_KEY, SPLIT_KEYS, TRY_KEY
from t2t.images import PreprocessSteps

URL_PATH = "sandbox"  # this page's st.Page url_path (main.py) and links.PAGE_PARAMS entry

ctx = compute.context()
lm, vm = ctx.t2t, ctx.vit
NAME = sandbox.model_name(lm.name)  # the architecture built: the sidebar's
LO, HI = sandbox.IMAGE
DEFAULT_SIZE = sandbox.default_size(lm.img_size)
PATCH = sandbox.vit_patch(vm.model)

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


def clamp_state() -> None:
    """Defaults for controls not set yet; values from a link or an older run kept within the controls' ranges
    (`sandbox.clamped`, which a tour step's lesson file computes too)."""
    st.session_state.update(sandbox.clamped(st.session_state, DEFAULT_SIZE))


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
        st.button("The paper's choice", on_click=st.session_state.update, args=(sandbox.paper_values(DEFAULT_SIZE),),
                  help=f"7/4/2, 3/2/1, 3/2/1 on a {DEFAULT_SIZE} px image", key="sb_paper")
        st.caption(f"Built as **{NAME}** (the sidebar's T2T-ViT): {lm.model.embed_dim} wide, "
                   f"{len(lm.model.blocks)} blocks.")
    return tuple(splits), size  # type: ignore[return-value]


def stage_table(view: sandbox.View) -> None:
    box = view.box
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
    g = view.vit_grid
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


def costs(view: sandbox.View) -> tuple[int, int]:
    """Metrics: backbone tokens, parameters, GMACs, both T2T attention costs, each against the paper's splits
    at the same image size. Returns (parameters, MACs)."""
    box, paper = view.box, view.paper
    (params, macs), (p_params, p_macs) = view.cost, view.paper_cost
    same = box.is_paper

    def delta(now: float, then: float, text: str) -> str | None:
        return None if same else text.format(now - then) + (f" ({now / then:.3g}× the paper's)" if then else "")

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


def pictures(view: sandbox.View, uri: str) -> None:
    """The windows of each stage on the image, two by two (four in a row were too small to read at 1280 px),
    the backbone token beside ViT's patch."""
    box = view.box
    top, bottom = st.columns(2), st.columns(2)
    with top[0]:
        widgets.show(sandbox.window_figure(uri, box, 0), key="sb_window0")
    with top[1]:
        widgets.show(sandbox.window_figure(uri, box, 1), key="sb_window1")
    with bottom[0]:
        widgets.show(sandbox.window_figure(uri, box, 2), key="sb_window2")
    with bottom[1]:
        widgets.show(sandbox.vit_figure(uri, box.img_size, view.patch, sandbox.backbone_centre(box)), key="sb_vit")
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
        out = sandbox.tried(NAME, box.splits, box.img_size, lm.key, ctx.image.key, steps.tensor)
    st.warning(f"**Random weights.** {NAME} built with these soft splits has no trained weights (the released "
               "and project-trained ones fit the paper's splits only): the shapes and grids below are real, the "
               "values are those of random weights and mean nothing; its prediction is not shown.",
               icon=":material/casino:")
    rows = [f"| `{name}` | {g[0]}×{g[1]} | {shape[1]:,} | {shape[2]:,} |"
            for name, g, shape in zip(sandbox.TRACE_STEPS, out["grids"], out["shapes"], strict=True)]
    st.markdown("| trace step | grid | tokens | numbers per token |\n|---|---|---|---|\n" + "\n".join(rows))
    computed = [(s.grid, s.grid) for s in box.stages for _ in (0, 1)]
    agree = list(out["grids"]) == computed
    st.caption(f"The trace's grids {'are' if agree else 'are NOT'} the ones computed above "
               f"({', '.join(f'{g[0]}×{g[1]}' for g in out['grids'][::2])}); the backbone's {len(lm.model.blocks)} "
               f"blocks work on {out['blocks'][0]}×{out['blocks'][1]} tokens plus the class token.")
    widgets.show(charts.strip_figure(out["norms"], list(sandbox.TRACE_TITLES), colorscale="Viridis"), key="sb_trace")


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
    view = sandbox.make_view(NAME, PATCH, splits, size)  # what sandbox.page_view gives for this state
    box, paper = view.box, view.paper
    problems(box)
    stage_table(view)
    if not box.valid:
        st.info("Nothing more to show until every soft split gives at least one token.")
        write_view_to_url()
        return
    costs(view)
    steps = sandbox.input_steps(lm.key, ctx.image.key, size, lm, ctx.image.image)
    uri = sandbox.image_uri(lm.key, ctx.image.key, size, steps)
    pictures(view, uri)
    left, right = st.columns([2, 3])
    with left:
        widgets.show(sandbox.cost_figure(box, paper), key="sb_cost")
    with right:
        st.markdown(attention_words(box, paper))
    try_it(box, steps)
    write_view_to_url()


sandbox_view()
