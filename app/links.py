"""Lesson links: the view in the address bar, and the address bar read back into the widgets.

Owns: which URL parameter holds which widget's session-state key and how its text is parsed
(`COMMON_PARAMS` on every page, `PAGE_PARAMS` per page, `_decode` / `_encode` per kind),
`restore_from_url` (a session's first run), `link_notices` (after that run's page: what the page
could not show as the link asked) and `write_to_url` (every run); for guided tours (app/tours.py),
`decode_param` (a tour file's value, checked as a link's is), `view_keys` (every page's widget keys:
a tour step starts from their defaults), `expect` (a step's values, named in a notice when a page
changes one) and `tour_query` / `write_tour_to_url` (a step's address: `?tour=NAME&step=K`, plus the
models and image when they are not the defaults). A new page adds its parameters to `PAGE_PARAMS`
under its st.Page url_path (and its fixed ranges to `RANGES`); a new kind of value adds a branch to
`_decode` and `_encode`.

A link is input from anyone: every value is checked here (type, finite, range, length, the model
names of the registry, and the weight sources this session's mode allows: a link can never widen
them), a refused value is named in a notice and the widget keeps its default; pages clamp numbers
that are out of range for the models in use, and `link_notices` says so; a first run that fails all
the same is run again without the link's values (main.py, `forget_link`).

May import: app.access, app.models, app.images (image sources, synthetic class names), streamlit, t2t.
"""

from __future__ import annotations

import math

import streamlit as st

import t2t
from app.access import session_mode
from app.images import IMAGE_SOURCES, synthetic_class_names
from app.models import T2T_DEFAULT, VIT_DEFAULT, default_source, weight_sources
from t2t.images import sample_images

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
                     ("ig", "exp_ig_on", "bool"), ("sanity", "exp_sanity", "bool")),
    "features": (("ch", "fr_channels", "int"), ("thr", "fr_threshold", "float"),
                 ("t2t_block", "fr_block_T2T-ViT", "int"), ("vit_block", "fr_block_ViT", "int"),
                 ("rank", "fr_rank", "bool"), ("cka", "cka_on", "bool"), ("n", "cka_n", "int"),
                 ("feat", "cka_reduce", "str"), ("nb_size", "fr_nb_size", "int"), ("nb_layer", "fr_nb_depth", "int"),
                 ("nb_pos", "fr_nb_inputs", "str")),
    "classify": (),
    "knockouts": (("t2t_heads", "ko_heads_T2T-ViT", "list"), ("vit_heads", "ko_heads_ViT", "list"),
                  ("attn1", "ko_attn1", "bool"), ("attn2", "ko_attn2", "bool"), ("mode", "ko_mode", "str"),
                  ("map", "ko_map", "str"), ("prune", "ko_prune", "bool"), ("prune_n", "ko_prune_n", "int")),
    "decision": (("t2t_block", "dec_block_T2T-ViT", "int"), ("t2t_head", "dec_head_T2T-ViT", "int"),
                 ("vit_block", "dec_block_ViT", "int"), ("vit_head", "dec_head_ViT", "int"),
                 ("second", "dec_second", "str"), ("other", "dec_other", "shape"), ("other_ex", "dec_other_ex", "int"),
                 ("second_photo", "dec_photo", "str"), ("resid", "dec_resid", "str")),
    "sandbox": tuple((f"{w}{i}", f"sb_{w}{i}", "int") for i in range(3) for w in "ksp")
    + (("size", "sb_size", "int"), ("try", "sb_try", "bool")),
}


# Fixed ranges of the pages' widgets (a page that changes one changes it here); every other whole number
# (blocks, heads, tokens) must be 0 to MAX_INDEX, and the pages clamp it to the models in use.
RANGES: dict[str, tuple[float, float]] = {"ex": (0, 999), "steps": (4, 20), "discard": (0.0, 0.95),
                                          "thr": (0.02, 0.5), "size": (32, 512),
                                          **{f"k{i}": (1, 15) for i in range(3)}, **{f"s{i}": (1, 8) for i in range(3)},
                                          **{f"p{i}": (0, 7) for i in range(3)}}
MAX_INDEX = 10_000
MAX_TEXT = 3000  # characters of a value: every head of ViT-L/16 as a list ("23.15," x 384) takes about 2,300
MAX_ITEMS = 400  # entries of a list value (the most heads of a registry model: 24 blocks x 16 = 384)


class LinkError(ValueError):
    """A link value that cannot be used; the message says why, for the notice."""


def _number(text: str, name: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise LinkError(f"not a {'whole number' if kind is int else 'number'}") from None
    lo, hi = RANGES.get(name, (0, MAX_INDEX))
    if not math.isfinite(value):
        raise LinkError("not a finite number")
    if not lo <= value <= hi:
        raise LinkError(f"outside {lo:g} to {hi:g}")
    return value


def _decode(kind: str, text: str, name: str = "") -> object:
    """A URL parameter's text as the widget value; raises LinkError (a ValueError) saying what is wrong."""
    if len(text) > MAX_TEXT:
        raise LinkError(f"{len(text)} characters, more than {MAX_TEXT}")
    if kind == "int":
        return int(_number(text, name, int))
    if kind == "float":
        return float(_number(text, name, float))
    if kind == "bool":
        if text not in ("0", "1"):
            raise LinkError("not 0 or 1")
        return text == "1"
    if kind == "head":
        return "mean" if text == "mean" else int(_number(text, name, int))
    if kind == "list":
        items = [v for v in text.split(",") if v]
        if len(items) > MAX_ITEMS:
            raise LinkError(f"{len(items)} entries, more than {MAX_ITEMS}")
        return items
    if kind == "pair":
        parts = text.split(",")
        if len(parts) != 2:
            raise LinkError("not two whole numbers (row,column)")
        return int(_number(parts[0], name, int)), int(_number(parts[1], name, int))
    if kind == "source":
        sources = {v: k for k, v in IMAGE_SOURCE_PARAM.items()}
        if text not in sources:
            raise LinkError(f"not one of {', '.join(sources)}")
        return sources[text]
    if kind == "shape":
        if text not in synthetic_class_names():
            raise LinkError("not a shape class")
        return synthetic_class_names().index(text)
    return text


def _check(name: str, value: object, query: dict[str, str]) -> None:
    """Checks that need more than the value: model names, weight sources (this session's mode), photos."""
    if name in ("t2t", "vit") and value not in t2t.list_models(name):
        raise LinkError(f"not a {'T2T-ViT' if name == 't2t' else 'ViT'} model of the registry")
    if name in ("t2t_w", "vit_w"):
        model = query.get(name[:-2], T2T_DEFAULT if name == "t2t_w" else VIT_DEFAULT)
        mode = session_mode()
        if value not in mode.sources:
            raise LinkError(f"not a weight source of this session ({mode.mode} mode: {mode.reason}); "
                            "a link cannot add one")
        if model in t2t.list_models() and value not in weight_sources(model, mode):
            raise LinkError(f"not offered for {model}")
    if name == "photo" and value not in sample_images():
        raise LinkError("not a sample photo")


def _shown(text: str) -> str:
    """A link value as a notice quotes it: at most 40 characters, and nothing Markdown would format."""
    short = text if len(text) <= 40 else text[:40] + f"… ({len(text)} characters)"
    return "`" + short.replace("`", "'").replace("\n", " ") + "`"


def shown(text: str) -> str:
    """A value as a notice quotes it (`_shown`), for the tours' notices."""
    return _shown(text)


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


TOUR_PARAMS = ("tour", "step")  # a guided tour's address (app/tours.py); its page's own `step` is then not read


def decode_param(name: str, kind: str, text: str, query: dict[str, str]) -> object:
    """The widget value of parameter `name` written as `text`, checked as a link's value is (type, range,
    length, registry names, photos, this session's weight sources); raises LinkError saying why not."""
    value = _decode(kind, text, name)
    _check(name, value, query)
    return value


def view_keys() -> set[str]:
    """The session-state keys of every page's link parameters (not the common ones: models, image,
    presentation mode): popping them gives each page's default view."""
    keys: set[str] = set()
    for params in PAGE_PARAMS.values():
        for _, key, _ in params:
            keys.update(key if isinstance(key, tuple) else (key,))
    return keys


_ASKED = "_link_asked"  # session-state keys a link set, and the values it asked for
_NOTICES = "_link_notices"


def restore_from_url(url_path: str) -> list[str]:
    """At a session's first run, set the widgets' session state from the link it was opened with.

    Returns a notice per value refused (the widget keeps its default). What the link set is kept
    for `link_notices`, which compares it with what the page showed."""
    notices: list[str] = st.session_state.pop(_NOTICES, [])  # left by a first run that failed (main.py)
    if st.session_state.get("_url_restored"):
        return notices
    st.session_state["_url_restored"] = True
    query = st.query_params.to_dict()
    asked: dict[str, tuple[str, object, str]] = {}
    # a tour's address holds the tour and its step, and at most the models and image: the step sets the rest
    params = COMMON_PARAMS if TOUR_PARAMS[0] in query else _params(url_path)
    for name, key, kind in params:
        if name not in query:
            continue
        try:
            value = _decode(kind, query[name], name)
            _check(name, value, query)
        except (LinkError, ValueError, KeyError, IndexError) as err:
            notices.append(f"The link's `{name}` value {_shown(query[name])} was not used: {err}.")
            continue
        pairs = zip(key, value, strict=True) if isinstance(key, tuple) else [(key, value)]  # type: ignore[call-overload]
        for k, v in pairs:
            st.session_state[k] = v
            asked[k] = (name, v, "link")
    st.session_state[_ASKED] = asked
    return notices


def expect(values: dict[str, tuple[str, object]]) -> None:
    """A tour step's values (session-state key -> (parameter, value)), set by app/tours.py before the
    page runs: after the page, `link_notices` names each one the page could not show (a block the models
    in use do not have...). They replace what a link asked for the same keys."""
    asked = st.session_state.get(_ASKED) or {}
    asked.update({k: (name, v, "step") for k, (name, v) in values.items()})
    st.session_state[_ASKED] = asked


def link_notices() -> list[str]:
    """After the first run's page: a notice for each value the link set that the page changed (a token
    or block that does not exist in the models in use, an unknown method...). Empty after that run."""
    asked = st.session_state.pop(_ASKED, None) or {}
    changed: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for key, (name, value, who) in asked.items():
        if key in st.session_state and st.session_state[key] != value:
            was, now = changed.setdefault((name, who), ([], []))
            was.append(str(value))
            now.append(str(st.session_state[key]))
    query = st.query_params.to_dict()
    return [(f"The link's `{name}` value {_shown(query.get(name, ''))}" if who == "link" else
             f"This tour step's `{name}` value {_shown(','.join(was))}") + " does not exist here: showing "
            f"{_shown(','.join(now))} instead." for (name, who), (was, now) in changed.items()]


def keep_notices(notices: list[str]) -> None:
    """Notices for the next run (a tour's link switches to its step's page before this run shows them)."""
    st.session_state[_NOTICES] = list(notices)


def link_pending() -> bool:
    """True in a session's first run when its link set values (until `link_notices` has looked at them)."""
    return bool(st.session_state.get(_ASKED))


def forget_link(url_path: str, why: BaseException) -> None:
    """After a first run that failed on the link's values: drop them (the widgets take their defaults) and
    leave a notice for the next run (main.py reruns)."""
    for k in (st.session_state.pop(_ASKED, None) or {}):
        st.session_state.pop(k, None)
    st.session_state[_NOTICES] = [f"This link's view could not be shown ({type(why).__name__}: "
                                  f"{_shown(str(why))}); showing the default view instead."]
    st.query_params.clear()


def write_to_url(url_path: str) -> None:
    """Write the current view (common widgets and this page's) into the address bar."""
    params = _view_params(_params(url_path))
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)


def _default_common() -> dict[str, str]:
    """The common parameters of a new session's view (the default models, weights and image)."""
    # app.images.default_image: the synthetic triangle, example 0
    return {"t2t": T2T_DEFAULT, "t2t_w": default_source(T2T_DEFAULT), "vit": VIT_DEFAULT,
            "vit_w": default_source(VIT_DEFAULT), "img": SHAPE, "shape": "triangle", "ex": "0", "present": "0"}


def tour_query(tour: str, step: int, common: dict[str, str] | None = None) -> dict[str, str]:
    """A tour step's address: `?tour=NAME&step=K`, and the models, weights and image in use (`common`, by
    default the session's) where they are not a new session's (so the link reopens the step on them); the
    step sets everything else."""
    params = {TOUR_PARAMS[0]: tour, TOUR_PARAMS[1]: str(step)}
    defaults = _default_common()
    for name, value in (_view_params(COMMON_PARAMS) if common is None else common).items():
        if defaults.get(name) != value:
            params[name] = value
    return params


def write_tour_to_url(tour: str, step: int) -> None:
    """Write a tour step's address (`tour_query`) into the address bar."""
    params = tour_query(tour, step)
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)


def _view_params(params: tuple) -> dict[str, str]:
    """The URL text of each of `params` that the session state holds (what the view shows)."""
    out: dict[str, str] = {}
    for name, key, kind in params:
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
        out[name] = _encode(kind, value)
    return out
