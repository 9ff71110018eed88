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

S.import_page_modules()  # once per process, before any page runs: sessions are threads of one process

# A lesson link with present=1 opens in presentation mode, the sidebar folded away.
st.set_page_config(page_title="t2t-lens", page_icon=":material/grid_on:", layout="wide",
                   initial_sidebar_state="collapsed" if st.query_params.get("present") == "1" else "auto")

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


# ---- lesson links: the view in the URL ----------------------------------------------------------------
# Each URL parameter names one widget's session-state key and how its value is written. The common
# ones (models, weights, image, presentation mode) are on every page, the others on their page only.
# A link is read once, at a session's first run, before any widget exists; every run then writes the
# view back, so the address bar always holds a link that reopens this exact view in a new browser.
SHAPE = "shape"
IMAGE_SOURCE_PARAM = {"Synthetic shape": SHAPE, "Sample photo": "photo", "Upload": "upload", "Camera": "camera"}
CARRY_MODES = ("coverage", "mass", "stretch")
COMMON_PARAMS = (("t2t", "T2T-ViT_name", "str"), ("t2t_w", "T2T-ViT_source", "str"), ("t2t_ema", "T2T-ViT_ema", "bool"),
                 ("vit", "ViT_name", "str"), ("vit_w", "ViT_source", "str"), ("vit_ema", "ViT_ema", "bool"),
                 ("img", "image_source", "source"), ("shape", "synthetic_class", "shape"),
                 ("ex", "synthetic_example", "int"), ("photo", "sample_name", "str"), ("present", "present", "bool"))
PAGE_PARAMS = {  # st.Page url_path -> parameters of that page
    "tokens": (("tok", ("tok_row", "tok_col"), "pair"), ("step", "t2t_step", "str")),
    "attention": (("model", "att_model", "str"), ("block", "att_block", "int"), ("head", "att_head", "head"),
                  ("cls", "att_cls", "bool"), ("tok", ("att_row", "att_col"), "pair"), ("top60", "att_top60", "bool")),
    "explanations": (("slow", "exp_expensive", "bool"), ("methods", "exp_methods", "list"),
                     ("explain", "exp_which", "str"), ("carry", "exp_carry", "str"), ("rule", "exp_rule", "str"),
                     ("discard", "exp_discard", "float"), ("faith", "exp_faith", "bool"), ("steps", "exp_steps", "int"),
                     ("ig", "exp_ig_on", "bool")),
    "features": (("ch", "fr_channels", "int"), ("thr", "fr_threshold", "float"),
                 ("t2t_block", "fr_block_T2T-ViT", "int"), ("vit_block", "fr_block_ViT", "int"),
                 ("rank", "fr_rank", "bool"), ("cka", "cka_on", "bool"), ("n", "cka_n", "int"),
                 ("feat", "cka_reduce", "str")),
    "classify": (),
}


def _decode(kind: str, text: str) -> object:
    """A URL parameter's text as the widget value; raises ValueError for a malformed one."""
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text not in ("0", "1"):
            raise ValueError(text)
        return text == "1"
    if kind == "head":
        return "mean" if text == "mean" else int(text)
    if kind == "list":
        return [v for v in text.split(",") if v]
    if kind == "pair":
        r, c = text.split(",")
        return int(r), int(c)
    if kind == "source":
        return {v: k for k, v in IMAGE_SOURCE_PARAM.items()}[text]
    if kind == "shape":
        return S.synthetic_class_names().index(text)
    return text


def _encode(kind: str, value: object) -> str:
    if kind == "bool":
        return "1" if value else "0"
    if kind == "list":
        return ",".join(map(str, value))  # type: ignore[arg-type]
    if kind == "pair":
        return ",".join(str(int(v)) for v in value)  # type: ignore[union-attr]
    if kind == "source":
        return IMAGE_SOURCE_PARAM[str(value)]
    if kind == "shape":
        return S.synthetic_class_names()[int(value)]  # type: ignore[call-overload]
    if kind == "float":
        return f"{float(value):g}"  # type: ignore[arg-type]
    return str(value)


def _params(url_path: str) -> tuple:
    return COMMON_PARAMS + PAGE_PARAMS.get(url_path or "tokens", ())


def restore_from_url(url_path: str) -> None:
    """At a session's first run, set the widgets' session state from the link it was opened with.

    A malformed or unknown value is skipped (the widget keeps its default); the pages clamp
    numbers that are out of range for the models in use.
    """
    if st.session_state.get("_url_restored"):
        return
    st.session_state["_url_restored"] = True
    query = st.query_params
    for name, key, kind in _params(url_path):
        if name not in query:
            continue
        try:
            value = _decode(kind, query[name])
        except (ValueError, KeyError, IndexError):
            continue
        if isinstance(key, tuple):
            for k, v in zip(key, value, strict=True):  # type: ignore[call-overload]
                st.session_state[k] = v
        else:
            st.session_state[key] = value


def write_to_url(url_path: str) -> None:
    """Write the current view (common widgets and this page's) into the address bar."""
    params: dict[str, str] = {}
    for name, key, kind in _params(url_path):
        keys = key if isinstance(key, tuple) else (key,)
        if not all(k in st.session_state for k in keys):
            continue
        if name in ("shape", "ex") and st.session_state.get("image_source") != "Synthetic shape":
            continue
        if name == "photo" and st.session_state.get("image_source") != "Sample photo":
            continue
        if name.endswith("_ema") and st.session_state[key] is True:  # the default: keep links short
            continue
        value = tuple(st.session_state[k] for k in keys) if isinstance(key, tuple) else st.session_state[key]
        params[name] = _encode(kind, value)
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)


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


SOURCE_LABELS = {  # short enough to show whole in the sidebar's select boxes
    "embedded": "Project-trained (shipped)",
    "random": "Random (untrained)",
    "released": "ImageNet-1k (download)",
    "path": "File on this machine",
    "upload": "Upload a file",
    "url": "From a URL",
}
EMA_LABEL = "use EMA weights (state_dict_ema) when present"


def weight_sources(name: str) -> list[str]:
    """The weight choices offered for `name`: project-trained only where the repository ships them."""
    return [s for s in S.WEIGHT_SOURCES if s != "embedded" or name in t2t.list_embedded()]


def model_picker(role: str, family: str, default: str, device: str) -> tuple[S.LoadedModel, list[str]]:
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
    sources = weight_sources(name)
    if st.session_state.get(f"{role}_source") not in sources:
        st.session_state[f"{role}_source"] = S.default_source(name)
    source = st.selectbox(f"{role} weights", sources, format_func=SOURCE_LABELS.__getitem__, key=f"{role}_source")
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
    use_ema = True
    if source in ("released", "path", "url", "upload"):
        st.session_state.setdefault(f"{role}_ema", True)
        use_ema = st.checkbox(EMA_LABEL, key=f"{role}_ema",
                              help="Official T2T-ViT checkpoints hold the weights twice: the EMA copy (the "
                              "released top-1 numbers, and what the official evaluation loads) and the raw "
                              "`state_dict`. Off: take `state_dict`.")

    notices: list[str] = []
    if source == "random" and "embedded" not in sources:
        st.caption(f"No project-trained weights for {name} yet: {S.UNTRAINED_NOTICE}.")
    if source in ("path", "url", "upload") and not location.strip():
        st.caption("No checkpoint given yet: using the default weights.")
    lm, error = S.resolve_model(role, name, source, location, device, use_ema)
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


def image_picker() -> tuple[S.ImageChoice, list[str]]:
    """The image from a synthetic example, a sample photo, an upload or the camera."""
    st.session_state.setdefault("image_source", IMAGE_SOURCES[0])
    source = st.radio("Image source", IMAGE_SOURCES, key="image_source", horizontal=True)
    fallback = S.default_image()
    data = None
    if source == "Synthetic shape":
        classes = S.synthetic_class_names()
        remembered("synthetic_class", classes.index("triangle"))
        remembered("synthetic_example", 0)
        c = st.selectbox("Shape class", range(len(classes)), format_func=classes.__getitem__, key="synthetic_class")
        example = st.number_input("Example", 0, 999, key="synthetic_example")
        return S.synthetic_image(int(c), int(example)), []
    if source == "Sample photo":
        names = list(sample_images())
        remembered("sample_name", names[0])
        if st.session_state["sample_name"] not in names:
            st.session_state["sample_name"] = names[0]
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


@S.memo  # in the per-image cache, under its budget in bytes
def preprocessing_images(model_key: str, image_key: str, _steps: PreprocessSteps) -> list[bytes]:
    """PNGs of the original with the crop drawn on it, and of the model input (encoded once)."""
    original = _steps.original.copy()
    original.thumbnail((256, 256))
    scale = original.size[0] / _steps.original.size[0]
    ImageDraw.Draw(original).rectangle([v * scale for v in _steps.crop_box_original], outline="red", width=3)
    return [png_bytes(original), png_bytes(_steps.cropped)]


@S.memo
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


PRESENTATION_CSS = """<style>
html { font-size: 20px; }  /* Streamlit sizes its text in rem: everything grows by 20/16 */
[data-testid="stMainBlockContainer"] { padding-left: 2rem; padding-right: 2rem; max-width: 100%; }
</style>"""


def upsampling_notices(ctx: S.Context) -> list[str]:
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


def sidebar() -> tuple[S.Context, list[str]]:
    notices: list[str] = []
    with st.sidebar:
        st.title("t2t-lens")
        st.toggle("Presentation mode", key="present",
                  help="Larger text and figures for a projector; fold the sidebar away with its « button. "
                  "Every page's address holds the view: copy it to make a lesson link.")
        if st.session_state.get("present"):
            st.markdown(PRESENTATION_CSS, unsafe_allow_html=True)
        device = device_picker()
        with st.expander("Models", expanded=True):
            t2t_model, n1 = model_picker("T2T-ViT", "t2t", S.T2T_DEFAULT, device)
            vit_model, n2 = model_picker("ViT", "vit", S.VIT_DEFAULT, device)
        st.subheader("Image")
        image, n3 = image_picker()
        st.image(thumbnail(image.key, image.image), caption=image.label, width=160)
        notices += n1 + n2 + n3
        ctx = S.Context(t2t_model, vit_model, image, device)
        notices += upsampling_notices(ctx)
        untrained = [lm.name for lm in ctx.models if not lm.trained]
        if untrained:
            notices.insert(0, f"**{S.UNTRAINED_NOTICE.capitalize()}**: {' and '.join(untrained)} "
                           f"{'is' if len(untrained) == 1 else 'are'} random, not trained. The views show the "
                           "architecture at work, not what training taught it.")
        preprocessing(ctx)
    return ctx, notices


page = st.navigation(PAGES)
S.new_run()
restore_from_url(page.url_path)
context, messages = sidebar()
st.session_state[S.CTX_KEY] = context
for message in messages:
    st.warning(message)
page.run()
write_to_url(page.url_path)
S.finish_run()  # results of this run's quick background jobs, drawn in their places
S.return_free_memory()
