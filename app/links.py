"""Lesson links: the view in the address bar, and the address bar read back into the widgets.

Owns: which URL parameter holds which widget's session-state key and how its text is parsed
(`COMMON_PARAMS` on every page, `PAGE_PARAMS` per page, `_decode` / `_encode` per kind),
`restore_from_url` (a session's first run) and `write_to_url` (every run). A new page adds its
parameters to `PAGE_PARAMS` under its st.Page url_path; a new kind of value adds a branch to
`_decode` and `_encode`. A malformed value is skipped here, and pages clamp numbers that are out of
range for the models in use, so no link can break a page.

May import: app.images (image sources, synthetic class names), streamlit.
"""

from __future__ import annotations

import streamlit as st

from app.images import IMAGE_SOURCES, synthetic_class_names

# Each URL parameter names one widget's session-state key and how its value is written. The common
# ones (models, weights, image, presentation mode) are on every page, the others on their page only.
# A link is read once, at a session's first run, before any widget exists; every run then writes the
# view back, so the address bar always holds a link that reopens this exact view in a new browser.
SHAPE = "shape"
IMAGE_SOURCE_PARAM = {"Synthetic shape": SHAPE, "Sample photo": "photo", "Upload": "upload", "Camera": "camera"}
assert set(IMAGE_SOURCE_PARAM) == set(IMAGE_SOURCES)  # every image source has its word in a link
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
        return synthetic_class_names().index(text)
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
        return synthetic_class_names()[int(value)]  # type: ignore[call-overload]
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
