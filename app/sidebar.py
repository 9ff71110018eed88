"""The sidebar every page shares: device, model pair, image, preprocessing; it builds the run's `Context`.

Owns: `sidebar()` (called by main.py each run) and its pickers: `device_picker`, `model_picker`
(name, weight source, checkpoint path / URL / upload, EMA choice; what the weight box offers comes
from `models.weight_sources`), `image_picker` (synthetic shape, sample photo, upload, camera), the
preprocessing expander, presentation mode and the notices shown above the page (untrained weights,
an unusable checkpoint or upload, an upsampled image).

The session's mode (app/access.py: local or classroom) decides which weight sources are offered;
the Models expander says which mode this is and why the other sources are missing.

May import: app.access, app.compute (`Context`), app.models, app.images, app.jobs, app.device, streamlit, t2t.
"""

from __future__ import annotations

import io
from pathlib import Path

import streamlit as st
import torch
from PIL import Image, ImageDraw

import t2t
from app.access import SessionMode, session_mode
from app.compute import Context
from app.device import configure_threads, device_name
from app.images import (
    IMAGE_SOURCES,
    IMAGE_TYPES,
    ImageChoice,
    default_image,
    image_from_bytes,
    sample_image,
    synthetic_class_names,
    synthetic_image,
    upload_error_message,
)
from app.jobs import memo
from app.models import (
    CHECKPOINT_SOURCES,
    CHECKPOINT_TYPES,
    T2T_DEFAULT,
    UNTRAINED_NOTICE,
    VIT_DEFAULT,
    LoadedModel,
    ModelTooLarge,
    UploadRefused,
    default_source,
    resolve_model,
    save_checkpoint_upload,
    source_label,
    weight_sources,
)
from t2t.images import ImageError, PreprocessSteps, sample_images


def device_picker() -> str:
    """Show the device in use; with a GPU, let the user go back to it after an out-of-memory fall-back."""
    if st.session_state.get("force_cpu") and torch.cuda.is_available():
        st.warning(st.session_state.get("device_notice", "Computing on the CPU."))
        if st.button("Use the GPU again"):
            st.session_state["force_cpu"] = False
            st.rerun()
    device = device_name()
    threads = configure_threads(device)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {threads} thread{'s' * (threads > 1)}"
    st.caption(f"Device: **{device}** ({name})")
    return device


EMA_LABEL = "use EMA weights (state_dict_ema) when present"


MISSING = {"path": "a checkpoint file on this machine", "url": "a checkpoint URL", "upload": "checkpoint uploads"}


def mode_caption(mode: SessionMode) -> None:
    """Which mode this session is in, why, and what that leaves out."""
    if mode.local:
        st.caption(f"**Local mode**: {mode.reason}. Every weight source.")
        return
    missing = [MISSING[s] for s in MISSING if s not in mode.sources]
    upload = (f" Checkpoint uploads up to {mode.checkpoint_upload_bytes // 2**20} MB."
              if "upload" in mode.sources else "")
    st.caption(f"**Classroom mode**: {mode.reason}. Weights: project-trained, released, random.{upload} "
               f"Not offered: {', '.join(missing)} (only in a browser on the server's own machine, and not with "
               "--classroom).")


def checkpoint_upload(role: str, mode: SessionMode) -> str:
    """The path of an uploaded checkpoint saved on the server ("" when none, or when it was refused)."""
    cap = mode.checkpoint_upload_bytes
    file = st.file_uploader("Checkpoint file", type=CHECKPOINT_TYPES, key=f"{role}_ckpt",
                            max_upload_size=max(1, cap // 2**20) if cap else None,
                            help=f"At most {cap // 2**20} MB." if cap else None)
    if file is None:
        return ""
    cache = st.session_state.setdefault("_ckpt_paths", {})
    path = cache.get(file.file_id)
    if path is None or not Path(path).exists():  # new, or removed from the upload folder since
        try:
            path = cache[file.file_id] = save_checkpoint_upload(file.name, file.getvalue(), cap)
        except UploadRefused as err:
            st.error(f"{err}: not used.")
            return ""
    return path


def model_picker(role: str, family: str, default: str, device: str,
                 mode: SessionMode | None = None) -> tuple[LoadedModel, list[str]]:
    """Name and weights of one model of the pair; returns it and main-area notices.

    The weights box offers only what exists for the chosen model, so it can never read
    "Project-trained" while random weights are in use; a choice that does not exist for a newly
    chosen model falls back to that model's default (shown in the box).
    """
    names = t2t.list_models(family)
    st.session_state.setdefault(f"{role}_name", default)
    if st.session_state[f"{role}_name"] not in names:
        st.session_state[f"{role}_name"] = default
    name = st.selectbox(f"{role} model", names, key=f"{role}_name")
    mode = mode or session_mode()
    sources = weight_sources(name, mode)
    if st.session_state.get(f"{role}_source") not in sources:
        st.session_state[f"{role}_source"] = default_source(name)
    source = st.selectbox(f"{role} weights", sources, format_func=lambda s: source_label(name, s),
                          key=f"{role}_source")
    location = ""
    if source == "path":
        location = st.text_input("Checkpoint path (.pth, .pth.tar, .safetensors)", key=f"{role}_path")
    elif source == "url":
        location = st.text_input("Checkpoint URL (http/https)", key=f"{role}_url")
    elif source == "upload":
        location = checkpoint_upload(role, mode)
    elif source == "released":
        st.caption(f"Downloads once from {t2t.get_config(name).url or '(none: this model has no release)'}")
    use_ema = True
    if source == "released" or source in CHECKPOINT_SOURCES:
        st.session_state.setdefault(f"{role}_ema", True)
        use_ema = st.checkbox(EMA_LABEL, key=f"{role}_ema",
                              help="Official T2T-ViT checkpoints hold the weights twice: the EMA copy (the "
                              "released top-1 numbers, and what the official evaluation loads) and the raw "
                              "`state_dict`. Off: take `state_dict`.")

    notices: list[str] = []
    if source == "random" and "embedded" not in sources:
        st.caption(f"No project-trained weights for {name} yet: {UNTRAINED_NOTICE}.")
    if source in CHECKPOINT_SOURCES and not location.strip():
        st.caption("No checkpoint given yet: using the default weights.")
    try:
        lm, error = resolve_model(role, name, source, location, device, use_ema, mode)
    except ModelTooLarge as err:  # not even the default model fits: the server's budget is set too low
        st.error(f"{role}: {err}. Ask whoever runs this server to raise T2T_LENS_MODEL_MB.")
        st.stop()
    if error:
        first, _, details = error.partition("\n")
        st.error(first)
        if details:
            st.code(details, language=None)
        notices.append(f"{role}: the checkpoint could not be used (see the sidebar); showing **{lm.label}** "
                       "instead.")
    if lm.source != "random":
        key = lm.cfg.get("state_dict_key")
        st.caption(f"Loaded: **{key}**" + (" (EMA weights)" if key in ("state_dict_ema", "model_ema") else "")
                   if key else "Loaded: a plain weight file (one dictionary, no EMA choice)")
    scale = lm.cfg.get("qk_scale")
    if scale:  # the backbone attention temperature these weights are run with (see README: the attention scale)
        st.caption(f"Backbone attention scale {scale:.4g} ({lm.cfg.get('qk_scale_rule') or 'head_dim ** -0.5'})")
    return lm, notices


def remembered(key: str, default: object) -> None:
    """Give widget `key` its last value (or `default`) before it is drawn.

    Streamlit forgets a widget's state in a run that does not draw it: without this, switching the
    image source away and back would reset the shape class and example.
    """
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get("_kept_" + key, default)
    remember(key)


def remember(key: str) -> None:
    st.session_state["_kept_" + key] = st.session_state[key]


def image_picker() -> tuple[ImageChoice, list[str]]:
    """The image from a synthetic example, a sample photo, an upload or the camera."""
    st.session_state.setdefault("image_source", IMAGE_SOURCES[0])
    source = st.radio("Image source", IMAGE_SOURCES, key="image_source", horizontal=True)
    fallback = default_image()
    data = None
    if source == "Synthetic shape":
        classes = synthetic_class_names()
        remembered("synthetic_class", classes.index("triangle"))
        remembered("synthetic_example", 0)
        c = st.selectbox("Shape class", range(len(classes)), format_func=classes.__getitem__, key="synthetic_class")
        example = st.number_input("Example", 0, 999, key="synthetic_example")
        return synthetic_image(int(c), int(example)), []
    if source == "Sample photo":
        names = list(sample_images())
        remembered("sample_name", names[0])
        if st.session_state["sample_name"] not in names:
            st.session_state["sample_name"] = names[0]
        name = st.selectbox("Photo", names, key="sample_name")
        return sample_image(name), []
    if source == "Upload":
        data = st.file_uploader("Image file", type=IMAGE_TYPES, key="upload",
                                help="PNG, JPEG, WebP, BMP, GIF or TIFF")
    else:
        if st.toggle("Turn the camera on", key="camera_on"):
            data = st.camera_input("Take a photo", key="camera")
    if data is None:
        st.caption(f"Nothing chosen yet: showing the {fallback.label}.")
        return fallback, []
    try:
        return image_from_bytes(data.name, data.getvalue()), []
    except ImageError as err:
        message = upload_error_message(data.name, err)
        st.error(message)
        return fallback, [f"The uploaded image could not be used: {err} Showing the {fallback.label} instead."]


# Streamlit sends an st.image as a JPEG (quality 90) no wider than its `width`: an image given at that
# width as such a JPEG goes out as it is, where a larger PNG was decoded, resized and encoded again.
PREPROCESSING_WIDTH, THUMBNAIL_WIDTH = 120, 160


@memo  # in the per-image cache, under its budget in bytes
def preprocessing_images(model_key: str, image_key: str, _steps: PreprocessSteps) -> list[bytes]:
    """JPEGs of the original with the crop drawn on it, and of the model input (encoded once)."""
    original = _steps.original.copy()
    original.thumbnail((2 * PREPROCESSING_WIDTH, 2 * PREPROCESSING_WIDTH))  # the crop's box drawn at 2x, then shrunk
    scale = original.size[0] / _steps.original.size[0]
    ImageDraw.Draw(original).rectangle([v * scale for v in _steps.crop_box_original], outline="red", width=3)
    return [jpeg_bytes(original, PREPROCESSING_WIDTH), jpeg_bytes(_steps.cropped, PREPROCESSING_WIDTH)]


@memo
def thumbnail(image_key: str, _image: Image.Image) -> bytes:
    return jpeg_bytes(_image, THUMBNAIL_WIDTH)


def jpeg_bytes(image: Image.Image, width: int) -> bytes:
    """`image` at most `width` pixels wide as a JPEG of Streamlit's quality (90): st.image sends it unchanged."""
    small = image.convert("RGB")
    if small.width > width:
        small = small.resize((width, max(1, round(small.height * width / small.width))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=90)
    return buf.getvalue()


PREPROCESSING_KEY = "preprocessing_open"


def preprocessing(ctx: Context) -> None:
    """Resize, crop and normalisation of each model, shown step by step.

    Drawn only while the expander is open (its opening reruns the page): closed, as it starts, it costs
    a new image nothing (its four pictures were 30-50 ms of a new image's run)."""
    remembered(PREPROCESSING_KEY, False)  # open or closed as last left, on every page
    box = st.expander("Preprocessing: what the models see", key=PREPROCESSING_KEY, on_change="rerun")
    if not box.open:
        return
    with box:
        for lm in ctx.models:
            steps = ctx.steps(lm)
            st.markdown(f"**{lm.name}** — mean {tuple(round(v, 3) for v in lm.cfg['mean'])}, "
                        f"std {tuple(round(v, 3) for v in lm.cfg['std'])}, crop {lm.crop_pct:g}")
            st.image(preprocessing_images(lm.key, ctx.image.key, steps), width=PREPROCESSING_WIDTH,
                     caption=["original, red: the crop", "model input"])
            st.markdown("\n".join(f"{i + 1}. {line}" for i, line in enumerate(steps.description)))


PRESENTATION_CSS = """<style>
html { font-size: 20px; }  /* Streamlit sizes its text in rem: everything grows by 20/16 */
[data-testid="stMainBlockContainer"] { padding-left: 2rem; padding-right: 2rem; max-width: 100%; }
</style>"""


def upsampling_notices(ctx: Context) -> list[str]:
    """For an image smaller than a model's input: by how much it was enlarged (its detail is interpolated)."""
    out = []
    for lm in ctx.models:
        steps = ctx.steps(lm)
        if steps.upsampled:
            w, h = steps.original.size
            out.append(f"The image is only {w}×{h} pixels: it was upsampled {steps.resize_factor:.3g}× for "
                       f"{lm.role} ({lm.img_size} px input), so everything finer than one original pixel is "
                       "interpolation, not image.")
    return out


def sidebar() -> tuple[Context, list[str]]:
    notices: list[str] = []
    with st.sidebar:
        st.title("t2t-lens")
        st.toggle("Presentation mode", key="present",
                  help="Larger text and figures for a projector; fold the sidebar away with its « button. "
                  "Every page's address holds the view: copy it to make a lesson link.")
        if st.session_state.get("present"):
            st.markdown(PRESENTATION_CSS, unsafe_allow_html=True)
        device = device_picker()
        mode = session_mode()
        with st.expander("Models", expanded=True):
            mode_caption(mode)
            t2t_model, n1 = model_picker("T2T-ViT", "t2t", T2T_DEFAULT, device, mode)
            vit_model, n2 = model_picker("ViT", "vit", VIT_DEFAULT, device, mode)
        st.subheader("Image")
        image, n3 = image_picker()
        st.image(thumbnail(image.key, image.image), caption=image.label, width=THUMBNAIL_WIDTH)
        notices += n1 + n2 + n3
        ctx = Context(t2t_model, vit_model, image, device)
        notices += upsampling_notices(ctx)
        untrained = [lm.name for lm in ctx.models if not lm.trained]
        if untrained:
            notices.insert(0, f"**{UNTRAINED_NOTICE.capitalize()}**: {' and '.join(untrained)} "
                           f"{'is' if len(untrained) == 1 else 'are'} random, not trained. The views show the "
                           "architecture at work, not what training taught it.")
        preprocessing(ctx)
    return ctx, notices
