"""The Inside-the-decision page (issue 28, section 2), with AppTest (no browser).

What the page draws is checked against `analysis.mechanisms` called directly on the same models and images: the
logit lens and its patch-token maps, the DLA grid, a clicked head's class-token attention, the heads patching grid
for the chosen second image and the residual maps (the estimate at once; the exact map through the HEAVY queue);
its sentences follow those numbers; a malformed lesson link gives notices; the models every session shares come
out bit-identical, with no hook left.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import t2t
from analysis import mechanisms as mech
from app import compute, jobs, mechanisms

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")
PAGE = "views/8_inside_the_decision.py"
TIMEOUT = 300


def run(at: AppTest | None = None, page: str | None = PAGE, query: dict[str, str] | None = None,
        **state: object) -> AppTest:
    if at is None:
        at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
        for k, v in state.items():
            at.session_state[k] = v
        # AppTest finds a page whose url_path is not its file's name only once the app has run: run, then open the
        # page (and the link) anew
        at.run()
        if query:
            del at.session_state["_url_restored"]
            for k, v in query.items():
                at.query_params[k] = v
        if page:
            at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    return {el.proto.id.split("-", 2)[-1]: json.loads(el.proto.spec) for el in at.get("plotly_chart") if el.proto.id}


def values(v: object) -> np.ndarray:
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float)
    return np.asarray(v, dtype=float)


def words(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n" + "\n".join(c.value for c in at.caption)


def heatmaps(fig: dict) -> list[np.ndarray]:
    return [values(t["z"]) for t in fig["data"] if t["type"] == "heatmap"]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def baseline_of(model: torch.nn.Module, clean: torch.Tensor, second: torch.Tensor) -> tuple[int, int]:
    """The page's metric classes, computed here: the clean prediction, and the second image's top class when it
    differs, else the clean runner-up."""
    with torch.no_grad():
        a, b = model(clean)[0], model(second)[0]
    order = a.argsort(descending=True)
    target = int(order[0])
    return target, int(b.argmax()) if int(b.argmax()) != target else int(order[1])


@pytest.fixture(scope="module")
def default() -> AppTest:
    return run()


def test_page_renders_every_part(default: AppTest) -> None:
    at = default
    assert [h.value for h in at.header] == ["Inside the decision: how the answer is built"]
    assert not [e.value for e in at.error]
    shown = charts(at)
    assert "dec_lens" in shown
    for role in ("T2T-ViT", "ViT"):
        for part in ("strip", "dla", "head", "pair", "patch_heads", "resid", "sinks"):
            assert f"dec_{part}_{role}" in shown, part
    # every chart has its PNG button (widgets.show's toolbar) named after what it shows
    assert all(el.proto.config and "toImageButtonOptions" in el.proto.config for el in at.get("plotly_chart"))


def test_the_lens_chart_and_maps_are_the_logit_lens(default: AppTest) -> None:
    at = default
    ctx = at.session_state[compute.CTX_KEY]
    fig = charts(at)["dec_lens"]
    for lm in ctx.models:
        x = ctx.inputs(lm)
        lens = mech.logit_lens(lm.model, x)[0]
        target = int(lens[-1].argmax())
        probs = lens.softmax(-1)[:, target].numpy()
        ranks = (1 + (lens > lens[:, target:target + 1]).sum(-1)).numpy()
        name = f"{lm.role}: {lm.class_names[target]}"
        prob_line, rank_line = [t for t in fig["data"] if t["name"] == name]
        np.testing.assert_allclose(values(prob_line["y"]), probs, atol=1e-6)
        np.testing.assert_array_equal(values(rank_line["y"]), ranks)
        np.testing.assert_allclose(values(prob_line["x"]), np.arange(len(probs)) / (len(probs) - 1))
        maps = mech.patch_lens(lm.model, x, target)[0].numpy()
        shown = heatmaps(charts(at)[f"dec_strip_{lm.role}"])
        assert len(shown) == len(maps)
        for d, z in enumerate(shown):
            np.testing.assert_allclose(z.reshape(maps.shape[1:]), maps[d], atol=1e-5)
        # the sentence: the answer, its final probability, from where it stays the lens's top class
        stay = int(mech.readable_depth(lens[None], stay=True)[0])
        blocks = len(probs) - 1
        when = ("already after the embedding" if stay == 0 else "only after the last block" if stay == blocks
                else f"from block {stay - 1} on")
        line = next(m.value for m in at.markdown if m.value.startswith(f"**{lm.role}**: the answer"))
        assert f"**{lm.class_names[target]}** ({probs[-1]:.1%} at the end)" in line and when in line, line
        assert f"ranks {ranks[0]} of {lens.shape[-1]} classes after the embedding ({probs[0]:.1%})" in line


def test_the_dla_grid_is_direct_logit_attribution_with_this_images_sigma(default: AppTest) -> None:
    at = default
    ctx = at.session_state[compute.CTX_KEY]
    text = words(at)
    assert "**Sigma is this image's own, held fixed**" in text
    for lm in ctx.models:
        d = mech.direct_logit_attribution(lm.model, ctx.inputs(lm))
        nb, nh = lm.num_blocks, lm.num_heads
        fig = charts(at)[f"dec_dla_{lm.role}"]
        grid = heatmaps(fig)[0].reshape(nb, nh + 1)
        np.testing.assert_allclose(grid[:, :nh], d.heads[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(grid[:, nh], d.mlps[0].numpy(), atol=1e-6)
        assert f"{lm.role} sigma = {float(d.sigma[0]):.3f}" in text
        parts = (f"{float(d.logit[0]):.2f}, is heads {float(d.heads[0].sum()):+.2f} + MLPs "
                 f"{float(d.mlps[0].sum()):+.2f} + embedding {float(d.embed[0]):+.2f} + biases "
                 f"{float(d.bias[0]):+.2f} = {float(d.total[0]):.2f}")
        assert parts in text, parts
        # the view opens on the strongest head, framed
        b, h = np.unravel_index(int(d.heads[0].abs().argmax()), (nb, nh))
        frame = next(t for t in fig["data"] if t.get("name") == "chosen")
        assert (min(frame["x"]), min(frame["y"])) == (h - 0.5, b - 0.5)
        assert f"{lm.role}, block {b}, head {h} writes {float(d.heads[0, b, h]):+.2f}" in text


def test_a_click_on_a_head_picks_it_and_shows_its_attention() -> None:
    def script() -> None:  # the DLA grid's click, through the callback the page gives the chart
        import numpy as np
        import streamlit as st

        from app import mechanisms, widgets

        att = mechanisms.Attribution(0, np.arange(6.0).reshape(3, 2), np.ones(3), 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
        fig = mechanisms.dla_figure(att, None, "ViT", ["a"])
        pick = next(t for t in fig.data if t.name == "pick")
        i = next(i for i, (x, y) in enumerate(zip(pick.x, pick.y, strict=True)) if (y, x) == (2, 1))
        point = {"point_index": i, "customdata": list(pick.customdata[i])}
        st.session_state["grid"] = {"selection": {"points": [point]}}
        widgets.tile_callback("grid", 9, block_head_keys=("b", "h"), heads=3)()

    at = AppTest.from_function(script)
    at.run()
    assert not at.exception
    assert (at.session_state["b"], at.session_state["h"]) == (2, 1)

    # the page with ViT's block 7, head 2 picked and T2T-ViT's block 1 MLP (the column after its heads)
    at = run(**{"dec_block_ViT": 7, "dec_head_ViT": 2, "dec_block_T2T-ViT": 1, "dec_head_T2T-ViT": 4})
    ctx = at.session_state[compute.CTX_KEY]
    lm = ctx.vit
    with torch.no_grad():
        tr = t2t.trace(lm.model, ctx.inputs(lm), attention=True)
    attn = tr.attentions()[7][0, 2, 0, 1:]
    fig = charts(at)["dec_head_ViT"]
    assert "block 7, head 2, attention of the class token" in fig["layout"]["title"]["text"].replace("<br>", " ")
    ratio = next(t for t in fig["data"] if t["type"] == "heatmap")["customdata"]
    np.testing.assert_allclose(values(ratio), (attn * attn.numel()).numpy(), rtol=1e-5)
    d = mech.direct_logit_attribution(lm.model, ctx.inputs(lm))
    text = words(at)
    assert f"ViT, block 7, head 2 writes {float(d.heads[0, 7, 2]):+.2f}" in text
    assert "on the class token itself" in text and "dec_head_T2T-ViT" not in charts(at)  # an MLP has no attention
    t = mech.direct_logit_attribution(ctx.t2t.model, ctx.inputs(ctx.t2t))
    assert f"T2T-ViT, block 1's MLP writes {float(t.mlps[0, 1]):+.2f}" in text


def check_heads_grid(at: AppTest, second: str | None, every_block: bool = True) -> None:
    """The page's heads patching grids equal `activation_patching` on the same pair (second None: the library's own
    blur of the input), in every block or in the first, the last and the page's best (each block is one batched
    run of its heads), and their sentences say what the grids show."""
    ctx = at.session_state[compute.CTX_KEY]
    text = words(at)
    for lm in ctx.models:
        x = ctx.inputs(lm)
        corrupted = mech.blurred(x) if second is None else second_of(ctx, lm, second)
        target, base = baseline_of(lm.model, x, corrupted)
        grid = heatmaps(charts(at)[f"dec_patch_heads_{lm.role}"])[0].reshape(lm.num_blocks, lm.num_heads)
        b, h = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
        blocks = list(range(lm.num_blocks)) if every_block else sorted({0, lm.num_blocks - 1, int(b)})
        p = mech.activation_patching(lm.model, x, "blur" if second is None else corrupted, target, site="heads",
                                     baseline=base, layers=blocks)
        np.testing.assert_allclose(grid[blocks], p.recovered[0, blocks].numpy(), atol=1e-5)
        names = lm.class_names
        assert (f"metric logit(**{names[target]}**) − logit(**{names[base]}**)" in text
                and f"{float(p.clean[0]):.2f} on this image, {float(p.corrupted[0]):.2f} on the second" in text)
        rec = grid
        best = f"one head alone brings back at most {rec[b, h]:.0%} of the difference (block {b}, head {h})"
        assert f"{lm.role}: {best}" in text


def second_of(ctx, lm, kind: str) -> torch.Tensor:
    """The second image built by the library on its own: the synthetic image's shape removed."""
    index = int(ctx.image.key.split(":")[1])
    assert kind == "background"
    _, corrupted, _, _ = mech.synthetic_pairs(lm.model, 1, start=index, kind="background")
    return corrupted.to(ctx.inputs(lm))


def test_the_heads_patching_grid_for_the_chosen_second_image(default: AppTest) -> None:
    assert default.session_state["dec_second"] == "background"  # a synthetic image: its shape removed
    check_heads_grid(default, "background")
    blurred = run(dec_second="blur")
    assert "Second image: the image blurred (Gaussian, sigma 8 px)" in words(blurred)
    check_heads_grid(blurred, None, every_block=False)


def test_the_residual_maps_estimated_at_once_and_exact_in_the_heavy_queue(default: AppTest,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = default.session_state[compute.CTX_KEY]
    for lm in ctx.models:  # the estimate (the default on a CPU)
        x = ctx.inputs(lm)
        corrupted = second_of(ctx, lm, "background")
        target, base = baseline_of(lm.model, x, corrupted)
        p = mech.activation_patching(lm.model, x, corrupted, target, site="resid", baseline=base, method="attribution")
        rec = p.recovered[0].numpy()
        maps = heatmaps(charts(default)[f"dec_resid_{lm.role}"])
        np.testing.assert_allclose(np.stack(maps).reshape(rec.shape[0], -1), rec[:, 1:], atol=1e-5)
    # exact: every depth is (L + 1) T runs, minutes on a CPU; here the library is asked for the last depth only
    real = mech.activation_patching

    def last_depth(model, clean, corrupted, target=None, site="heads", method="exact", **kw):
        if site == "resid" and method == "exact":
            kw["layers"] = [len(model.blocks)]
        return real(model, clean, corrupted, target, site=site, method=method, **kw)

    def exact_entries(key) -> bool:
        return key[0] == "_patching" and ("method", "exact") in key and ("site", "resid") in key

    monkeypatch.setattr(mech, "activation_patching", last_depth)
    jobs.CACHE.discard(exact_entries)
    try:
        at = run(dec_resid="exact", dec_second="blur")
        text = words(at)
        for lm in ctx.models:
            assert f"Residual patching for {lm.name}" in jobs.HEAVY.durations  # computed by the heavy queue
            fig = charts(at)[f"dec_resid_{lm.role}"]
            maps = np.stack(heatmaps(fig))
            x = ctx.inputs(lm)
            target, base = baseline_of(lm.model, x, mech.blurred(x))
            p = real(lm.model, x, "blur", target, site="resid", baseline=base, layers=[lm.num_blocks])
            np.testing.assert_allclose(maps[-1].ravel(), p.recovered[0, -1, 1:].numpy(), atol=1e-5)
            assert np.isnan(maps[:-1]).all()
            labels = [a["text"] for a in fig["layout"]["annotations"]]
            assert labels[-1] == f"block {lm.num_blocks - 1}<br>cls 100%" and "not measured" in labels[0]
            # after the last block the class token alone feeds the head: patching it brings everything back
            assert f"{lm.role}: the class token alone brings back half or more from block {lm.num_blocks - 1} on " \
                   "(100% there)" in text
    finally:
        jobs.CACHE.discard(exact_entries)


def test_sentences_follow_the_numbers() -> None:
    names = ["a", "b", "c"]
    probs, ranks = np.array([0.2, 0.3, 0.6, 0.9]), np.array([3, 2, 1, 1])

    def lens(stay: int, first: int) -> mechanisms.Lens:
        return mechanisms.Lens(0, np.zeros((4, 3)), probs, ranks, np.zeros(4, int), first, stay, np.zeros((4, 2, 2)))

    assert "is the lens's top class from block 1 on;" in mechanisms.lens_sentence("M", lens(2, 2), names)
    assert "already after the embedding" in mechanisms.lens_sentence("M", lens(0, 0), names)
    assert "only after the last block (block 2)" in mechanisms.lens_sentence("M", lens(3, 3), names)
    assert "first on top after the embedding, then loses" in mechanisms.lens_sentence("M", lens(2, 0), names)
    assert "ranks 3 of 3 classes after the embedding (20.0%) and 1 after block 1, half-way (60.0%)" in \
        mechanisms.lens_sentence("M", lens(2, 2), names)

    same = mechanisms.PatchResult(np.full((2, 3), np.nan), 1.0, 1.0, 0, 1, "heads", "exact")
    assert "no difference for any head" in mechanisms.patch_heads_sentence("M", same)
    heads = mechanisms.PatchResult(np.array([[0.05, 0.4, -0.2], [0.1, 0.02, np.nan]]), 3.0, 1.0, 0, 1, "heads", "exact")
    assert mechanisms.patch_heads_sentence("M", heads) == ("M: one head alone brings back at most 40% of the "
                                                          "difference (block 0, head 1); 2 of 6 heads bring back 10% "
                                                          "or more.")
    pair = mechanisms.PairClasses(0, 1, np.array([0.7, 0.2, 0.1]), np.array([0.6, 0.3, 0.1]))
    small = mechanisms.PatchResult(np.zeros((2, 3)), 3.0, 2.5, 0, 1, "heads", "exact")
    assert "a change of -0.50, small beside the metric itself" in mechanisms.metric_sentence("M", pair, small, names)
    assert "this image's runner-up" in mechanisms.metric_sentence("M", pair, small, names)
    big = mechanisms.PatchResult(np.zeros((2, 3)), 3.0, -1.0, 0, 1, "heads", "exact")
    assert "small" not in mechanisms.metric_sentence("M", pair, big, names)

    rec = np.full((3, 5), np.nan)
    rec[:, 0] = [0.1, 0.7, 1.0]
    rec[0, 1:] = [0.5, 0.3, 0.0, -0.1]
    line = mechanisms.resid_sentence("M", mechanisms.PatchResult(rec, 3.0, 1.0, 0, 1, "resid", "exact"), (2, 2))
    assert "the best single token is patch (0, 0), bringing back 50%; 2 of 4 patch tokens hold 80%" in line
    assert "the class token alone brings back half or more from block 0 on (70% there)" in line
    estimated = mechanisms.resid_sentence("M", mechanisms.PatchResult(rec, 3.0, 1.0, 0, 1, "resid", "attribution"),
                                          (2, 2))
    assert "bringing back 50% (estimated)" in estimated and "(70% there, estimated)" in estimated

    received = np.full((2, 5), 0.02)
    received[0, 3], received[:, 0] = 0.6, [0.1, 0.5]
    sink = received > 2.0 / 5  # the library's rule: more than attention_factor (2 here) x an even share
    view = mechanisms.SinkView(received, np.ones((2, 5)), sink, np.zeros((2, 5), bool), (2, 2), 3.0, 2.0)
    line = mechanisms.sinks_sentence("M", view)
    assert "1 of 2 blocks have patch tokens receiving more than 2× an even share" in line
    assert "(most in block 0: 1 token receiving 60% of its attention)" in line
    assert "no patch token has a norm over 3× the median in any block" in line
    assert "the class token receives more than 2× an even share in 1 of 2 blocks (at most 50%)" in line


def test_a_malformed_link_gives_notices_and_the_default_view() -> None:
    at = run(query={"second": "sideways", "t2t_head": "x", "vit_block": "99", "vit_head": "1", "other": "hexagon",
                    "resid": "fast"})
    notices = "\n".join(w.value for w in at.warning)
    assert "`t2t_head` value `x` was not used: not a whole number" in notices
    assert "`other` value `hexagon` was not used: not a shape class" in notices
    assert "`vit_block` value `99` does not exist here: showing `11` instead" in notices
    assert "`second` value `sideways` does not exist here" in notices
    assert "`resid` value `fast` does not exist here" in notices
    assert at.session_state["dec_second"] == "background" and at.session_state["dec_resid"] == "attribution"
    assert (at.session_state["dec_block_ViT"], at.session_state["dec_head_ViT"]) == (11, 1)  # the valid part is used
    assert "ViT, block 11, head 1 writes" in words(at)


def test_a_bad_upload_is_refused_and_the_blur_used() -> None:
    at = run(dec_second="upload")
    at.file_uploader(key="dec_upload").set_value(("junk.png", b"not an image", "image/png"))
    run(at)
    assert any("Cannot use 'junk.png'" in e.value and "blurred image instead" in e.value for e in at.error)
    assert "Second image: the image blurred" in words(at)


def test_patching_leaves_the_models_bit_identical_and_other_sessions_untouched() -> None:
    at = run(page="views/5_classify.py")
    ctx = at.session_state[compute.CTX_KEY]
    weights = {lm.role: snapshot(lm.model) for lm in ctx.models}
    shown = {role: values(charts(at)[f"cls_{role}"]["data"][0]["x"]).tolist() for role in ("T2T-ViT", "ViT")}
    # a pair no other test computes: every patched run happens in this page run
    decision = run(dec_second="other_class", dec_other=7)
    assert "with a **" in words(decision)
    for lm in ctx.models:
        after = lm.model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in weights[lm.role].items()), lm.role
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in lm.model.modules())
        assert all(p.grad is None for p in lm.model.parameters())
    again = run(page="views/5_classify.py")  # another session afterwards: the intact predictions
    for role in ("T2T-ViT", "ViT"):
        assert values(charts(again)[f"cls_{role}"]["data"][0]["x"]).tolist() == shown[role]
