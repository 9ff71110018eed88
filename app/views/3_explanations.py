"""Page 3: explanation maps of T2T-ViT and ViT side by side, with their faithfulness scores."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import _state as S
from app import components as C

ctx = S.context()
st.header("Explanations: which pixels made the decision?")
C.explain_text(
    "An explanation map colours the parts of the image that a method says mattered for a class. Methods "
    "disagree, so each map comes with two **faithfulness** scores: remove the pixels in the map's order, most "
    "important first, and watch the class probability (**deletion AUC**: lower is better, the score should "
    "collapse quickly); or start from a blurred image and put the pixels back (**insertion AUC**: higher is "
    "better). For T2T-ViT, the 14×14 map of the backbone is **carried back through the T2T module**, through "
    "the soft splits and the T2T attention, instead of being stretched like ViT's patches. Look for: do the "
    "two models look at the same object? Is the T2T-ViT map sharper at edges? Does a better-looking map also "
    "score better?"
)

expensive = st.toggle("Offer the slow methods too (Integrated Gradients, occlusion, token ablation)",
                      key="exp_expensive", help="Each takes many forward passes: seconds on a GPU, longer on a CPU.")
options = list(S.CHEAP_METHODS) + (list(S.EXPENSIVE_METHODS) if expensive else [])
st.session_state["exp_methods"] = [m for m in st.session_state.get("exp_methods", ["rollout", "chefer"])
                                  if m in options]
methods = st.multiselect("Methods", options, key="exp_methods",
                         format_func=S.METHOD_NAMES.__getitem__)

a, b, c = st.columns(3)
which = a.radio("Explain", ["the predicted class", "a class I choose"], key="exp_which")
CARRY = {
    "coverage": "carry back through the T2T module (average of overlapping windows)",
    "mass": "carry back through the T2T module (conserve the total)",
    "stretch": "stretch like ViT patches",
}
carry = b.radio("T2T-ViT map to pixels", list(CARRY), format_func=CARRY.__getitem__, key="exp_carry",
                help="Carrying back spreads each backbone token over the pixels its soft-split windows came from, "
                "then over the tokens each T2T attention mixed in. 'Average' gives each pixel the mean of the "
                "windows covering it; 'conserve' splits each token's value among its pixels, so pixels covered by "
                "more overlapping windows add up more (a lattice pattern).")
with c:
    score = st.toggle("Faithfulness scores", value=True, key="exp_faith")
    steps = st.slider("Deletion/insertion steps", 4, 20, 10 if ctx.device.startswith("cuda") else 5, key="exp_steps",
                      disabled=not score,
                      help="Each step is one forward pass per curve; more steps = smoother curves, slower.")

targets: dict[str, int] = {}
for lm in ctx.models:
    probs = S.probabilities(ctx.trace(lm))
    names = lm.class_names
    predicted = int(np.argmax(probs))
    if which == "the predicted class":
        targets[lm.role] = predicted
    else:
        targets[lm.role] = st.selectbox(f"Class for {lm.role} ({lm.name})", range(len(names)), index=predicted,
                                        format_func=names.__getitem__, key=f"exp_class_{lm.role}")
cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    probs = S.probabilities(ctx.trace(lm))
    t = targets[lm.role]
    col.markdown(f"**{lm.role}** — {lm.label}: explaining **{lm.class_names[t]}** ({probs[t]:.1%})")

if not methods:
    st.info("Choose at least one method above.")



journeys = {}
for method in methods:
    st.subheader(S.METHOD_NAMES[method])
    cols = st.columns(2)
    for col, lm in zip(cols, ctx.models, strict=True):
        with col:
            with st.spinner(f"{S.METHOD_NAMES[method]} for {lm.name} …"):
                pix, stages = S.explanation_pixels(ctx, lm, method, targets[lm.role], carry)
            if stages is not None:
                journeys[method] = stages
            img = ctx.display_image(lm)
            key = f"{lm.key}|{ctx.image.key}|{method}|{targets[lm.role]}|{carry}"
            uri = C.cached_overlay_uri(key, img, lambda pix=pix: S.to_numpy(S.display_scale(pix)))
            fig = C.image_figure(uri, img.shape[:2],
                                 title=f"{lm.role}: {lm.name}", height=380)
            C.show(fig, key=f"exp_{method}_{lm.role}")
            if score:
                with st.spinner("Deletion / insertion …"):
                    deletion, insertion = S.faithfulness_scores(ctx, lm, f"{method}|{carry}", pix,
                                                                targets[lm.role], steps)
                m1, m2 = st.columns(2)
                m1.metric("Deletion AUC (lower is better)", f"{deletion:.3f}")
                m2.metric("Insertion AUC (higher is better)", f"{insertion:.3f}")

if journeys:
    st.subheader("The journey back through the T2T module")
    method = st.selectbox("Method", list(journeys), format_func=S.METHOD_NAMES.__getitem__, key="exp_journey")
    stages = journeys[method]
    maps = [S.to_numpy(S.display_scale(m)) for _, m in stages]  # each clipped at its 99.5th percentile
    maps[-1] = maps[-1].reshape(maps[-1].shape[0] // 2, 2, maps[-1].shape[1] // 2, 2).mean(axis=(1, 3))  # lighter
    C.show(C.strip_figure(maps, [t for t, _ in stages]), key="exp_strip")
    st.caption("Left to right: the backbone's map, then each step back towards the pixels. A soft split spreads "
               "each token's value over the window it was cut from (overlapping windows add up); a T2T attention "
               "step spreads it over the tokens that token attended to, keeping a share for itself (the layer's "
               "skip connection). Each panel is scaled to its own range.")
