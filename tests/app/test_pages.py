"""The Streamlit app, page by page, with streamlit.testing.v1.AppTest (no browser).

Every page must render on the default models and image, react to its widgets, and turn every bad
input (image uploads, checkpoints) into a clear st.error while the app goes on. Models, traces and
maps are cached process-wide (app.models.MODELS, app.jobs.CACHE), so only the first test pays for loading.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import t2t
from analysis.maps import keep_mass
from app import compute, explanations, images, models, sidebar
from app import widgets as C

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")
PAGES = {
    "views/1_tokens_to_token.py": "Tokens-to-Token, step by step",
    "views/2_attention.py": "Attention explorer",
    "views/3_explanations.py": "Explanations: which pixels made the decision?",
    "views/4_feature_richness.py": "Feature richness: how much do the channels carry?",
    "views/5_classify.py": "Classify",
}
TIMEOUT = 120  # the first run loads both models and traces them; later runs hit the caches


def run(page: str | None = None, at: AppTest | None = None) -> AppTest:
    """A fresh app (or `at`), on `page`, run; fails on any exception shown by the app."""
    if at is None:
        at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
        at.run()
    if page is not None:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts by widget key (or element id), as parsed figure JSON."""
    out = {}
    for el in at.get("plotly_chart"):
        key = el.proto.id.split("-", 2)[-1] if el.proto.id else str(len(out))
        out[key] = json.loads(el.proto.spec)
    return out


def values(v: object) -> np.ndarray:
    """A plotly JSON array as numpy: plain lists, or the typed arrays plotly writes for numpy data."""
    if isinstance(v, dict) and "bdata" in v:
        out = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return out.reshape([int(n) for n in str(shape).split(",")]) if shape else out
    return np.asarray(v, dtype=float)


def boxes(fig: dict, name: str) -> list[tuple[float, float, float, float]]:
    """The rectangles (top, left, bottom, right) of the line trace `name` (see components.add_boxes)."""
    out = []
    for trace in fig["data"]:
        if trace.get("name") == name:
            xs, ys = trace["x"], trace["y"]
            for i in range(0, len(xs), 6):  # left, right, right, left, left, None
                out.append((ys[i], xs[i], ys[i + 2], xs[i + 1]))
    return out


def png(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **options)
    return buf.getvalue()


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height: a decompression bomb."""
    data = bytearray(png(Image.new("L", (8, 8))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    at.radio(key="image_source").set_value("Upload").run()
    at.file_uploader(key="upload").set_value((name, data, mime))
    return run(at=at)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


# ----------------------------------------------------------------------------------------------
# Every page renders
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders(page: str) -> None:
    at = run(page)
    assert [h.value for h in at.header] == [PAGES[page]]
    assert not errors(at)
    assert charts(at), "every page shows at least one figure"
    assert any(len(i.value) > 300 for i in at.info), "a text for students says what the page shows"


def test_default_models_image_and_untrained_notice() -> None:
    at = run()
    ctx = at.session_state[compute.CTX_KEY]
    assert (ctx.t2t.name, ctx.vit.name) == (models.T2T_DEFAULT, models.VIT_DEFAULT)
    assert ctx.image.key == images.default_image().key
    notices = " ".join(w.value for w in at.warning)
    for lm in ctx.models:
        trained = lm.name in t2t.list_embedded()
        assert lm.trained == trained
        assert (lm.name in notices and "Untrained weights" in notices) == (not trained)
    assert any("Device: **cpu**" in c.value or "Device: **cuda" in c.value for c in at.sidebar.caption)


def test_preprocessing_is_shown_when_its_expander_is_open_on_every_page() -> None:
    at = run()
    assert "floor(224" not in " ".join(m.value for m in at.sidebar.markdown)  # closed: neither computed nor sent
    assert len(at.sidebar.get("image")) == 1  # the image's thumbnail only
    at.session_state[sidebar.PREPROCESSING_KEY] = True  # what opening it in the browser sets (and reruns)
    at = run("views/2_attention.py", at)  # stays open on another page
    text = " ".join(m.value for m in at.sidebar.markdown)
    # the thumbnail, then per model the original with the crop drawn on it and the model input
    assert [len(p.proto.imgs) for p in at.sidebar.get("image")] == [1, 2, 2]
    ctx = at.session_state[compute.CTX_KEY]
    for lm in ctx.models:
        # project-trained models saw the 224 px renders uncropped; released weights use timm's eval crop
        expected = 1.0 if lm.source == "embedded" else lm.cfg["crop_pct"]
        assert lm.crop_pct == expected
        assert f"floor(224 / {expected})" in text
    assert "Centre-cropped 224x224" in text
    assert "normalised per channel" in text


def test_released_weights_keep_the_registry_crop() -> None:
    lm = models.LoadedModel("ViT", "deit_tiny_patch16_224", "random", "", "cpu",
                            t2t.create_model("deit_tiny_patch16_224"))
    assert lm.crop_pct == 0.875 and not lm.trained


# ----------------------------------------------------------------------------------------------
# Page 1: Tokens-to-Token
# ----------------------------------------------------------------------------------------------


def test_tokens_page_counts_come_from_the_trace() -> None:
    at = run("views/1_tokens_to_token.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Soft split 0"] == "3136 tokens"
    assert metrics["Soft split 1 (÷4)"] == "784 tokens"
    assert metrics["Soft split 2 = backbone (÷4)"] == "196 tokens"
    assert metrics["ViT hard split"] == "196 tokens"
    tables = " ".join(m.value for m in at.markdown)
    assert "| **3136** | 147 |" in tables and "| **784** | 576 |" in tables and "| **196** | 768 |" in tables


def test_tokens_page_slider_moves_the_windows() -> None:
    at = run("views/1_tokens_to_token.py")
    fig = charts(at)["pick_split0"]
    assert boxes(fig, "chosen") == [(4 * 28 - 2, 4 * 28 - 2, 4 * 28 + 5, 4 * 28 + 5)]  # the 7x7 window of (28, 28)
    assert len(boxes(fig, "neighbours")) == 8
    at.slider(key="tok_row").set_value(0)
    at.slider(key="tok_col").set_value(10)
    run(at=at)
    fig = charts(at)["pick_split0"]
    # token (0, 10): the 7x7 window starts at -2 (padding), clipped to the image
    assert boxes(fig, "chosen") == [(0, 38, 5, 45)]
    assert len(boxes(fig, "neighbours")) == 5  # a token on the top edge has 5 neighbours
    assert "Chosen: token (0, 10) of soft split 0 → token (0, 5) of soft split 1 → token (0, 2)" in " ".join(
        c.value for c in at.caption)


def test_tokens_page_every_step_and_its_figures() -> None:
    at = run("views/1_tokens_to_token.py")
    expected = {
        "2 · T2T attention 1": {"pick_attn1", "mosaic_attn1"},
        "3 · Soft split 1": {"pick_map1", "pick_split1"},
        "4 · T2T attention 2": {"pick_attn2", "mosaic_attn2"},
        "5 · Soft split 2": {"pick_map2", "pick_split2"},
        "6 · Projection vs ViT": {"pick_proj", "pick_vit", "mosaic_proj", "mosaic_vit"},
    }
    for step, keys in expected.items():
        at.radio(key="t2t_step").set_value(step)
        run(at=at)
        assert keys <= set(charts(at)), step
    # the attention row follows the query token
    at.radio(key="t2t_step").set_value("2 · T2T attention 1")
    run(at=at)
    z1 = charts(at)["pick_attn1"]["data"][1]["z"]
    at.slider(key="tok_row").set_value(3)
    run(at=at)
    assert charts(at)["pick_attn1"]["data"][1]["z"] != z1
    at.radio(key="t2t_step").set_value("All steps")
    run(at=at)
    assert set().union(*expected.values()) | {"pick_split0", "zoom_split0"} <= set(charts(at))


def test_split0_token_shows_its_own_pixels() -> None:
    """The 147 numbers of a soft-split-0 token, un-normalised, are the pixels of its window."""
    at = run("views/1_tokens_to_token.py")
    ctx = at.session_state[compute.CTX_KEY]
    lm = ctx.t2t
    tr = ctx.trace(lm)
    x = ctx.inputs(lm)
    r, c = 28, 28
    token = tr["t2t.split0"][0, r * 56 + c].reshape(3, 7, 7)
    window = x[0, :, 4 * r - 2:4 * r + 5, 4 * c - 2:4 * c + 5]
    torch.testing.assert_close(token, window)


def test_click_callback_sets_the_token() -> None:
    """A selected picker point (as plotly.js reports it) moves the sliders of the finest grid."""

    def script() -> None:
        import streamlit as st

        from app import widgets as C

        if "chart" not in st.session_state:
            st.session_state["chart"] = {"selection": {"points": [
                {"curve_number": 2, "point_index": 37, "x": 80.0, "y": 16.0,
                 "customdata": {"0": 2, "1": 5, "2": 33}}]}}
        C.pick_callback("chart", "row", "col", (14, 14), (56, 56))()
        st.write(st.session_state["row"], st.session_state["col"])

    at = AppTest.from_function(script)
    at.run()
    assert not at.exception
    # cell (2, 5) of 14x14 has its centre in cell (10, 22) of 56x56
    assert (at.session_state["row"], at.session_state["col"]) == (10, 22)


def test_tile_callbacks_set_the_tile_and_unset_the_class_query() -> None:
    """A clicked tile of a block x head mosaic sets block and head; a clicked token unsets "query
    the class token"; a clicked channel tile sets the channel. Callbacks hold no page variables."""

    def script() -> None:
        import streamlit as st

        from app import widgets as C

        st.session_state.setdefault("cls", True)
        if "tiles" not in st.session_state:
            st.session_state["tiles"] = {"selection": {"points": [{"point_index": 3, "customdata": [11, 0]}]}}
            st.session_state["pick"] = {"selection": {"points": [{"point_index": 17}]}}
        C.tile_callback("tiles", 12 * 3, block_head_keys=("block", "head"), heads=3)()
        C.tile_callback("tiles", 12 * 3, index_key="channel")()
        C.pick_callback("pick", "row", "col", (14, 14), (14, 14), unset_key="cls")()

    at = AppTest.from_function(script)
    at.run()
    assert not at.exception
    assert (at.session_state["block"], at.session_state["head"]) == (3, 2)  # tile 11 of 3 heads a row
    assert at.session_state["channel"] == 11
    assert (at.session_state["row"], at.session_state["col"]) == (1, 3)  # point 17 of a 14-wide grid
    assert at.session_state["cls"] is False


def test_picked_cell_formats() -> None:
    assert C.picked_cell([{"customdata": [3, 4, 0]}], (14, 14)) == (3, 4)
    assert C.picked_cell([{"customdata": {"1": 4, "0": 3}}], (14, 14)) == (3, 4)
    assert C.picked_cell([{"point_index": 30}], (14, 14)) == (2, 2)  # no customdata: from the index
    assert C.picked_cell([], (14, 14)) is None


# ----------------------------------------------------------------------------------------------
# Page 2: attention
# ----------------------------------------------------------------------------------------------


def test_attention_page_block_head_and_query_change_the_view() -> None:
    at = run("views/2_attention.py")

    def view() -> tuple[list, str, str]:
        fig = charts(at)["att_pick"]
        metrics = {m.label.split(",")[0]: m.value for m in at.metric}
        title = fig["layout"]["title"]["text"].replace("<br>", " ")  # a long title is wrapped to fit
        return fig["data"][1]["z"], title, metrics["Mean attention distance"]

    z0, title0, _ = view()
    assert "block 0, mean of heads" in title0
    at.slider(key="att_block").set_value(3)
    run(at=at)
    z1, title1, _ = view()
    assert "block 3" in title1 and z1 != z0
    at.selectbox(key="att_head").set_value(1)
    run(at=at)
    z2, title2, _ = view()
    assert "head 1" in title2 and z2 != z1
    assert len(boxes(charts(at)["att_tiles"], "highlight")) == 1
    at.toggle(key="att_cls").set_value(True)
    run(at=at)
    z3, title3, _ = view()
    assert "the class token" in title3 and z3 != z2
    at.toggle(key="att_top60").set_value(True)
    run(at=at)
    kept = values(charts(at)["att_pick"]["data"][1]["customdata"])  # attention relative to uniform
    assert (kept == 0).any() and (kept > 0).any()  # only the tokens holding 60% of the mass remain
    at.radio(key="att_model").set_value("ViT")
    run(at=at)
    assert "deit_tiny_patch16_224" in view()[1]


def test_attention_statistics_match_analysis() -> None:
    from analysis.attention_stats import mean_attention_distance

    at = run("views/2_attention.py")
    at.slider(key="att_block").set_value(2)
    at.selectbox(key="att_head").set_value(0)
    run(at=at)
    ctx = at.session_state[compute.CTX_KEY]
    attn = ctx.trace(ctx.t2t)["blocks.2.attn"]
    expected = float(mean_attention_distance(attn, (14, 14), 16.0)[0, 0])
    shown = {m.label.split(",")[0]: m.value for m in at.metric}["Mean attention distance"]
    assert shown == f"{expected:.1f} px"
    assert {"att_distance", "att_entropy"} <= set(charts(at))


def test_keep_mass() -> None:
    maps = np.array([[[0.5, 0.3], [0.15, 0.05]]])
    assert keep_mass(maps, 0.6).tolist() == [[[0.5, 0.3], [0.0, 0.0]]]
    assert keep_mass(maps, 0.5).tolist() == [[[0.5, 0.0], [0.0, 0.0]]]


# ----------------------------------------------------------------------------------------------
# Page 3: explanations
# ----------------------------------------------------------------------------------------------


def test_explanations_page_maps_and_faithfulness() -> None:
    at = run("views/3_explanations.py")
    figs = charts(at)
    for method in ("rollout", "chefer"):
        assert {f"exp_{method}_T2T-ViT", f"exp_{method}_ViT"} <= set(figs)
    labels = [m.label for m in at.metric]
    assert labels.count("Deletion AUC (lower is better)") == 4
    assert labels.count("Insertion AUC (higher is better)") == 4
    for m in at.metric:
        assert 0.0 <= float(m.value) <= 1.0
    assert len(figs["exp_strip"]["data"]) == 6  # backbone, split2, attn2, split1, attn1, split0

    t2t_map = figs["exp_rollout_T2T-ViT"]["data"][0]["source"]
    at.radio(key="exp_carry").set_value("stretch")
    run(at=at)
    figs = charts(at)
    assert figs["exp_rollout_T2T-ViT"]["data"][0]["source"] != t2t_map
    assert "exp_strip" not in figs  # nothing is carried back any more

    at.toggle(key="exp_faith").set_value(False)
    run(at=at)
    assert not [m for m in at.metric if "AUC" in m.label]


def class_box(at: AppTest, role: str):
    """The Explanations page's class box of a model (its key changes with the image and models)."""
    return next(s for s in at.selectbox if s.label.startswith(f"Class for {role} "))


def test_explanations_page_chosen_class_and_expensive_methods() -> None:
    at = run("views/3_explanations.py")
    slow = {explanations.METHOD_NAMES[m] for m in ("integrated_gradients", "occlusion", "token_ablation")}
    assert not slow & set(at.multiselect(key="exp_methods").options)
    at.radio(key="exp_which").set_value("a class I choose")
    run(at=at)
    before = charts(at)["exp_chefer_ViT"]["data"][0]["source"]
    class_box(at, "ViT").set_value(7)
    run(at=at)
    assert charts(at)["exp_chefer_ViT"]["data"][0]["source"] != before  # Chefer depends on the class
    names = at.session_state[compute.CTX_KEY].vit.class_names
    assert any(f"explaining **{names[7]}**" in m.value for m in at.markdown)
    at.toggle(key="exp_expensive").set_value(True)
    run(at=at)
    assert slow <= set(at.multiselect(key="exp_methods").options)


def test_carry_back_matches_analysis_backproject() -> None:
    """The stage-by-stage walk the app shows ends where analysis.t2t_backproject.backproject_trace does."""
    from analysis.t2t_backproject import backproject_stages, backproject_trace

    at = run()
    ctx = at.session_state[compute.CTX_KEY]
    tr = ctx.trace(ctx.t2t)
    heat = torch.rand(14, 14, generator=torch.Generator().manual_seed(0))
    for mode in ("mass", "coverage"):
        stages = backproject_stages(heat, tr, (224, 224), mode=mode, residual=False)
        assert [tuple(m.shape) for _, m in stages] == [(14, 14), (28, 28), (28, 28), (56, 56), (56, 56), (224, 224)]
        expected = backproject_trace(heat[None], tr, 224, use_attention=True, mode=mode)[0]
        torch.testing.assert_close(stages[-1][1], expected.float().cpu(), rtol=1e-4, atol=1e-7)


def test_carry_back_residual_rows_and_mass() -> None:
    """With the residual, each T2T attention acts as (A + I) with re-normalised rows, formed densely here."""
    from analysis.t2t_backproject import backproject_stages

    at = run()
    ctx = at.session_state[compute.CTX_KEY]
    tr = ctx.trace(ctx.t2t)
    heat = torch.rand(14, 14, generator=torch.Generator().manual_seed(1))
    stages = backproject_stages(heat, tr, (224, 224), mode="mass", residual=True)
    for index, name in ((2, "t2t.attn2_map"), (4, "t2t.attn1_map")):
        a = tr[name][0, 0].double().cpu()
        mixed = a + torch.eye(a.shape[0], dtype=a.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        r = stages[index - 1][1].flatten().double()
        torch.testing.assert_close(stages[index][1].flatten().double(), r @ mixed, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(tr.attention_row_sums(name)[0].double().cpu(), a.sum(dim=-1),
                                   rtol=1e-4, atol=1e-6)
    totals = [float(m.sum()) for _, m in stages]  # "mass" conserves the total at every stage
    np.testing.assert_allclose(totals, float(heat.sum()), rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Page 4: feature richness
# ----------------------------------------------------------------------------------------------


def test_feature_page_blocks_threshold_and_cka() -> None:
    at = run("views/4_feature_richness.py")
    figs = charts(at)
    assert {"fr_invalid_fraction", "fr_mean_abs_corr", "fr_effective_rank", "fr_high_freq_fraction"} <= set(figs)
    ctx = at.session_state[compute.CTX_KEY]
    for metric in ("fr_effective_rank",):
        lengths = sorted(len(values(trace["y"])) for trace in figs[metric]["data"])
        assert lengths == sorted([ctx.t2t.num_blocks, ctx.vit.num_blocks])

    mosaic = figs["fr_mosaic_T2T-ViT"]["data"][0]["source"]
    at.slider(key="fr_block_T2T-ViT").set_value(ctx.t2t.num_blocks - 1)
    run(at=at)
    assert charts(at)["fr_mosaic_T2T-ViT"]["data"][0]["source"] != mosaic

    # the red frames are the invalid channels among those shown, as analysis.redundancy finds them
    from analysis.redundancy import feature_maps, invalid_channels

    at.slider(key="fr_threshold").set_value(0.5)
    at.select_slider(key="fr_channels").set_value(16)
    run(at=at)
    tr = ctx.trace(ctx.t2t)
    block = ctx.t2t.num_blocks - 1
    invalid = invalid_channels(feature_maps(tr[f"blocks.{block}"], (14, 14)), 0.5)[0]
    assert len(boxes(charts(at)["fr_mosaic_T2T-ViT"], "marked")) == int(invalid[:16].sum())
    metric = {m.label: m.value for m in at.metric}[f"Invalid channels in block {block} (red frames)"]
    assert metric.startswith(f"{int(invalid.sum())} of {invalid.numel()}")

    assert "cka_matrix" not in charts(at)
    at.toggle(key="cka_on").set_value(True)
    at.select_slider(key="cka_n").set_value(8)
    run(at=at)
    z = values(charts(at)["cka_matrix"]["data"][0]["z"])
    assert z.shape == (ctx.t2t.num_blocks, ctx.vit.num_blocks)
    assert np.isfinite(z).all() and (z >= -1e-6).all() and (z <= 1 + 1e-6).all()


# ----------------------------------------------------------------------------------------------
# Page 5: classify
# ----------------------------------------------------------------------------------------------


def test_classify_page_top5_matches_the_model() -> None:
    at = run("views/5_classify.py")
    ctx = at.session_state[compute.CTX_KEY]
    for lm in ctx.models:
        fig = charts(at)[f"cls_{lm.role}"]
        probs = compute.probabilities(ctx.trace(lm))
        order = np.argsort(-probs)[:5]
        assert fig["data"][0]["y"] == [lm.class_names[i] for i in order][::-1]
        np.testing.assert_allclose(values(fig["data"][0]["x"]), probs[order][::-1], rtol=1e-5)


def test_classify_synthetic_batch() -> None:
    at = run("views/5_classify.py")
    at.select_slider(key="batch_n").set_value(10)
    at.button(key="batch_go").click()
    run(at=at)
    table = at.dataframe[0].value
    assert len(table) == 10
    assert list(table["true class"]) == list(images.synthetic_class_names())
    assert {m.label for m in at.metric} >= {"Images", "The models agree on", "Accuracy"}


def test_classify_uploaded_batch_with_a_bad_file() -> None:
    at = run("views/5_classify.py")
    at.radio(key="batch_source").set_value("My uploads")
    run(at=at)
    good = png(Image.new("RGB", (64, 48), (200, 30, 30)))
    at.file_uploader(key="batch_upload").set_value([("red.png", good, "image/png"),
                                                    ("notes.png", b"just some text\n", "image/png")])
    run(at=at)
    assert any("Cannot use 'notes.png': Not an image file" in e for e in errors(at))
    table = at.dataframe[0].value
    assert list(table["image"]) == ["red.png"]


def test_classify_caps_a_batch_of_uploads() -> None:
    """A class shares one server: 40 uploads are classified 32 at a time, with a notice."""
    at = run("views/5_classify.py")
    at.radio(key="batch_source").set_value("My uploads")
    run(at=at)
    files = [(f"img{i}.png", png(Image.new("RGB", (16, 16), (6 * i, 30, 30))), "image/png") for i in range(40)]
    at.file_uploader(key="batch_upload").set_value(files)
    run(at=at)
    assert any("40 images uploaded: classifying the first 32" in w.value for w in at.warning)
    assert list(at.dataframe[0].value["image"]) == [f"img{i}.png" for i in range(32)]


# ----------------------------------------------------------------------------------------------
# Bad and unusual image uploads
# ----------------------------------------------------------------------------------------------


def _noise_jpeg() -> bytes:
    return encoded(Image.effect_noise((128, 128), 60).convert("RGB"), "JPEG", quality=90)


BAD_UPLOADS = {
    "zero-byte": ("empty.png", b"", "The file is empty (0 bytes)."),
    "non-image": ("report.png", b"%PDF-1.4\n%...", "Not an image file (it looks like a PDF document)"),
    "text": ("notes.jpg", b"hello, this is text\n", "Not an image file (it looks like a text file)"),
    "corrupt header": ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
                       "looks like a PNG image but is truncated or corrupt"),
    "truncated": ("cut.jpg", _noise_jpeg()[:1500], "truncated"),
    "decompression bomb": ("bomb.png", png_declaring(20000, 20000), "it could be a decompression bomb"),
    "huge": ("huge.png", png_declaring(9000, 9000), "Image is 9000x9000 = 81 MP, more than the limit of 64 MP"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_gives_a_clear_error_and_the_app_goes_on(case: str) -> None:
    name, data, message = BAD_UPLOADS[case]
    at = upload(run(), name, data)
    shown = errors(at)
    assert any(f"Cannot use '{name}'" in e and message in e for e in shown), shown
    assert any("Showing the synthetic 'triangle' #0 instead" in w.value for w in at.warning)
    assert at.session_state[compute.CTX_KEY].image.key == images.default_image().key
    assert "pick_split0" in charts(at)  # the page still renders, on the default image
    for page in ("views/3_explanations.py", "views/5_classify.py"):
        run(page, at)
        assert any(message in e for e in errors(at))


def _exif_rotated() -> bytes:
    src = Image.new("RGB", (80, 40), (0, 0, 255))
    src.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return encoded(src, "JPEG", quality=95, exif=exif.tobytes())


def _animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (48, 48), (255, 0, 0)), Image.new("RGB", (48, 48), (0, 0, 255))]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _palette() -> bytes:
    img = Image.new("P", (40, 40))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 20, 40))
    return png(img, transparency=0)


UNUSUAL_UPLOADS = {
    "CMYK": ("cmyk.jpg", encoded(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), (40, 40)),
    "16-bit": ("deep.png", png(Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16))), (40, 30)),
    "palette": ("palette.png", _palette(), (40, 40)),
    "RGBA": ("alpha.png", png(Image.new("RGBA", (40, 40), (255, 0, 0, 128))), (40, 40)),
    "EXIF-rotated": ("phone.jpg", _exif_rotated(), (40, 80)),
    "animated": ("anim.gif", _animated_gif(), (48, 48)),
    "webp": ("pic.webp", encoded(Image.new("RGB", (40, 40), (0, 128, 0)), "WEBP"), (40, 40)),
    "tiny": ("tiny.png", png(Image.new("RGB", (4, 4))), (4, 4)),  # upsampled, with a notice (issue 11)
    "bmp": ("pic.bmp", encoded(Image.new("RGB", (40, 40), (0, 128, 0)), "BMP"), (40, 40)),
    "tiff": ("pic.tiff", encoded(Image.new("RGB", (40, 40), (0, 128, 0)), "TIFF"), (40, 40)),
}


@pytest.mark.parametrize("case", list(UNUSUAL_UPLOADS))
def test_unusual_uploads_are_used(case: str) -> None:
    name, data, size = UNUSUAL_UPLOADS[case]
    at = upload(run(), name, data)
    assert not errors(at)
    image = at.session_state[compute.CTX_KEY].image
    assert image.label == name and image.image.mode == "RGB" and image.image.size == size
    assert "pick_split0" in charts(at)
    if case == "EXIF-rotated":
        assert image.image.getpixel((20, 5))[0] > 200  # the red half is on top after rotation


def test_camera_photo_is_used() -> None:
    at = run()
    at.radio(key="image_source").set_value("Camera").run()
    assert not at.camera_input, "the camera stays off until it is turned on"
    at.toggle(key="camera_on").set_value(True).run()
    photo = encoded(Image.new("RGB", (64, 48), (10, 200, 10)), "JPEG")
    at.camera_input(key="camera").set_value(("photo.jpg", photo, "image/jpeg"))
    run(at=at)
    image = at.session_state[compute.CTX_KEY].image
    assert image.label == "photo.jpg" and image.image.size == (64, 48)
    assert not errors(at)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _save(model: torch.nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.mark.usefixtures("local_session")  # a path and uploads: a browser on the server's machine
def test_checkpoint_that_does_not_fit_gives_a_clear_message(tmp_path: Path) -> None:
    vit_weights = _save(t2t.create_model("deit_tiny_patch16_224", num_classes=10), tmp_path / "deit.safetensors")
    at = run()
    at.selectbox(key="T2T-ViT_source").set_value("path")
    run(at=at)
    at.text_input(key="T2T-ViT_path").set_value(str(vit_weights))
    run(at=at)
    shown = " ".join(errors(at))
    assert "Could not use 'deit.safetensors' for t2t_vit_7: checkpoint does not fit t2t_vit_7" in shown
    details = " ".join(c.value for c in at.sidebar.code)
    assert "missing keys" in details and "deit_tiny_patch16_224" in details  # names the model it does fit
    assert any("the checkpoint could not be used" in w.value for w in at.warning)
    assert at.session_state[compute.CTX_KEY].t2t.source in ("embedded", "random")  # fell back
    assert "pick_split0" in charts(at)


@pytest.mark.usefixtures("local_session")  # a path and uploads: a browser on the server's machine
def test_uploaded_checkpoints(tmp_path: Path) -> None:
    at = run()
    at.selectbox(key="ViT_source").set_value("upload")
    run(at=at)
    at.file_uploader(key="ViT_ckpt").set_value(("junk.pth", b"not a pickle at all", "application/octet-stream"))
    run(at=at)
    assert any(e.startswith("Could not use 'junk.pth' for deit_tiny_patch16_224: junk.pth") for e in errors(at))

    torch.manual_seed(1)
    good = t2t.create_model("deit_tiny_patch16_224", num_classes=10)
    data = _save(good, tmp_path / "mine.pth.tar").read_bytes()
    at.file_uploader(key="ViT_ckpt").set_value(("mine.pth.tar", data, "application/octet-stream"))
    run(at=at)
    assert not errors(at)
    vit = at.session_state[compute.CTX_KEY].vit
    assert vit.source == "upload" and vit.weights_label == "mine.pth.tar"
    assert len(vit.class_names) == 10
    torch.testing.assert_close(vit.model.head.weight.cpu(), good.head.weight)


def test_out_of_memory_falls_back_to_the_cpu() -> None:
    def script() -> None:
        import streamlit as st
        import torch

        from app import device

        def boom() -> None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        if not st.session_state.get("force_cpu"):
            device.guarded(boom)
        st.write(device.device_name())
        st.write(st.session_state["device_notice"])

    at = AppTest.from_function(script)
    at.run()
    assert not at.exception
    assert at.session_state["force_cpu"] is True
    assert at.markdown[0].value == "cpu"
    assert "The GPU ran out of memory" in at.markdown[1].value


# ----------------------------------------------------------------------------------------------
# Issue 11 and 12 in the app: EMA weights, the discard rule, small images, words that match the screen
# ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("local_session")  # a path and uploads: a browser on the server's machine
def test_ema_checkbox_and_the_dictionary_loaded(tmp_path: Path) -> None:
    torch.manual_seed(2)
    raw, ema = (t2t.create_model("deit_tiny_patch16_224", num_classes=10) for _ in range(2))
    path = tmp_path / "both.pth.tar"
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    at = run()
    at.selectbox(key="ViT_source").set_value("upload")
    run(at=at)
    at.file_uploader(key="ViT_ckpt").set_value(("both.pth.tar", path.read_bytes(), "application/octet-stream"))
    run(at=at)
    assert at.checkbox(key="ViT_ema").value is True  # on by default, as the official evaluation
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "Loaded: **state_dict_ema** (EMA weights)" in captions
    torch.testing.assert_close(at.session_state[compute.CTX_KEY].vit.model.head.weight.cpu(), ema.head.weight)
    at.checkbox(key="ViT_ema").uncheck()
    run(at=at)
    assert "Loaded: **state_dict**" in " ".join(c.value for c in at.sidebar.caption)
    torch.testing.assert_close(at.session_state[compute.CTX_KEY].vit.model.head.weight.cpu(), raw.head.weight)


def test_weights_box_offers_only_what_exists() -> None:
    at = run()
    at.selectbox(key="T2T-ViT_name").set_value("t2t_vit_10")
    run(at=at)
    box = at.selectbox(key="T2T-ViT_source")
    assert models.SOURCE_LABELS["embedded"] not in box.options and box.value == "random"  # options are labels
    assert at.session_state[compute.CTX_KEY].t2t.source == "random"
    at.selectbox(key="T2T-ViT_name").set_value("t2t_vit_7")
    run(at=at)
    assert at.selectbox(key="T2T-ViT_source").value == "random"  # kept: it exists for t2t_vit_7 too
    at.selectbox(key="T2T-ViT_source").set_value("embedded")
    run(at=at)
    assert at.session_state[compute.CTX_KEY].t2t.source == "embedded"


def test_rollout_discard_rule_is_named_and_used() -> None:
    from analysis.maps import tokens_to_grid
    from analysis.rollout import cls_rollout

    at = run("views/3_explanations.py")
    assert at.selectbox(key="exp_rule").value == "vit-explain"
    assert any("rule: vit-explain (flattened map)" in h.value for h in at.subheader)
    ctx = at.session_state[compute.CTX_KEY]
    maps = {}
    for rule in ("vit-explain", "row"):
        at.selectbox(key="exp_rule").set_value(rule)
        at.slider(key="exp_discard").set_value(0.5)
        run(at=at)
        label = {"vit-explain": "vit-explain (flattened map)", "row": "per row"}[rule]
        assert any(f"discard 50%, rule: {label}" in h.value for h in at.subheader)
        tr = ctx.trace(ctx.vit)
        expected = tokens_to_grid(cls_rollout(tr.attentions(), discard_ratio=0.5, discard=rule), (14, 14))[0]
        maps[rule] = explanations.rollout_with(ctx, ctx.vit, rule, 0.5)
        torch.testing.assert_close(maps[rule], expected.float().cpu())
    assert not torch.allclose(maps["row"], maps["vit-explain"])


def test_tiny_image_says_how_much_it_was_upsampled() -> None:
    at = upload(run(), "dot.png", png(Image.new("RGB", (1, 1), (200, 30, 30))))
    ctx = at.session_state[compute.CTX_KEY]
    factor = ctx.steps(ctx.t2t).resize_factor
    assert factor > 100
    notes = [w.value for w in at.warning]
    assert any(f"only 1×1 pixels: it was upsampled {factor:.3g}×" in n for n in notes), notes
    assert "pick_split0" in charts(at)


def test_feature_page_words_match_the_numbers() -> None:
    from analysis.redundancy import feature_maps, invalid_channels

    at = run("views/4_feature_richness.py")
    ctx = at.session_state[compute.CTX_KEY]
    at.slider(key="fr_threshold").set_value(0.5)
    run(at=at)
    text = " ".join(m.value for m in at.markdown if "On this image" in m.value)
    counts = [int(invalid_channels(feature_maps(ctx.trace(lm)["blocks.0"], (14, 14)), 0.5)[0].sum())
              for lm in ctx.models]
    assert f"T2T-ViT has {counts[0]} of 256 invalid channels in block 0 and ViT {counts[1]} of 192" in text
    # the exact effective rank only on demand
    at.toggle(key="fr_rank").set_value(False)
    run(at=at)
    assert "fr_effective_rank" not in charts(at)
    assert "effective rank is above" not in " ".join(m.value for m in at.markdown)


def test_attention_page_words_match_the_distances() -> None:
    at = run("views/2_attention.py")
    ctx = at.session_state[compute.CTX_KEY]
    text = " ".join(m.value for m in at.markdown if "On this image" in m.value)
    for lm in ctx.models:
        d = compute.attention_profile(ctx, lm)["distance"]
        assert f"**{lm.role}**: every head between {d.min():.0f} and {d.max():.0f} px" in text
    assert "ViT's early blocks need some heads to look locally" not in " ".join(i.value for i in at.info)


def test_photo_outside_the_classes_and_chosen_class_reset() -> None:
    at = run("views/3_explanations.py")
    at.radio(key="exp_which").set_value("a class I choose")
    run(at=at)
    class_box(at, "ViT").set_value(8)
    run(at=at)
    at.radio(key="image_source").set_value("Sample photo")
    run(at=at)
    ctx = at.session_state[compute.CTX_KEY]
    predicted = int(np.argmax(compute.probabilities(ctx.trace(ctx.vit))))
    assert class_box(at, "ViT").value == predicted  # not the class chosen for the last image
    assert any("start again from each model's prediction" in i.value for i in at.info)
    warnings = [w.value for w in at.warning]
    assert sum("is not one of the synthetic shapes" in w for w in warnings) == 2


def test_integrated_gradients_shows_its_completeness_gap() -> None:
    from analysis.attributions import COMPLETENESS_TOLERANCE

    at = run("views/3_explanations.py")
    at.toggle(key="exp_expensive").set_value(True)
    at.toggle(key="exp_faith").set_value(False)
    run(at=at)
    at.multiselect(key="exp_methods").set_value(["integrated_gradients"])
    run(at=at)
    ctx = at.session_state[compute.CTX_KEY]
    notes = [c.value for c in at.caption] + [w.value for w in at.warning]
    for lm in ctx.models:
        target = int(np.argmax(compute.probabilities(ctx.trace(lm))))
        _, gap = explanations.explanation_with(ctx, lm, "integrated_gradients", target, return_completeness=True)
        total = gap["output_change"] + gap["delta"]
        line = (f"Completeness gap {gap['relative_gap']:.1%}: the attributions sum to {total:.3g}, "
                f"f(x) − f(baseline) = {gap['output_change']:.3g}")
        shown = [n for n in notes if line in n]
        assert len(shown) == 1, (line, notes)
        above = gap["relative_gap"] > COMPLETENESS_TOLERANCE
        assert ("read it with care" in shown[0]) == above  # a warning exactly when the gap exceeds 5%


def test_domain_warning_rules() -> None:
    from types import SimpleNamespace

    shapes = list(images.synthetic_class_names())
    synthetic, photo = images.synthetic_image(0, 0), SimpleNamespace(key="sample:cat")

    def model(source: str, names: list[str]) -> SimpleNamespace:
        return SimpleNamespace(role="ViT", name="m", weights_label=source, source=source, class_names=names)

    assert C.domain_warning(model("embedded", shapes), synthetic) is None
    assert "not one of the synthetic shapes" in C.domain_warning(model("embedded", shapes), photo)
    assert "none of which is a synthetic shape" in C.domain_warning(model("released", [str(i) for i in range(1000)]),
                                                                    synthetic)
    assert C.domain_warning(model("released", [str(i) for i in range(1000)]), photo) is None
    assert C.domain_warning(model("path", [f"class {i}" for i in range(10)]), synthetic) is None  # unknown list
    assert "random weights" in C.domain_warning(model("random", shapes), synthetic)


def test_a_cifar_release_is_named_by_its_dataset(local_session: None) -> None:
    """Issue 19: the weights box names the dataset of the release (not always "ImageNet-1k"), the loaded
    model's label says it, and a shape shown to a CIFAR model gets the notice with its own classes."""
    from types import SimpleNamespace

    from t2t.registry import dataset_class_names

    assert models.source_label("t2t_vit_14_cifar100", "released") == "CIFAR-100 (download)"
    assert models.source_label("t2t_vit_19_cifar10", "released") == "CIFAR-10 (download)"
    assert models.source_label("t2t_vit_14", "released") == "ImageNet-1k (download)"
    lm = models.LoadedModel("T2T-ViT", "t2t_vit_14_cifar10", "released", "", "cpu", t2t.create_model("t2t_vit_7"))
    assert lm.weights_label == "CIFAR-10"
    cifar = SimpleNamespace(role="T2T-ViT", name="t2t_vit_14_cifar100", weights_label="CIFAR-100", source="released",
                            class_names=list(dataset_class_names("CIFAR-100")))
    warning = C.domain_warning(cifar, images.synthetic_image(0, 0))
    assert "knows the 100 CIFAR-100 classes, none of which is a synthetic shape" in warning
    assert C.domain_warning(cifar, SimpleNamespace(key="sample:cat")) is None

    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT).run()
    at.selectbox(key="T2T-ViT_name").set_value("t2t_vit_14_cifar100").run()
    box = at.selectbox(key="T2T-ViT_source")
    assert "CIFAR-100 (download)" in box.options and "ImageNet-1k (download)" not in box.options
    assert any("Backbone attention scale 0.125 (head_dim ** -0.5)" in c.value for c in at.sidebar.caption)
