"""The Knock-outs page and the Explanations page's sanity checks (issue 23), with AppTest (no browser).

What the page shows is checked against `analysis.knockout` / `analysis.sanity` called directly on the
same models and image, and the models shared by every session must come out bit-identical.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from analysis.knockout import knocked_out, mean_head_outputs
from app import compute, knockouts

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")
PAGE = "views/6_knockouts.py"
TIMEOUT = 300


def run(at: AppTest | None = None, page: str | None = PAGE, query: dict[str, str] | None = None,
        **state: object) -> AppTest:
    if at is None:
        at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
        for k, v in state.items():
            at.session_state[k] = v
        if query:  # AppTest finds a page by url_path only once the app has run: run, then open the link anew
            at.run()
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
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v, dtype=float)


def top5(at: AppTest, role: str) -> dict[str, float]:
    """{class name: probability} of the page's top-5 bars of model `role`."""
    bar = charts(at)[f"ko_top5_{role}"]["data"][0]
    return dict(zip(bar["y"], values(bar["x"]).tolist(), strict=True))


def direct_top5(lm, x: torch.Tensor, **knock) -> dict[str, float]:
    with torch.no_grad(), knocked_out(lm.model, **knock):
        probs = lm.model(x)[0].float().softmax(-1)
    p, i = probs.topk(5)
    return {lm.class_names[int(k)]: float(v) for k, v in zip(i, p, strict=True)}


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_page_renders_with_every_part() -> None:
    at = run()
    assert [h.value for h in at.header] == ["Knock-outs: switch parts off and watch"]
    assert not [e.value for e in at.error]
    shown = charts(at)
    for role in ("T2T-ViT", "ViT"):
        for part in ("ko_grid", "ko_top5", "ko_map", "ko_importance"):
            assert f"{part}_{role}" in shown
    assert "ViT has no such step" in " ".join(c.value for c in at.caption)


def test_knocked_out_heads_change_the_top5_as_the_library_computes() -> None:
    at = run()
    ctx = at.session_state[compute.CTX_KEY]
    t2t_heads, vit_heads = [(6, 0), (6, 1), (6, 2), (5, 3)], [(11, 0), (11, 1), (11, 2), (10, 0)]
    before = {lm.role: top5(at, lm.role) for lm in ctx.models}
    at.multiselect(key="ko_heads_T2T-ViT").set_value([f"{b}.{h}" for b, h in t2t_heads])
    at.multiselect(key="ko_heads_ViT").set_value([f"{b}.{h}" for b, h in vit_heads])
    run(at)
    for lm, heads in zip(ctx.models, (t2t_heads, vit_heads), strict=True):
        shown = top5(at, lm.role)
        assert close(shown, direct_top5(lm, ctx.inputs(lm), heads=heads))
        assert close(before[lm.role], direct_top5(lm, ctx.inputs(lm)))
        assert not close(shown, before[lm.role]), "four heads out must move the probabilities"
    # the importance grid: given those heads, each further head's drop, as head_importance_scores computes it
    fig = charts(at)["ko_importance_ViT"]
    grid = values(fig["data"][0]["z"]).reshape(12, 3)
    from analysis.knockout import head_importance_scores

    lm = ctx.vit
    target = int(np.argmax(knockouts.knocked_run(ctx, lm).probs))
    direct = head_importance_scores(lm.model, ctx.inputs(lm), target, given=vit_heads).logit_drop[0].numpy()
    np.testing.assert_allclose(grid, direct, atol=1e-5)
    assert all(grid[b, h] == 0 for b, h in vit_heads)
    # the sentence says what the bars show
    words = " ".join(m.value for m in at.markdown)
    was = max(before["ViT"], key=before["ViT"].get)
    assert f"ViT with {len(vit_heads)} of 36 heads out (zero ablation)" in words
    assert f"**{was}** goes from {before['ViT'][was]:.1%}" in words


def test_t2t_switches_and_mean_mode() -> None:
    at = run()
    ctx = at.session_state[compute.CTX_KEY]
    at.toggle(key="ko_attn1").set_value(True)
    at.toggle(key="ko_attn2").set_value(True)
    run(at)
    assert close(top5(at, "T2T-ViT"), direct_top5(ctx.t2t, ctx.inputs(ctx.t2t), t2t=(1, 2)))
    assert close(top5(at, "ViT"), direct_top5(ctx.vit, ctx.inputs(ctx.vit)))  # ViT has no T2T step: unchanged
    at.toggle(key="ko_attn1").set_value(False)
    at.toggle(key="ko_attn2").set_value(False)
    at.radio(key="ko_mode").set_value("mean")
    at.multiselect(key="ko_heads_ViT").set_value(["0.0", "0.1", "0.2"])
    run(at)
    lm = ctx.vit
    # the reference: 16 synthetic test images, examples 50.. of each class, as the page says
    ref_images = [im for im, _ in knockouts._synthetic(knockouts.REFERENCE_IMAGES, knockouts.REFERENCE_FIRST)]
    ref = mean_head_outputs(lm.model, compute.batch_inputs(lm, ref_images))
    direct = direct_top5(lm, ctx.inputs(lm), heads=[(0, 0), (0, 1), (0, 2)], mode="mean", reference=ref)
    assert close(top5(at, "ViT"), direct)
    zero = direct_top5(lm, ctx.inputs(lm), heads=[(0, 0), (0, 1), (0, 2)])
    assert not close(direct, zero)


def test_a_knock_out_never_reaches_the_cached_model_or_other_sessions() -> None:
    at = run(page="views/5_classify.py")
    ctx = at.session_state[compute.CTX_KEY]
    weights = {lm.role: snapshot(lm.model) for lm in ctx.models}
    classify = {role: values(fig["data"][0]["x"]).tolist() for role, fig in
                (("T2T-ViT", charts(at)["cls_T2T-ViT"]), ("ViT", charts(at)["cls_ViT"]))}
    ko = run(page=PAGE, **{"ko_heads_T2T-ViT": ["0.0", "3.1", "6.2"], "ko_heads_ViT": ["0.0", "11.2"],
                           "ko_attn1": True})
    assert "heads out" in " ".join(m.value for m in ko.markdown)
    for lm in ctx.models:
        after = lm.model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in weights[lm.role].items()), lm.role
        assert not lm.model._forward_pre_hooks and not any(m._forward_hooks or m._forward_pre_hooks
                                                         for m in lm.model.modules())
    again = run(page="views/5_classify.py")  # another session, after the knock-outs: the intact predictions
    for role in ("T2T-ViT", "ViT"):
        assert values(charts(again)[f"cls_{role}"]["data"][0]["x"]).tolist() == classify[role]
    for lm in ctx.models:
        with torch.no_grad():
            probs = lm.model(ctx.inputs(lm))[0].softmax(-1)
        np.testing.assert_allclose(compute.probabilities(ctx.trace(lm)), probs.numpy(), atol=1e-6)


def test_malformed_link_gives_a_notice_and_the_default_view() -> None:
    at = run(query={"t2t_heads": "99.9,x.y", "mode": "sideways", "attn1": "yes", "vit_heads": "1.1"})
    notices = "\n".join(w.value for w in at.warning)
    assert "`attn1` value `yes` was not used: not 0 or 1" in notices
    assert "`t2t_heads` value `99.9,x.y` does not exist here" in notices
    assert "`mode` value `sideways` does not exist here" in notices
    assert at.session_state["ko_heads_T2T-ViT"] == [] and at.session_state["ko_mode"] == "zero"
    assert at.session_state["ko_heads_ViT"] == ["1.1"]  # the valid part of the link is used
    assert "ViT with 1 of 36 heads out" in " ".join(m.value for m in at.markdown)


def test_head_click_toggles_the_head() -> None:
    def script() -> None:
        import streamlit as st

        from app import widgets

        st.session_state.setdefault("heads", ["1.2"])
        st.session_state["grid"] = {"selection": {"points": [{"point_index": 5, "customdata": [3, 1]}]}}
        widgets.head_toggle_callback("grid", "heads")()
        st.session_state["once"] = list(st.session_state["heads"])
        widgets.head_toggle_callback("grid", "heads")()

    at = AppTest.from_function(script)
    at.run()
    assert not at.exception
    assert at.session_state["once"] == ["1.2", "3.1"]  # clicked: knocked out
    assert at.session_state["heads"] == ["1.2"]  # clicked again: back in


def test_sanity_verdict_matches_the_curve_it_draws() -> None:
    at = run(page="views/3_explanations.py", exp_methods=["rollout"], exp_sanity=True, exp_faith=False)
    ctx = at.session_state[compute.CTX_KEY]
    shown = charts(at)
    texts = " ".join(c.value for c in at.caption)
    for lm in ctx.models:
        fig = shown[f"exp_sanity_rollout_{lm.role}"]
        curve = {t["name"]: values(t["y"]) for t in fig["data"]}
        s_abs = curve["|Spearman| (of |map|)"]
        assert s_abs[0] == pytest.approx(1.0)  # nothing randomised: the map itself
        line = re.search(rf"\*\*{re.escape(lm.role)}\*\*, Attention rollout: (passes|fails): [^.]*?"
                         r"(?:falls to|is still) (-?[0-9.]+)", texts)
        assert line, texts
        assert float(line.group(2)) == pytest.approx(s_abs[-1], abs=0.005)
        assert (line.group(1) == "passes") == (s_abs[-1] < knockouts.SANITY_THRESHOLD)
        # the curve is analysis.sanity's, on the same model, image and discard rule
        from analysis.sanity import cascading_randomization

        rule, ratio = at.session_state["exp_rule"], at.session_state["exp_discard"]
        direct = cascading_randomization("rollout", lm.model, ctx.inputs(lm), discard=rule, discard_ratio=ratio)
        np.testing.assert_allclose(s_abs, direct.mean("spearman_abs").numpy(), atol=1e-6)


def test_sentences_from_the_numbers() -> None:
    passing = {"layers": ["original", "head", "stem"], "spearman_abs": np.array([1.0, 0.6, 0.08]),
               "spearman": np.array([1.0, 0.5, 0.02]), "ssim": np.array([1.0, 0.4, 0.1])}
    assert knockouts.sanity_verdict(passing).startswith("passes: |Spearman| with the intact model's map falls to 0.08")
    assert "once 'stem' is re-initialised" in knockouts.sanity_verdict(passing)
    failing = dict(passing, spearman_abs=np.array([1.0, 0.9, 0.7]))
    assert knockouts.sanity_verdict(failing).startswith("fails: |Spearman| with the intact model's map is still 0.70")
    assert knockouts.prune_counts(28, 8) == [0, 4, 7, 10, 14, 18, 21, 24, 28]
    assert knockouts.prune_counts(3, 8) == [0, 1, 2, 3]


def test_pruning_curves_and_their_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's pruning curves (3 removal counts here, to keep the test cheap) and the sentence from them."""
    monkeypatch.setattr(knockouts, "prune_counts", lambda total, points: [0, total // 2, total])
    at = run(ko_prune=True, ko_prune_n=20)
    ctx = at.session_state[compute.CTX_KEY]
    fig = charts(at)["ko_pruning"]
    words = " ".join(m.value for m in at.markdown)
    for lm in ctx.models:
        line = next(t for t in fig["data"] if t["name"] == f"{lm.role} ({lm.name})")
        acc = values(line["y"])
        curve = knockouts._pruning(lm.key, 20, 10, 8, "zero", 1000, lm)
        np.testing.assert_allclose(acc, curve.accuracy.numpy())
        np.testing.assert_allclose(values(line["x"]), [0, (curve.num_heads // 2) / curve.num_heads, 1.0])
        assert knockouts.pruning_sentence(lm.role, curve) in words
        assert f"{lm.role}: {curve.removable} of {curve.num_heads} heads" in words
        # removable: the last count before accuracy first falls more than one point below the intact model's
        ok = acc >= acc[0] - 0.01 - 1e-12
        expect = curve.removed.tolist()[(len(ok) if ok.all() else int(np.argmin(ok))) - 1]
        assert curve.removable == expect
