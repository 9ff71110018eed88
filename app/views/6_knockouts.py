"""Page 6: knock heads and T2T attention out and watch both models' predictions, maps and head importance;
pruning curves over labelled synthetic images (issue 23)."""

from __future__ import annotations

import functools

import numpy as np
import streamlit as st

from app import charts, compute, explanations, figures, jobs, knockouts, widgets
from app.models import LoadedModel

ctx = compute.context()
st.header("Knock-outs: switch parts off and watch")
widgets.explain_text(
    "Every other page observes the models; here you **intervene**. Click a head in a model's grid (blocks are "
    "rows, heads columns) to **knock it out**: its share of the attention output is set to zero (*zero*) or "
    "replaced by its average over 16 synthetic test images (*mean*), for this image only. Both models' top-5 "
    "classes and the chosen map are recomputed with those heads out. For T2T-ViT you can also reduce **T2T "
    "attention 1 or 2** to its value path, so that the soft splits alone build the tokens. Below, the "
    "**importance** of every head that is still in: how much the class logit drops when that head is knocked "
    "out too, and under it which heads **AttnLRP** says carry the class's relevance: do the two agree? At the "
    "bottom, the **pruning curve**: accuracy on labelled synthetic images as heads go, least "
    "important first; the T2T-ViT paper argues that ViT's backbone is redundant. The sentences under each "
    "chart say what its numbers show."
)

MODE_NAMES = {"zero": "zero ablation", "mean": "mean ablation (16 synthetic test images)"}
MAP_NAMES = {"rollout": "attention rollout (knocked-out heads left out)",
             "last_cls": "class-token attention of the last block (heads still in)"}
colours = {ctx.t2t.role: figures.T2T_COLOUR, ctx.vit.role: figures.VIT_COLOUR}


def head_options(lm: LoadedModel) -> list[str]:
    return [f"{b}.{h}" for b in range(lm.num_blocks) for h in range(lm.num_heads)]


def head_label(value: str) -> str:
    b, h = value.split(".")
    return f"block {b}, head {h}"


def as_heads(values: list[str]) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in value.split(".")) for value in values]  # type: ignore[misc]


# The state a link (or a click) left is checked against the models in use: anything else goes back to its default
# (links.link_notices then says what the link asked for and what is shown instead).
if st.session_state.get("ko_mode") not in MODE_NAMES:
    st.session_state["ko_mode"] = "zero"
if st.session_state.get("ko_map") not in MAP_NAMES:
    st.session_state["ko_map"] = "rollout"
for lm in ctx.models:
    key = f"ko_heads_{lm.role}"
    now = st.session_state.get(key) or []
    valid = set(head_options(lm))
    st.session_state[key] = list(dict.fromkeys(v for v in now if isinstance(v, str) and v in valid))
for key in ("ko_attn1", "ko_attn2"):
    st.session_state[key] = bool(st.session_state.get(key, False))

a, b, c = st.columns([2, 3, 2])
mode = a.radio("Knock out by", list(MODE_NAMES), format_func=MODE_NAMES.__getitem__, key="ko_mode",
               help="Zero: the head's slice of the attention output (before the output projection) is 0. Mean: it "
               "is replaced, token by token, by its mean over 16 synthetic test images.")
shown_map = b.radio("Map", list(MAP_NAMES), format_func=MAP_NAMES.__getitem__, key="ko_map")
has_t2t = knockouts.t2t_layers_of(ctx.t2t)
with c:
    attn1 = st.toggle("Knock out T2T attention 1", key="ko_attn1", disabled=not has_t2t)
    attn2 = st.toggle("Knock out T2T attention 2", key="ko_attn2", disabled=not has_t2t)
t2t_off = tuple(i for i, on in ((1, attn1), (2, attn2)) if on) if has_t2t else ()
st.caption("A T2T attention knocked out: the layer's `v + proj(attention @ v)` becomes `v` (its MLP kept), so the "
           "tokens are built by the soft splits alone. **ViT has no such step**: its patch embedding is one linear "
           "map per 16×16 patch, with no token attention to knock out, so the switches act on T2T-ViT only.")

runs: dict[str, knockouts.KnockRun] = {}
intact: dict[str, knockouts.KnockRun] = {}
knocked: dict[str, list[tuple[int, int]]] = {}
sentences: list[str] = []
cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    key = f"ko_heads_{lm.role}"
    heads = as_heads(st.session_state[key])
    off = t2t_off if lm.role == ctx.t2t.role else ()
    knocked[lm.role] = heads
    intact[lm.role] = knockouts.knocked_run(ctx, lm)
    runs[lm.role] = run = knockouts.knocked_run(ctx, lm, heads, off, mode)
    with col:
        grid = charts.head_grid_figure(None, (lm.num_blocks, lm.num_heads), heads, pickable=True,
                                       title=f"{lm.role} {lm.name}: click a head to knock it out (again: back in)")
        widgets.show(grid, key=f"ko_grid_{lm.role}", on_select=widgets.head_toggle_callback(f"ko_grid_{lm.role}", key),
                     filename=f"knockout_grid_{lm.name}")
        st.multiselect(f"Knocked-out heads of {lm.role} (or type here)", head_options(lm), key=key,
                       format_func=head_label)
        names = lm.class_names
        pairs = compute.top_k(run.probs, names)
        what = [f"{len(heads)} of {lm.num_blocks * lm.num_heads} heads out"] if heads else []
        what += [f"T2T attention {i} out" for i in off]
        title = f"{lm.role}: " + (", ".join(what) if what else "nothing knocked out")
        widgets.show(charts.topk_figure(pairs, title, colours[lm.role]), key=f"ko_top5_{lm.role}",
                     filename=f"knockout_top5_{lm.name}")
        base = intact[lm.role].probs
        was = int(np.argmax(base))
        now = int(np.argmax(run.probs))
        if what:
            change = (f"the top class is still **{names[now]}**" if now == was else
                      f"the top class changes from **{names[was]}** to **{names[now]}** ({run.probs[now]:.1%})")
            sentences.append(f"{lm.role} with {' and '.join(what)} ({MODE_NAMES[mode].split(' (')[0]}): {change}; "
                             f"**{names[was]}** goes from {base[was]:.1%} to {run.probs[was]:.1%} "
                             f"({100 * (run.probs[was] - base[was]):+.1f} points).")
        else:
            sentences.append(f"{lm.role} with nothing knocked out: **{names[was]}** at {base[was]:.1%}.")
        st.markdown(sentences[-1])
        widgets.domain_notice(lm, ctx.image, short=True)
        values = run.rollout if shown_map == "rollout" else run.last_cls
        img = ctx.display_image(lm)
        size = img.shape[:2]
        fig = figures.image_figure(figures.cached_png_uri(f"{lm.key}|{ctx.image.key}", img), size,
                                   title=f"{lm.role}: {MAP_NAMES[shown_map].split(' (')[0]}", height=380)
        if values is not None:
            figures.add_grid_heatmap(fig, values, size, colorbar_title="share")
            widgets.show(fig, key=f"ko_map_{lm.role}", filename=f"knockout_{shown_map}_{lm.name}")
        else:
            widgets.show(fig, key=f"ko_map_{lm.role}", filename=f"knockout_{shown_map}_{lm.name}")
            st.caption(f"Every head of {lm.role}'s last block is knocked out: it has no class-token attention left.")

st.subheader("How much each head still matters")
st.caption("Each cell: the drop of the class logit (of the class the intact model predicts) when that head is knocked "
           "out as well, given the parts knocked out above (0 for a head already out, crossed). Red: the head helped "
           "that class; blue: the class does better without it. Under it, the same heads' **AttnLRP relevance** "
           "(Achtibat et al. 2024): how much of the class logit's relevance passed through each head of the intact "
           "model, from one backward pass instead of one knock-out per head. The sentence under the two grids "
           "compares their rankings over the heads still in (Spearman's ρ: 0.5 or more is strong agreement, 0.3 "
           "moderate, 0.1 weak, between -0.1 and 0.1 none, below -0.1 disagreement; the p-value counts random "
           "rankings that do as well).")


def draw_grid(lm: LoadedModel, heads: list[tuple[int, int]], grid: knockouts.HeadGrid) -> None:
    fig = charts.head_grid_figure(grid.logit_drop, (lm.num_blocks, lm.num_heads), heads, colorbar="logit drop",
                                  title=f"{lm.role}: importance for {lm.class_names[grid.target]}")
    widgets.show(fig, key=f"ko_importance_{lm.role}", filename=f"knockout_importance_{lm.name}")


def grid_sentence(lm: LoadedModel, heads: list[tuple[int, int]], grid: knockouts.HeadGrid) -> None:
    drop = grid.logit_drop
    b, h = np.unravel_index(int(np.argmax(drop)), drop.shape)
    helping = int((drop > 0).sum())
    st.caption(f"{lm.role}: the class **{lm.class_names[grid.target]}** has logit {grid.logit:.2f} "
               f"(probability {grid.prob:.1%}) with {len(heads)} head{'s' * (len(heads) != 1)} out; knocking out "
               f"block {b}, head {h} as well costs most ({drop[b, h]:+.2f} logit, {grid.prob_drop[b, h]:+.1%} "
               f"probability); {helping} of {drop.size - len(heads)} heads still in help the class (drop > 0).")


def draw_relevance(lm: LoadedModel, heads: list[tuple[int, int]], off: tuple[int, ...],
                   maps: explanations.LrpMaps) -> None:
    intact_model = " (intact model)" if heads or off else ""  # LRP explains the model as it is, nothing knocked out
    fig = charts.head_grid_figure(maps.heads.numpy(), (lm.num_blocks, lm.num_heads), heads, colorbar="relevance",
                                  title=f"{lm.role}: AttnLRP relevance for {lm.class_names[maps.target]}{intact_model}")
    widgets.show(fig, key=f"ko_relevance_{lm.role}", filename=f"knockout_relevance_{lm.name}")


def relevance_sentence(lm: LoadedModel, heads: list[tuple[int, int]], off: tuple[int, ...], grid: knockouts.HeadGrid,
                       maps: explanations.LrpMaps) -> None:
    agreement = knockouts.relevance_agreement(maps.heads.numpy(), grid.logit_drop, heads)
    st.markdown(knockouts.agreement_sentence(lm.role, "AttnLRP", agreement, len(heads), off))


cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    target = int(np.argmax(intact[lm.role].probs))
    off = t2t_off if lm.role == ctx.t2t.role else ()
    pending = knockouts.head_grid(ctx, lm, target, knocked[lm.role], off, mode)
    relevance = explanations.lrp_soon(ctx, lm, "attnlrp", target)  # the intact model's, whatever is knocked out
    with col:
        jobs.draw_when_ready([pending], functools.partial(draw_grid, lm, knocked[lm.role]))
        jobs.draw_when_ready([pending], functools.partial(grid_sentence, lm, knocked[lm.role]), progress=False)
        jobs.draw_when_ready([relevance], functools.partial(draw_relevance, lm, knocked[lm.role], off))
        jobs.draw_when_ready([pending, relevance], functools.partial(relevance_sentence, lm, knocked[lm.role], off),
                             progress=False)

st.subheader("Pruning curves: how many heads can go?")
p1, p2 = st.columns([3, 2])
st.session_state.setdefault("ko_prune", ctx.device.startswith("cuda"))
st.session_state["ko_prune_n"] = st.session_state.get("ko_prune_n", 40) if st.session_state.get(
    "ko_prune_n") in (20, 40, 100) else 40
n_images = p2.select_slider("Labelled synthetic test images", [20, 40, 100], key="ko_prune_n")
run_prune = p1.toggle("Compute the pruning curves (a background job)", key="ko_prune",
                      help="Heads ranked by their mean logit drop on other synthetic test images, then knocked out "
                      "cumulatively, least important first; accuracy measured at 9 points with bootstrap intervals. "
                      "Tens of seconds to minutes on a CPU; computed once per model and number of images.")
if run_prune:
    curves, lines = {}, []
    for lm in ctx.models:
        if not knockouts.synthetic_labels(lm):
            lines.append(f"{lm.role} ({lm.name}, {lm.weights_label}) does not answer with the synthetic shape classes, "
                         "so the synthetic test split is no labelled batch for it: run `notebooks/05_knockouts.py` or "
                         "`python -m analysis.report --knockouts` on a labelled image folder for its pruning curve.")
            continue
        curve = knockouts.pruning(lm, int(n_images), mode)
        if curve is None:  # running in the background: a progress bar instead
            continue
        x = curve.removed.numpy() / curve.num_heads
        curves[f"{lm.role} ({lm.name})"] = (x, curve.accuracy.numpy(), curve.ci_low.numpy(), curve.ci_high.numpy(),
                                            colours[lm.role])
        lines.append(knockouts.pruning_sentence(lm.role, curve) + ".")
    if curves:
        widgets.show(charts.pruning_figure(curves, f"Accuracy on {n_images} synthetic test images as heads go "
                                           f"({MODE_NAMES[mode].split(' (')[0]})"),
                     key="ko_pruning", filename="pruning_curves")
    for line in lines:
        st.markdown(line)
    if curves:
        st.caption("Bands: 95% percentile-bootstrap intervals over the images. Heads are ranked on a separate batch "
                   f"of {max(1, int(n_images) // 2)} synthetic test images. With {n_images} images one image is "
                   f"{100 / int(n_images):.1f} points of accuracy, so 'at most one point' means "
                   f"at most {int(int(n_images) * 0.01 + 1e-9)} of the {n_images} images lost. These are the "
                   "project's small models on "
                   "synthetic shapes; the paper's redundancy argument is about ImageNet-trained ViT.")
else:
    st.caption("Switch on *Compute the pruning curves* to measure how many heads each model can lose.")
