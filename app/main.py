"""t2t-lens: see inside Tokens-to-Token ViT and compare it with ViT.

Run from the repository root:  streamlit run app/main.py

This script draws the sidebar shared by every page (model pair, device, image, preprocessing),
stores what it chose as a `Context` in session state, then runs the page picked in the
navigation (`app/views/`).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

import io  # noqa: E402

import streamlit as st  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import t2t  # noqa: E402
from app import _state as S  # noqa: E402
from t2t.images import ImageError, PreprocessSteps, sample_images  # noqa: E402

st.set_page_config(page_title="t2t-lens", page_icon=":material/grid_on:", layout="wide")

# The pages live in views/, not pages/: Streamlit treats a pages/ folder beside the main script as its
# legacy multipage app, which runs a deep-linked page (e.g. /attention as a session's first request)
# without this script, hence without the sidebar and its context.
PAGES = [
    st.Page("views/1_tokens_to_token.py", title="Tokens-to-Token, step by step", icon=":material/grid_on:",
            url_path="tokens", default=True),
    st.Page("views/2_attention.py", title="Attention explorer", icon=":material/visibility:", url_path="attention"),
    st.Page("views/3_explanations.py", title="Explanations", icon=":material/lightbulb:", url_path="explanations"),
    st.Page("views/4_feature_richness.py", title="Feature richness", icon=":material/texture:",
            url_path="features"),
    st.Page("views/5_classify.py", title="Classify", icon=":material/bar_chart:", url_path="classify"),
]
IMAGE_SOURCES = ("Synthetic shape", "Sample photo", "Upload", "Camera")


def device_picker() -> str:
    """Show the device in use; with a GPU, let the user go back to it after an out-of-memory fall-back."""
    if st.session_state.get("force_cpu") and torch.cuda.is_available():
        st.warning(st.session_state.get("device_notice", "Computing on the CPU."))
        if st.button("Use the GPU again"):
            st.session_state["force_cpu"] = False
            st.rerun()
    device = S.device_name()
    threads = S.configure_threads(device)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {threads} thread{'s' * (threads > 1)}"
    st.caption(f"Device: **{device}** ({name})")
    return device


def model_picker(role: str, family: str, default: str, device: str) -> tuple[S.LoadedModel, list[str]]:
    """Name and weights of one model of the pair; returns it and main-area notices."""
    names = t2t.list_models(family)
    name = st.selectbox(f"{role} model", names, index=names.index(default), key=f"{role}_name")
    sources = list(S.WEIGHT_SOURCES)
    source = st.selectbox(f"{role} weights", sources, format_func=S.WEIGHT_SOURCES.__getitem__,
                          key=f"{role}_source")
    location = ""
    if source == "path":
        location = st.text_input("Checkpoint path (.pth, .pth.tar, .safetensors)", key=f"{role}_path")
    elif source == "url":
        location = st.text_input("Checkpoint URL (http/https)", key=f"{role}_url")
    elif source == "upload":
        file = st.file_uploader("Checkpoint file", type=S.CHECKPOINT_TYPES, key=f"{role}_ckpt")
        if file is not None:
            cache = st.session_state.setdefault("_ckpt_paths", {})
            if file.file_id not in cache:
                cache[file.file_id] = S.save_checkpoint_upload(file.name, file.getvalue())
            location = cache[file.file_id]
    elif source == "released":
        st.caption(f"Downloads once from {t2t.get_config(name).url or '(none: this model has no release)'}")

    notices: list[str] = []
    if source == "embedded" and name not in t2t.list_embedded():
        source = "random"
        st.caption(f"No project-trained weights for {name} yet: {S.UNTRAINED_NOTICE}.")
    if source in ("path", "url", "upload") and not location.strip():
        st.caption("No checkpoint given yet: using the default weights.")
    lm, error = S.resolve_model(role, name, source, location, device)
    if error:
        first, _, details = error.partition("\n")
        st.error(first)
        if details:
            st.code(details, language=None)
        notices.append(f"{role}: the checkpoint could not be used (see the sidebar); showing **{lm.label}** "
                       "instead.")
    return lm, notices


def image_picker() -> tuple[S.ImageChoice, list[str]]:
    """The image from a synthetic example, a sample photo, an upload or the camera."""
    source = st.radio("Image source", IMAGE_SOURCES, key="image_source", horizontal=True)
    fallback = S.default_image()
    data = None
    if source == "Synthetic shape":
        classes = S.synthetic_class_names()
        c = st.selectbox("Shape class", range(len(classes)), index=classes.index("triangle"),
                         format_func=classes.__getitem__, key="synthetic_class")
        example = st.number_input("Example", 0, 999, 0, key="synthetic_example")
        return S.synthetic_image(int(c), int(example)), []
    if source == "Sample photo":
        names = list(sample_images())
        name = st.selectbox("Photo", names, key="sample_name")
        return S.sample_image(name), []
    if source == "Upload":
        data = st.file_uploader("Image file", type=S.IMAGE_TYPES, key="upload",
                                help="PNG, JPEG, WebP, BMP, GIF or TIFF")
    else:
        if st.toggle("Turn the camera on", key="camera_on"):
            data = st.camera_input("Take a photo", key="camera")
    if data is None:
        st.caption(f"Nothing chosen yet: showing the {fallback.label}.")
        return fallback, []
    try:
        return S.image_from_bytes(data.name, data.getvalue()), []
    except ImageError as err:
        message = S.upload_error_message(data.name, err)
        st.error(message)
        return fallback, [f"The uploaded image could not be used: {err} Showing the {fallback.label} instead."]


@st.cache_resource(max_entries=32, show_spinner=False)
def preprocessing_images(model_key: str, image_key: str, _steps: PreprocessSteps) -> list[bytes]:
    """PNGs of the original with the crop drawn on it, and of the model input (encoded once)."""
    original = _steps.original.copy()
    original.thumbnail((256, 256))
    scale = original.size[0] / _steps.original.size[0]
    ImageDraw.Draw(original).rectangle([v * scale for v in _steps.crop_box_original], outline="red", width=3)
    return [png_bytes(original), png_bytes(_steps.cropped)]


@st.cache_resource(max_entries=32, show_spinner=False)
def thumbnail(image_key: str, _image: Image.Image) -> bytes:
    small = _image.copy()
    small.thumbnail((320, 320))
    return png_bytes(small)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def preprocessing(ctx: S.Context) -> None:
    """Resize, crop and normalisation of each model, shown step by step."""
    with st.expander("Preprocessing: what the models see", expanded=False):
        for lm in ctx.models:
            steps = ctx.steps(lm)
            st.markdown(f"**{lm.name}** — mean {tuple(round(v, 3) for v in lm.cfg['mean'])}, "
                        f"std {tuple(round(v, 3) for v in lm.cfg['std'])}, crop {lm.crop_pct:g}")
            st.image(preprocessing_images(lm.key, ctx.image.key, steps), width=120,
                     caption=["original, red: the crop", "model input"])
            st.markdown("\n".join(f"{i + 1}. {line}" for i, line in enumerate(steps.description)))


def sidebar() -> tuple[S.Context, list[str]]:
    notices: list[str] = []
    with st.sidebar:
        st.title("t2t-lens")
        device = device_picker()
        with st.expander("Models", expanded=True):
            t2t_model, n1 = model_picker("T2T-ViT", "t2t", S.T2T_DEFAULT, device)
            vit_model, n2 = model_picker("ViT", "vit", S.VIT_DEFAULT, device)
        st.subheader("Image")
        image, n3 = image_picker()
        st.image(thumbnail(image.key, image.image), caption=image.label, width=160)
        notices += n1 + n2 + n3
        ctx = S.Context(t2t_model, vit_model, image, device)
        untrained = [lm.name for lm in ctx.models if not lm.trained]
        if untrained:
            notices.insert(0, f"**{S.UNTRAINED_NOTICE.capitalize()}**: {' and '.join(untrained)} "
                           f"{'is' if len(untrained) == 1 else 'are'} random, not trained. The views show the "
                           "architecture at work, not what training taught it.")
        preprocessing(ctx)
    return ctx, notices


page = st.navigation(PAGES)
context, messages = sidebar()
st.session_state[S.CTX_KEY] = context
for message in messages:
    st.warning(message)
page.run()
