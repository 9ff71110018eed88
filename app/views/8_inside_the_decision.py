"""Page 8: inside the decision (issue 28): the logit lens across depth, direct logit attribution over heads and
MLPs (a click on a head shows its class-token attention), activation patching between this image and a second
one (heads, and every token of the residual stream) and attention sinks, both models side by side. The
computations, figures and sentences are app/mechanisms.py."""

from __future__ import annotations

import functools

import streamlit as st

from app import compute, figures, jobs, mechanisms, widgets
from app.images import IMAGE_TYPES, image_from_bytes, synthetic_class_names, upload_error_message
from app.mechanisms import PatchResult
from app.models import LoadedModel
from t2t.images import ImageError, sample_images

ctx = compute.context()
st.header("Inside the decision: how the answer is built")
widgets.explain_text(
    "The other pages show where the models look; this one opens the decision itself, with four tools of "
    "*mechanistic interpretability*. **The logit lens** reads the class token through the final norm and the "
    "classifier after every block: from which block on is the final answer already there? **Direct logit "
    "attribution** splits the answer's logit into what each head and each MLP writes into the class token: click "
    "a head to see where it looks. **Activation patching** runs a model on a second image (the same one blurred, "
    "its shape removed, another shape or photo, or yours) with one part taken from the run on this image, and "
    "measures how much of the difference that part brings back. **Attention sinks** are tokens that soak up "
    "attention far beyond an even share. The sentence under each chart says what its numbers show."
)

colours = {ctx.t2t.role: figures.T2T_COLOUR, ctx.vit.role: figures.VIT_COLOUR}
classes = synthetic_class_names()
# exact residual patching by default where it takes seconds (a GPU), its estimate where it takes minutes (a CPU)
st.session_state.setdefault("dec_resid", "exact" if ctx.device.startswith("cuda") else "attribution")
atts = {lm.role: mechanisms.attribution(ctx, lm) for lm in ctx.models}

# The view a link, a tour or a click left, checked against the models and image in use: anything else goes back to
# its default (links.link_notices then says what the link asked for and what is shown instead).
view = mechanisms.clean_view(ctx.image, {lm.role: (lm.num_blocks, lm.num_heads) for lm in ctx.models},
                             st.session_state, top={r: mechanisms.strongest_head(a) for r, a in atts.items()})
for key, value in view.items():
    st.session_state[key] = value


# ----------------------------------------------------------------------------------------------
st.subheader("1 · The logit lens: from which block on is the answer there?")
lenses = {lm.role: mechanisms.lens(ctx, lm) for lm in ctx.models}
widgets.show(mechanisms.lens_figure({lm.role: (lenses[lm.role], colours[lm.role], lm.class_names)
                                     for lm in ctx.models}), key="dec_lens", filename="logit_lens")
for lm in ctx.models:
    st.markdown(mechanisms.lens_sentence(lm.role, lenses[lm.role], lm.class_names))
st.caption("Each point: the class token after the embedding (depth 0) or after a block, passed through the model's "
           "final LayerNorm (with that depth's own statistics) and its classifier, as the logit lens does "
           "(nostalgebraist, 2020); the last point is the model's output itself. Depth is shown as a share of each "
           "model's blocks, so that both line up. The T2T-ViT paper makes no claim about the depth at which the "
           "answer forms: this describes these two models on this image.")
cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    ln = lenses[lm.role]
    with col:
        widgets.show(mechanisms.patch_lens_figure(ln, lm.role, lm.class_names), key=f"dec_strip_{lm.role}",
                     filename=f"patch_lens_{lm.name}")
        st.markdown(mechanisms.patch_lens_sentence(lm.role, ln, lm.class_names))

# ----------------------------------------------------------------------------------------------
st.subheader("2 · Direct logit attribution: who writes the answer?")
st.caption("The class token's final value is a sum: its input to block 0 (the embedding), what every head and every "
           "MLP adds, and the biases. The final LayerNorm is affine once its scale sigma is fixed, so the logit of "
           "the answer is exactly the sum of each part's share. **Sigma is this image's own, held fixed**: "
           + ", ".join(f"{r} sigma = {a.sigma:.3f}" for r, a in atts.items())
           + ". A part's number is what it writes given all the others, not what the logit would be without it "
           "(that is a knock-out, on the Knock-outs page). The colours are scaled to the heads: an MLP beyond them "
           "takes the end colour (hover for its value).")
cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    att = atts[lm.role]
    nb, nh = lm.num_blocks, lm.num_heads
    block, column = st.session_state[f"dec_block_{lm.role}"], st.session_state[f"dec_head_{lm.role}"]
    with col:
        key = f"dec_dla_{lm.role}"
        widgets.show(mechanisms.dla_figure(att, (block, column), lm.role, lm.class_names), key=key,
                     filename=f"dla_{lm.name}", on_select=widgets.tile_callback(key, nb * (nh + 1), block_head_keys=(
                         f"dec_block_{lm.role}", f"dec_head_{lm.role}"), heads=nh + 1))
        st.markdown(mechanisms.dla_sentence(lm.role, att, lm.class_names))
        widgets.domain_notice(lm, ctx.image, short=True)
        attn, on_cls = (None, 0.0) if column == nh else mechanisms.cls_attention(ctx, lm, block, column)
        if attn is not None:
            img = ctx.display_image(lm)
            widgets.show(mechanisms.head_attention_figure(
                figures.cached_png_uri(f"{lm.key}|{ctx.image.key}", img), img.shape[:2], attn, lm.role, block, column),
                key=f"dec_head_{lm.role}", filename=f"dla_head_{lm.name}_{block}_{column}")
        st.markdown(mechanisms.head_sentence(lm.role, att, block, column, attn, on_cls, lm.class_names))
shares = {r: mechanisms.top_share(a, mechanisms.TOP_FRACTION) for r, a in atts.items()}
st.markdown(
    "**The paper's claim** (Yuan et al., 2021): ViT's attention backbone is redundant, with limited feature richness, "
    "which T2T-ViT's deep-narrow backbone reduces. *Our reading, not the paper's*: if so, fewer of ViT's heads "
    "would write its answer. On this image the top "
    + " and ".join(f"{k} heads of {r} hold {s:.0%}" for r, (s, k) in shares.items())
    + " of the heads' |DLA|. One image tests nothing: notebook 06 measures it over many images with intervals.")

# ----------------------------------------------------------------------------------------------
st.subheader("3 · Activation patching: where does the difference between two images live?")
synthetic = mechanisms.synthetic_index(ctx.image) is not None
kinds = [k for k in mechanisms.SECONDS if synthetic or k not in mechanisms.SYNTHETIC_ONLY]
kind = st.radio("Second image", kinds, key="dec_second", horizontal=True,
               format_func=mechanisms.SECOND_NAMES.__getitem__,
               help="The ready-made corruptions of this image (blurred; for a synthetic image also its shape removed "
               "or replaced by another shape at the same place), another synthetic shape, a sample photo or an "
               "upload. Each model sees it through its own preprocessing.")
if not synthetic:
    st.caption("*Shape removed* and *another shape there* need a synthetic image (sidebar).")
b, c, _ = st.columns([2, 1, 2])
if kind in ("other_class", "shape"):
    b.selectbox("Shape", range(len(classes)), format_func=classes.__getitem__, key="dec_other")
if kind == "shape":
    c.number_input("Example", 0, 999, key="dec_other_ex")
if kind == "photo":
    b.selectbox("Photo", list(sample_images()), key="dec_photo")
upload = None
if kind == "upload":
    data = b.file_uploader("Second image file", type=IMAGE_TYPES, key="dec_upload")
    if data is not None:
        try:
            upload = image_from_bytes(data.name, data.getvalue())
        except ImageError as err:
            st.error(upload_error_message(data.name, err) + " Patching against the blurred image instead.")
    else:
        st.caption("Nothing uploaded yet: patching against the blurred image meanwhile.")
method = st.radio("Residual stream", mechanisms.RESID_METHODS, key="dec_resid", horizontal=True,
                  format_func={"attribution": "attribution patching (a first-order estimate, at once)",
                               "exact": "exact: every token patched (a background job, minutes on a CPU)"}.__getitem__,
                  help="Exact: the second image's run with one token of the residual stream taken from this image's "
                  "run, once per token and depth. Attribution patching estimates all of them from one forward and "
                  "backward pass (Nanda, 2023): gradient times the difference of the activations, a linear estimate "
                  "that can be far off where the second image changes the activations a lot.")
second = mechanisms.second_of_view(ctx.image, st.session_state, upload)
st.caption(f"Second image: {second.label}. The metric is the logit difference between the answer on this image and "
           "the second image's top class (this image's runner-up when both give the same answer); each number is "
           "the share of it a patched part brings back: (patched − second) / (this image − second), 0: nothing, "
           "100%: all of it.")


def draw_heads(lm: LoadedModel, result: PatchResult) -> None:
    widgets.show(mechanisms.patch_heads_figure(result, (lm.num_blocks, lm.num_heads), lm.role, lm.class_names),
                 key=f"dec_patch_heads_{lm.role}", filename=f"patching_heads_{lm.name}")


def heads_words(lm: LoadedModel, pair: mechanisms.PairClasses, result: PatchResult) -> None:
    st.markdown(mechanisms.metric_sentence(lm.role, pair, result, lm.class_names) + " "
                + mechanisms.patch_heads_sentence(lm.role, result))


cols = st.columns(2)
for col, lm in zip(cols, ctx.models, strict=True):
    with col:
        widgets.show(mechanisms.second_figure(ctx.display_image(lm), mechanisms.second_display(ctx, lm, second),
                                              lm.role),
                     key=f"dec_pair_{lm.role}", filename=f"patching_pair_{lm.name}")
        pair = mechanisms.pair_classes(ctx, lm, second)
        pending = mechanisms.heads_patching(ctx, lm, second)
        jobs.draw_when_ready([pending], functools.partial(draw_heads, lm))
        jobs.draw_when_ready([pending], functools.partial(heads_words, lm, pair), progress=False)
        resid = mechanisms.resid_patching(ctx, lm, second, method)
        if resid is not None:
            grid = tuple(ctx.trace(lm).grid("blocks.0"))
            widgets.show(mechanisms.resid_figure(resid, grid, lm.role), key=f"dec_resid_{lm.role}",
                         filename=f"patching_resid_{lm.name}")
            st.markdown(mechanisms.resid_sentence(lm.role, resid, grid))
st.caption("Heads: one head's output (its slice of the attention output, at every token) taken from this image's "
           "run. Residual stream: one token after the embedding or after a block, a map of the patch tokens per "
           "depth, the class token's share in its label. After the last block only the class token feeds the "
           "classifier, so it alone brings everything back there."
           + (" *Estimated*: attribution patching, a linear estimate; choose *exact* above to measure it."
              if method == "attribution" else ""))

# ----------------------------------------------------------------------------------------------
st.subheader("4 · Attention sinks: which tokens soak up attention?")
cols = st.columns(2)
views = {lm.role: mechanisms.sinks(ctx, lm) for lm in ctx.models}
for col, lm in zip(cols, ctx.models, strict=True):
    sv = views[lm.role]
    with col:
        widgets.show(mechanisms.sinks_figure(ctx.display_image(lm), sv, lm.role, f"{lm.key}|{ctx.image.key}"),
                     key=f"dec_sinks_{lm.role}", filename=f"attention_sinks_{lm.name}")
        st.markdown(mechanisms.sinks_sentence(lm.role, sv))
any_view = next(iter(views.values()))
st.caption(f"A sink receives more than {any_view.attention_factor:g}× an even share of a block's attention (the mean "
           "over heads and queries of its column); a high-norm token is over "
           f"{any_view.norm_factor:g}× the median norm of the tokens entering the block. Above each copy: the share "
           "the class token receives. **Darcet et al.** (*Vision Transformers Need Registers*, ICLR 2024) report "
           "high-norm tokens that soak up attention in large ViTs trained long, mostly on background patches; "
           "whether these small models have them is what the sentences above count.")
