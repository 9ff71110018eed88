"""AttnLRP and CP-LRP where a user sees them (issue 27, section 4), with AppTest (no browser).

Explanations: both methods for both models, the map at pixel resolution and its conservation beside it, as
`analysis.lrp.lrp` computes them, scored by deletion / insertion and sanity-checked like the other methods.
Knock-outs: the heads' relevance grid is `lrp(...).heads`, and the sentence under it follows the rank
correlation with the knock-out importance computed here with SciPy. The shared models stay bit-identical.
"""

from __future__ import annotations

import base64
import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from streamlit.testing.v1 import AppTest

from analysis.knockout import head_importance_scores
from analysis.lrp import lrp
from app import compute, explanations, knockouts
from tests.app.test_knockouts import MAIN, charts, snapshot, values

VARIANT = {"attnlrp": "attnlrp", "cp_lrp": "cp"}
TIMEOUT = 300


def run(at: AppTest | None = None, page: str | None = None, query: dict[str, str] | None = None,
        **state: object) -> AppTest:
    """A fresh app with `state` (or `at`), opened on `page` or by a link `query`, run; fails on any exception."""
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


def png_pixels(fig: dict) -> np.ndarray:
    """(H, W, 3) uint8 of the image (a PNG data URI) a figure shows."""
    uri = fig["data"][0]["source"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def predicted(ctx, lm) -> int:
    return int(np.argmax(compute.probabilities(ctx.trace(lm))))


# ----------------------------------------------------------------------------------------------
# Explanations
# ----------------------------------------------------------------------------------------------


def test_explanations_show_lrp_at_the_pixels_with_its_conservation_and_scores() -> None:
    # opened by a lesson link naming both methods: the methods parameter takes the new names
    at = run(page="views/3_explanations.py", query={"methods": "attnlrp,cp_lrp", "faith": "1", "steps": "4"},
             exp_carry="mass")
    assert at.multiselect(key="exp_methods").value == ["attnlrp", "cp_lrp"]
    ctx = at.session_state[compute.CTX_KEY]
    before = {lm.role: snapshot(lm.model) for lm in ctx.models}
    figs = charts(at)
    notes = [c.value for c in at.caption]
    metrics = [float(m.value) for m in at.metric]
    shown_scores = {(metrics[i], metrics[i + 1]) for i in range(0, len(metrics), 2)}
    assert len(metrics) == 8  # deletion and insertion, two methods, two models
    for method in ("attnlrp", "cp_lrp"):
        for lm in ctx.models:
            target = predicted(ctx, lm)
            rel = lrp(lm.model, ctx.inputs(lm), target, variant=VARIANT[method])
            pixel_map = rel.pixel_map[0].float().cpu()
            # the map: lrp's pixel relevance itself, at pixel resolution, not carried back (carry is "mass")
            torch.testing.assert_close(explanations.lrp_maps(ctx, lm, method, target).pixels, pixel_map)
            img = png_pixels(figs[f"exp_{method}_{lm.role}"])
            assert img.shape[:2] == tuple(pixel_map.shape) == (lm.img_size, lm.img_size)
            # every pixel's colour follows its own relevance: red where it is for the class, blue against
            r = pixel_map.numpy()
            strong = np.abs(r) > 0.2 * np.quantile(np.abs(r), 0.995)
            redder = img[..., 0].astype(int) - img[..., 2].astype(int)
            assert strong.sum() > 100
            assert (np.sign(redder[strong]) == np.sign(r[strong])).mean() > 0.99
            # the conservation beside the map: lrp's, with its numbers
            line = (f"Conservation {float(rel.conservation[0]):.1%}: the pixels' relevance sums to "
                    f"{float(rel.pixels[0].sum()):.2f} of the class logit {float(rel.logit[0]):.2f}.")
            assert sum(line in n for n in notes) == 1, (line, notes)
            if method == "attnlrp":  # deletion / insertion of lrp's pixel map, scored afresh: the page shows these
                auc = explanations.faithfulness_scores(ctx, lm, f"test|{method}", pixel_map, target, 4).value
                assert (round(auc[0], 3), round(auc[1], 3)) in shown_scores
    # T2T-ViT's journey: the relevance at each T2T step, from lrp's stages, ending at the pixels
    strip = figs["exp_strip"]["data"]
    assert len(strip) == 6
    rel = lrp(ctx.t2t.model, ctx.inputs(ctx.t2t), predicted(ctx, ctx.t2t))
    sums = [rel.tokens[0], rel.stages["t2t.attn2"][0], rel.stages["t2t.split1"][0], rel.stages["t2t.attn1"][0],
            rel.stages["t2t.split0"][0], rel.pixel_map[0]]
    titles = [a["text"] for a in figs["exp_strip"]["layout"]["annotations"]]
    for title, m in zip(titles, sums, strict=True):
        assert f"(Σ={float(m.sum()):.3g})" in title
    assert not [i for i in at.info if "speckled" in i.value]  # nothing was carried back
    for lm in ctx.models:
        for k, v in snapshot(lm.model).items():
            assert torch.equal(v, before[lm.role][k]), k


def test_sanity_check_takes_lrp_on_its_pixel_map() -> None:
    at = run(page="views/3_explanations.py", exp_methods=["cp_lrp"], exp_faith=False, exp_sanity=True)
    ctx = at.session_state[compute.CTX_KEY]
    figs = charts(at)
    notes = [c.value for c in at.caption]
    for lm in ctx.models:
        assert f"exp_sanity_cp_lrp_{lm.role}" in figs
        target = predicted(ctx, lm)
        curve = knockouts.sanity(ctx, lm, "cp_lrp", target)
        assert curve["layers"][0] == "original" and curve["spearman_abs"][0] == pytest.approx(1.0)
        assert len(curve["layers"]) == lm.num_blocks + 4  # original, head, norm, every block, stem
        assert f"**{lm.role}**, {explanations.METHOD_NAMES['cp_lrp']}: {knockouts.sanity_verdict(curve)}." in notes
        # the maps compared are lrp's pixel maps, the map the page shows
        shown = knockouts._pixel_map("cp_lrp")(lm.model, ctx.inputs(lm), torch.tensor([target]))
        torch.testing.assert_close(shown, lrp(lm.model, ctx.inputs(lm), target, variant="cp").pixel_map)


# ----------------------------------------------------------------------------------------------
# Knock-outs
# ----------------------------------------------------------------------------------------------


def words_for(rho: float) -> str:
    """The page's caption: 0.5 or more strong, 0.3 moderate, 0.1 weak, -0.1 to 0.1 none, below -0.1 disagreement."""
    return ("strong agreement" if rho >= 0.5 else "moderate agreement" if rho >= 0.3 else "weak agreement"
            if rho >= 0.1 else "no agreement" if rho >= -0.1 else "disagreement")


def test_knockouts_show_the_heads_relevance_and_whether_it_agrees() -> None:
    at = run(page="views/6_knockouts.py")
    ctx = at.session_state[compute.CTX_KEY]
    vit_out = [(11, 0), (10, 2)]
    at.multiselect(key="ko_heads_ViT").set_value([f"{b}.{h}" for b, h in vit_out])
    run(at)
    figs = charts(at)
    sentences = [m.value for m in at.markdown if "between the heads' AttnLRP relevance" in m.value]
    assert len(sentences) == 2
    for lm, out in ((ctx.t2t, []), (ctx.vit, vit_out)):
        x = ctx.inputs(lm)
        target = int(np.argmax(knockouts.knocked_run(ctx, lm).probs))
        heads = lrp(lm.model, x, target).heads[0].numpy()
        grid = values(figs[f"ko_relevance_{lm.role}"]["data"][0]["z"]).reshape(lm.num_blocks, lm.num_heads)
        np.testing.assert_allclose(grid, heads, rtol=1e-5, atol=1e-6)
        drop = head_importance_scores(lm.model, x, target, given=out).logit_drop[0].numpy()
        keep = np.ones(heads.shape, dtype=bool)
        for b, h in out:
            keep[b, h] = False
        rho = stats.spearmanr(heads[keep], drop[keep]).statistic
        sentence = next(s for s in sentences if s.startswith(f"{lm.role}:"))
        assert f"{words_for(rho)} (Spearman ρ = {rho:+.2f} over {keep.sum()} heads)" in sentence
        assert ("left out" in sentence) == bool(out)
        top = np.unravel_index(np.argmax(np.where(keep, heads, -np.inf)), heads.shape)
        rank = 1 + int((drop[keep] > drop[top]).sum())
        assert f"block {top[0]}, head {top[1]} ({heads[top]:+.3g}), is {knockouts._ordinal(rank)} of" in sentence


def test_rank_correlation_is_scipys() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + rng.normal(size=30)
    a[:4], b[5:9] = a[0], b[5]  # ties in both
    assert knockouts.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    np.testing.assert_array_equal(knockouts.average_ranks(a), stats.rankdata(a))
    assert np.isnan(knockouts.spearman(np.ones(5), np.arange(5.0)))
    # the permutation p-value against the exact one: all 720 orderings of 6 heads, each rho by SciPy (SciPy's own
    # permutation_test with "pairings" permutes both samples, (6!)^2 orderings: it samples them at random)
    x, y = rng.normal(size=6), rng.normal(size=6)
    y = y + 0.8 * x
    rho = abs(stats.spearmanr(x, y).statistic)
    exact = np.mean([abs(stats.spearmanr(x, y[list(order)]).statistic) >= rho - 1e-12
                     for order in itertools.permutations(range(6))])
    assert knockouts.permutation_p(x, y) == pytest.approx(exact, abs=0.015)


def test_agreement_sentence_follows_rho_and_chance() -> None:
    rng = np.random.default_rng(1)
    drop = rng.normal(size=(6, 4))
    same = knockouts.relevance_agreement(drop * 2, drop)
    assert same.rho == pytest.approx(1.0) and same.p < 0.01 and same.top_rank == 1 and same.n == 24
    text = knockouts.agreement_sentence("ViT", "AttnLRP", same)
    assert text.startswith("ViT: strong agreement (Spearman ρ = +1.00 over 24 heads)") and "largely" in text
    opposite = knockouts.agreement_sentence("ViT", "AttnLRP", knockouts.relevance_agreement(-drop, drop))
    assert "disagreement" in opposite and "does better without" in opposite
    noise = knockouts.relevance_agreement(rng.normal(size=(6, 4)), drop, out=[(0, 0), (5, 3)])
    assert noise.n == 22
    text = knockouts.agreement_sentence("ViT", "AttnLRP", noise, knocked=2)
    assert words_for(noise.rho) in text and "left out" in text
    if noise.p >= knockouts.SIGNIFICANCE and abs(noise.rho) >= 0.1:
        assert "no clear link" in text
    flat = knockouts.relevance_agreement(np.ones((2, 2)), drop[:2, :2])
    flat = knockouts.agreement_sentence("T2T-ViT", "AttnLRP", flat)
    assert "no rank correlation" in flat
