"""Page 5: top-5 classes of both models, for the chosen image or a batch of images.

The batch section is an `st.fragment`: its widgets (source, size, button, uploads) rerun that section only,
not the sidebar and the chosen image's top-5 above it (issue 29)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, compute, figures, images, widgets
from t2t.images import ImageError

BATCH_UPLOADS = 32  # a class shares one server: a batch of uploads is classified this many at a time

ctx = compute.context()
st.header("Classify")
widgets.explain_text(
    "The five most likely classes of each model, with their probabilities. The shipped models were trained "
    "on ten synthetic shape classes (stripes, rings, triangles, …), so they can only answer with those; a "
    "model with released weights answers with the classes of its dataset (the 1000 ImageNet-1k classes, or "
    "CIFAR's 10 or 100). Look for: do the two models "
    "agree? How sure are they? Try a batch of synthetic test images to compare their accuracy, or upload your "
    "own images."
)

colours = {ctx.t2t.role: figures.T2T_COLOUR, ctx.vit.role: figures.VIT_COLOUR}
cols = st.columns(2)
top1 = {}
for col, lm in zip(cols, ctx.models, strict=True):
    probs = compute.probabilities(ctx.trace(lm))
    pairs = compute.top_k(probs, lm.class_names)
    top1[lm.role] = pairs[0][0]
    with col:
        widgets.show(charts.topk_figure(pairs, f"{lm.role}: {lm.label}", colours[lm.role]), key=f"cls_{lm.role}")
        widgets.domain_notice(lm, ctx.image)
outside = [lm.role for lm in ctx.models if widgets.domain_warning(lm, ctx.image)]
caveat = f" ({' and '.join(outside)}: outside {'its' if len(outside) == 1 else 'their'} training, see above)" \
    if outside else ""
if len(set(top1.values())) == 1:
    st.success(f"Both models say **{top1[ctx.t2t.role]}**{caveat}.")
else:
    st.warning(" · ".join(f"{r} says **{c}**" for r, c in top1.items()) + caveat)
widgets.class_list(ctx.models)


@st.fragment
def batch_section() -> None:
    """A batch of synthetic test images or uploads through both models, in a table with the agreement and,
    for labelled images, the accuracy."""
    st.subheader("A batch of images")
    source = st.radio("Batch", ["Synthetic test images (with labels)", "My uploads"], horizontal=True,
                      key="batch_source")
    batch: list[tuple[images.ImageChoice, str | None]] = []
    if source.startswith("Synthetic"):
        n = st.select_slider("How many", [10, 20, 50, 100], value=20, key="batch_n")
        classes = images.synthetic_class_names()
        batch = [(im, classes[label]) for im, label in images.synthetic_batch(int(n))]
        run_batch = st.button("Classify the batch", key="batch_go", type="primary")
    else:
        files = st.file_uploader("Images", type=images.IMAGE_TYPES, accept_multiple_files=True, key="batch_upload",
                                 help=f"At most {BATCH_UPLOADS} images are classified at a time.")
        run_batch = bool(files)
        if files and len(files) > BATCH_UPLOADS:  # one session must not hold the server's cores for hundreds
            st.warning(f"{len(files)} images uploaded: classifying the first {BATCH_UPLOADS}. "
                       "Remove some to see the others.")
            files = files[:BATCH_UPLOADS]
        for file in files or []:
            try:
                batch.append((images.image_from_bytes(file.name, file.getvalue()), None))
            except ImageError as err:
                st.error(images.upload_error_message(file.name, err))

    if run_batch and batch:
        progress = st.progress(0.0, text="Classifying …")
        rows = []
        for i, (image, truth) in enumerate(batch):
            row: dict[str, object] = {"image": image.label}
            if truth is not None:
                row["true class"] = truth
            for lm in ctx.models:
                probs = compute.predict(lm, image)
                k = int(np.argmax(probs))
                row[f"{lm.role}"] = lm.class_names[k]
                row[f"{lm.role} p"] = float(probs[k])
            rows.append(row)
            progress.progress((i + 1) / len(batch), text=f"Classified {i + 1} of {len(batch)}")
        progress.empty()
        table = pd.DataFrame(rows)
        roles = [lm.role for lm in ctx.models]
        table["agree"] = table[roles[0]] == table[roles[1]]
        m = st.columns(3)
        m[0].metric("Images", len(table))
        m[1].metric("The models agree on", f"{table['agree'].mean():.0%}")
        if "true class" in table:
            acc = {r: (table[r] == table["true class"]).mean() for r in roles}
            m[2].metric("Accuracy", " · ".join(f"{r} {a:.0%}" for r, a in acc.items()))
        if source == "My uploads":
            for lm in ctx.models:
                warning = widgets.domain_warning(lm, batch[0][0], what="An uploaded image") if batch else None
                if warning:
                    st.warning(warning)
        st.dataframe(table, hide_index=True, column_config={
            f"{r} p": st.column_config.ProgressColumn(f"{r} probability", min_value=0.0, max_value=1.0, format="%.2f")
            for r in roles})
    elif source == "My uploads" and not batch:
        st.caption("Upload one or more images (PNG, JPEG, WebP, BMP, GIF, TIFF).")


batch_section()
