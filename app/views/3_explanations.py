"""Page 3: explanation maps of T2T-ViT and ViT side by side, with their faithfulness scores."""

from __future__ import annotations

import functools
import zlib
from inspect import signature

import numpy as np
import streamlit as st

from analysis.attributions import COMPLETENESS_TOLERANCE
from analysis.maps import display_scale
from analysis.rollout import DISCARD_RULES, cls_rollout
from app import charts, compute, explanations, figures, jobs, knockouts, models, widgets
from app.export import journey_figure, lrp_overlay_uri

ctx = compute.context()
STEPS = (4, 20)  # the steps slider's range
st.header("Explanations: which pixels made the decision?")
widgets.explain_text(
    "An explanation map colours the parts of the image that a method says mattered for a class. Methods "
    "disagree, so each map comes with two **faithfulness** scores: remove the pixels in the map's order, most "
    "important first, and watch the class probability (**deletion AUC**: lower is better, the score should "
    "collapse quickly); or start from a blurred image and put the pixels back (**insertion AUC**: higher is "
    "better). For T2T-ViT, the 14×14 map of the backbone is **carried back through the T2T module**, through "
    "the soft splits and the T2T attention, instead of being stretched like ViT's patches. **AttnLRP** and "
    "**CP-LRP** (layer-wise relevance propagation) need no carrying back: they pass the class logit back layer "
    "by layer to the pixels themselves, through T2T-ViT's soft splits too (red: for the class, blue: against), "
    "and beside each map its **conservation** says how much of the logit reached the pixels. Compare: do the "
    "two models look at the same object, and does the better-looking map also score better? Below each "
    "method, a line says what the scores show on this image."
)

expensive = st.toggle("Offer the slow methods too (Integrated Gradients, occlusion, token ablation)",
                      key="exp_expensive", help="Each takes many forward passes: seconds on a GPU, longer on a CPU.")
options = list(explanations.CHEAP_METHODS) + (list(explanations.EXPENSIVE_METHODS) if expensive else [])
st.session_state["exp_methods"] = [m for m in st.session_state.get("exp_methods", ["rollout", "chefer"])
                                  if m in options]
methods = st.multiselect("Methods", options, key="exp_methods",
                         format_func=explanations.METHOD_NAMES.__getitem__)

a, b, c = st.columns(3)
which = a.radio("Explain", ["the predicted class", "a class I choose"], key="exp_which")
CARRY = {
    "coverage": "carry back through the T2T module (average of overlapping windows)",
    "mass": "carry back through the T2T module (conserve the total)",
    "stretch": "stretch like ViT patches",
}
if st.session_state.get("exp_carry") not in CARRY:
    st.session_state["exp_carry"] = "coverage"
carry = b.radio("T2T-ViT map to pixels", list(CARRY), format_func=CARRY.__getitem__, key="exp_carry",
                help="Carrying back spreads each backbone token over the pixels its soft-split windows came from, "
                "then over the tokens each T2T attention mixed in. 'Average' gives each pixel the mean of the "
                "windows covering it; 'conserve' splits each token's value among its pixels, so pixels covered by "
                "more overlapping windows add up more (a lattice pattern).")
with c:
    st.session_state.setdefault("exp_faith", True)
    score = st.toggle("Faithfulness scores", key="exp_faith")
    st.session_state.setdefault("exp_steps", 10 if ctx.device.startswith("cuda") else 5)
    steps = st.slider("Deletion/insertion steps", *STEPS, key="exp_steps", disabled=not score,
                      help="Each step is one forward pass per curve; more steps = smoother curves, slower.")
    sanity = st.toggle("Sanity check of each map", key="exp_sanity",
                       help="Cascading randomisation (Adebayo et al., 2018): the model's layers are re-initialised "
                       "from the head down, one more at a time, on a copy of the model, and each method's map is "
                       "computed again; a map that stays the same explains the image, not the model. Quick "
                       "methods only; a background job of 1 + blocks + 3 runs of the method per model.")

# Rollout's discard rule, by name (analysis.rollout.DISCARD_RULES): vit-explain's rule ranks the whole
# flattened fused map, the per-row rule each row on its own; they give different maps for ratio > 0.
RULES = {"vit-explain": "vit-explain (flattened map)", "row": "per row"}
rollouts = [m for m in methods if m in ("rollout", "grad_rollout")]
discard: dict[str, tuple[str, float]] = {}
if rollouts:
    r1, r2 = st.columns(2)
    st.session_state.setdefault("exp_rule", signature(cls_rollout).parameters["discard"].default)
    if st.session_state["exp_rule"] not in DISCARD_RULES:
        st.session_state["exp_rule"] = DISCARD_RULES[-1]
    rule = r1.selectbox("Rollout discard rule", list(DISCARD_RULES), format_func=RULES.__getitem__, key="exp_rule",
                        help="Which attention weights a rollout drops before chaining the blocks. vit-explain "
                        "(jacobgil/vit-explain, vit_rollout.py): the lowest weights of the whole fused T×T map, "
                        "the class token's own entry kept. Per row: the lowest patch weights of each row.")
    st.session_state.setdefault("exp_discard", 0.9)
    ratio = r2.slider("Discard ratio (share of weights dropped)", 0.0, 0.95, step=0.05, key="exp_discard",
                      help="0 keeps every weight (plain rollout). vit-explain's examples use 0.9.")
    discard = {m: (rule, float(ratio)) for m in rollouts}

# A class chosen for one image means nothing for the next: a new image (or model) starts from the prediction.
# The class boxes are new widgets for each view (their key names it): the browser keeps a widget's value
# across reruns, so resetting the old widget's state would not be enough.
view = f"{ctx.image.key}|{ctx.t2t.key}|{ctx.vit.key}"
view_tag = f"{zlib.crc32(view.encode()):08x}"
if st.session_state.get("exp_class_view") != view:
    had_choice = st.session_state.get("exp_class_view") is not None and which == "a class I choose"
    st.session_state["exp_class_view"] = view
    if had_choice:
        st.session_state["exp_class_reset"] = view  # said until a class is chosen again
if which == "a class I choose" and st.session_state.get("exp_class_reset") == view:
    st.info("New image or model: the chosen classes start again from each model's prediction.")

targets: dict[str, int] = {}
for lm in ctx.models:
    probs = compute.probabilities(ctx.trace(lm))
    names = lm.class_names
    predicted = int(np.argmax(probs))
    if which == "the predicted class":
        targets[lm.role] = predicted
    else:
        targets[lm.role] = st.selectbox(f"Class for {lm.role} ({lm.name})", range(len(names)), index=predicted,
                                        format_func=names.__getitem__, key=f"exp_class_{lm.role}_{view_tag}",
                                        on_change=st.session_state.pop, args=("exp_class_reset", None))
cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    probs = compute.probabilities(ctx.trace(lm))
    t = targets[lm.role]
    with col:
        st.markdown(f"**{lm.role}** — {lm.label}: explaining **{lm.class_names[t]}** ({probs[t]:.1%})")
        widgets.domain_notice(lm, ctx.image)
widgets.class_list(ctx.models)

if not methods:
    st.info("Choose at least one method above.")


def method_map(lm: models.LoadedModel, method: str, target: int) -> tuple[str, object, dict[str, float] | None]:
    """(map id, token map (h, w), IG completeness or None) of one method with this page's options."""
    if method == "rollout":
        rule, ratio = discard[method]
        return f"rollout|{rule}|{ratio:g}", explanations.rollout_with(ctx, lm, rule, ratio), None
    if method == "grad_rollout":
        rule, ratio = discard[method]
        heat, _ = explanations.explanation_with(ctx, lm, method, target, discard=rule, discard_ratio=ratio)
        return f"grad_rollout|{rule}|{ratio:g}|{target}", heat, None
    if method == "integrated_gradients":
        done = explanations.explanation_with(ctx, lm, method, target, return_completeness=True)  # None while it runs
        heat, completeness = done if done is not None else (None, None)
        return f"integrated_gradients|{target}", heat, completeness
    return f"{method}|{target}", explanations.explanation(ctx, lm, method, target), None


def completeness_note(lm: models.LoadedModel, gap: dict[str, float]) -> None:
    """IG's completeness beside its map: sum of attributions vs f(x) - f(baseline), warned above 5%."""
    total = gap["output_change"] + gap["delta"]
    text = (f"Completeness gap {gap['relative_gap']:.1%}: the attributions sum to {total:.3g}, "
            f"f(x) − f(baseline) = {gap['output_change']:.3g} (class logit, zero baseline).")
    if gap["relative_gap"] > COMPLETENESS_TOLERANCE:
        st.warning(text + f" Above {COMPLETENESS_TOLERANCE:.0%}: this map does not account for the whole change "
                   "of the class score; read it with care.")
    else:
        st.caption(text + f" Within {COMPLETENESS_TOLERANCE:.0%}: the map accounts for the class score's change.")


def show_scores(auc: jobs.Pending) -> None:
    """The two AUCs side by side, now or at the end of this run (a progress bar until then)."""
    m1, m2 = st.columns(2)
    with m1:
        jobs.draw_when_ready([auc], lambda a: st.metric("Deletion AUC (lower is better)", f"{a[0]:.3f}"))
    with m2:
        jobs.draw_when_ready([auc], lambda a: st.metric("Insertion AUC (higher is better)", f"{a[1]:.3f}"),
                          progress=False)


def show_verdict(title: str, roles: list[str], *aucs: tuple[float, float]) -> None:
    """Which model's map scores better on this image, with both pairs of numbers."""
    (r1, r2), ((d1, i1), (d2, i2)) = roles, aucs
    best_del = r1 if d1 < d2 else r2
    best_ins = r1 if i1 > i2 else r2
    verdict = (f"**{best_del}** scores better on both" if best_del == best_ins else
               f"the two scores disagree: **{best_del}** on deletion, **{best_ins}** on insertion")
    st.caption(f"On this image, with {title}: {verdict} (deletion {r1} {d1:.3f} vs {r2} {d2:.3f}; insertion "
               f"{r1} {i1:.3f} vs {r2} {i2:.3f}). Each model explains its own class, so the scores compare "
               "how well each map explains its own model.")


def show_sanity(lm: models.LoadedModel, method: str, target: int) -> None:
    """The method's cascading-randomisation curve on this image and its verdict, computed from the curve."""
    options = {"discard": discard[method][0], "discard_ratio": discard[method][1]} if method in discard else {}
    curve = knockouts.sanity(ctx, lm, method, target, **options)  # None while it runs: a progress bar instead
    if curve is None:
        return
    fig = charts.sanity_figure(curve, f"Sanity check, {lm.role}: similarity to this map", knockouts.SANITY_THRESHOLD)
    widgets.show(fig, key=f"exp_sanity_{method}_{lm.role}", filename=f"sanity_{method}_{lm.name}")
    st.caption(f"**{lm.role}**, {explanations.METHOD_NAMES[method]}: {knockouts.sanity_verdict(curve)}.")


journeys = {}
for method in methods:
    title = explanations.METHOD_NAMES[method]
    if method in discard:
        title += f" — discard {discard[method][1]:.0%}, rule: {RULES[discard[method][0]]}"
    st.subheader(title)
    cols = st.columns(2)
    scores: dict[str, jobs.Pending] = {}
    for col, lm in zip(cols, ctx.models, strict=True):
        with col:
            rel = None
            with st.spinner(f"{explanations.METHOD_NAMES[method]} for {lm.name} …"):
                if method in explanations.LRP_METHODS:  # relevance at the pixels: nothing to carry back or stretch
                    rel = explanations.lrp_maps(ctx, lm, method, targets[lm.role])
                    map_id, pix, stages, gap = f"{method}|{targets[lm.role]}|pixels", rel.pixels, rel.stages, None
                    faith_id = map_id
                else:
                    map_id, heat, gap = method_map(lm, method, targets[lm.role])
                    if heat is None:  # a slow method still running: its progress bar is drawn instead
                        continue
                    pix, stages = explanations.pixels_of(ctx, lm, map_id, heat, carry)
                    faith_id = f"{map_id}|{carry}"
            if score:  # queued before the figure is drawn, so the curves run while the page is sent
                scores[lm.role] = explanations.faithfulness_scores(ctx, lm, faith_id, pix, targets[lm.role], steps)
            if stages:
                journeys[method] = stages
            img = ctx.display_image(lm)
            if rel is not None:
                uri, top = lrp_overlay_uri(f"{lm.key}|{ctx.image.key}|{map_id}", img, rel.pixels)
            else:
                key = f"{lm.key}|{ctx.image.key}|{map_id}|{carry}"
                uri = figures.cached_overlay_uri(key, img, lambda pix=pix: figures.to_numpy(display_scale(pix)))
            fig = figures.image_figure(uri, img.shape[:2], title=f"{lm.role}: {lm.name}", height=380)
            widgets.show(fig, key=f"exp_{method}_{lm.role}", filename=f"{method}_{lm.name}")
            if gap is not None:
                completeness_note(lm, gap)
            if rel is not None:
                rule = f"the Gamma rule, γ = {rel.gamma:g}" if rel.gamma is not None else "the plain gradient"
                st.caption(explanations.conservation_text(rel) + f" Linear layers: {rule}. Red for the class, blue "
                           f"against, full colour at ±{top:.2g} (99.5th percentile of |relevance|).")
            widgets.domain_notice(lm, ctx.image, short=True)
            if lm.role in scores:
                show_scores(scores[lm.role])
            if sanity and method in explanations.CHEAP_METHODS:
                show_sanity(lm, method, targets[lm.role])
    if len(scores) == 2:
        jobs.draw_when_ready(list(scores.values()), functools.partial(show_verdict, title, list(scores)),
                             progress=False)

if ctx.t2t.family == "t2t" and carry != "stretch" and any(m not in explanations.LRP_METHODS for m in methods):
    conc = {name: explanations.t2t_concentration(ctx, ctx.t2t, f"t2t.{name}_map") for name in ("attn1", "attn2")}
    parts = [f"T2T attention {name[-1]}: a query puts a median {c['median_row']:.1%} of its weight on its top "
             f"{int(c['top'])} of {int(c['tokens'])} tokens (1%), and {c['columns']:.1%} of all the weight lands "
             f"on the same {int(c['top'])} tokens" for name, c in conc.items()]
    st.info("**Why the T2T-ViT maps carried back can look speckled.** Carrying a map back follows the T2T "
            "attention weights. On this image, " + "; ".join(parts) + ". So most of each token's value is "
            "moved onto those few tokens: bright specks where they sit. *Stretch like ViT patches* shows the map "
            "without that step.", icon=":material/info:")

if journeys:
    st.subheader("The journey back through the T2T module")
    method = st.selectbox("Method", list(journeys), format_func=explanations.METHOD_NAMES.__getitem__,
                          key="exp_journey")
    stages = journeys[method]
    lrp_journey = method in explanations.LRP_METHODS
    strip = journey_figure(stages, lrp_journey)
    widgets.show(strip, key="exp_strip")
    if lrp_journey:
        st.caption("Left to right: where the relevance sits at each step of the T2T module, from the backbone's "
                   "tokens back to the pixels, all from the same single backward pass (nothing is carried back: "
                   "this is the relevance itself). A soft split hands each token's relevance to the pixels or "
                   "tokens of its window (overlapping windows add up); a T2T attention step shares it between "
                   "the tokens the layer mixed. Red: for the class, blue: against, each panel scaled to its own "
                   "range; Σ is the panel's total, which a step that conserves relevance keeps.")
    else:
        st.caption("Left to right: the backbone's map, then each step back towards the pixels. A soft split "
                   "spreads each token's value over the window it was cut from (overlapping windows add up); a "
                   "T2T attention step spreads it over the tokens that token attended to, keeping a share for "
                   "itself (the layer's skip connection). Each panel is scaled to its own range.")
