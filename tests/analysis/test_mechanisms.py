"""Logit lens, direct logit attribution, activation patching and attention sinks against hand-built cases and
computations written here (forward hooks, traces, a model made linear), on small T2T-ViT and ViT configurations."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import t2t
from analysis import mechanisms as mech
from analysis.rollout import cls_rollout
from t2t.data import LocalStructureDataset
from t2t.data.synthetic import normalize
from t2t.t2t_vit import T2TViT
from t2t.vit import VisionTransformer


def scaled(model: nn.Module) -> nn.Module:
    """Weights of unit gain (the init's std 0.02 makes every effect too small to see), random biases and norms."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features**-0.5)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=0.1)
            elif isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, mean=1.0, std=0.1)
                nn.init.normal_(m.bias, std=0.1)
        if hasattr(model, "cls_token"):
            nn.init.normal_(model.cls_token, std=1.0)
    return model.eval()


def small_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return scaled(VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=3, num_heads=4,
                                    mlp_ratio=2.0))


def small_t2t(tokens_type: str = "performer", seed: int = 0, aux_head: bool = False) -> T2TViT:
    torch.manual_seed(seed)
    return scaled(T2TViT(img_size=32, tokens_type=tokens_type, num_classes=5, embed_dim=16, depth=2, num_heads=2,
                         mlp_ratio=2.0, token_dim=8, aux_head=aux_head))


MAKERS = {"vit": small_vit, "t2t": small_t2t, "t2t-transformer": lambda: small_t2t("transformer")}


def images(n: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules()), "a hook was left behind"
    assert all(p.grad is None for p in model.parameters()), "a gradient accumulated on the parameters"
    assert not model.training


def residual_by_trace(model: nn.Module, x: Tensor) -> list[Tensor]:
    """x_0..x_L from t2t.trace: the embedded tokens plus class token and position embedding, then block outputs."""
    tr = t2t.trace(model, x, attention=False)
    stem = tr["t2t.project"] if model.family == "t2t" else tr["patch_embed"]
    x0 = torch.cat([model.cls_token.expand(len(x), -1, -1), stem], dim=1) + model.pos_embed
    return [x0] + [tr[f"blocks.{i}"] for i in range(len(model.blocks))]


# --- logit lens -----------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("name", MAKERS)
def test_the_lens_reads_every_depth_and_its_last_entry_is_the_model(name):
    model, x = MAKERS[name](), images()
    before = snapshot(model)
    lens = mech.logit_lens(model, x)
    assert lens.shape == (3, len(model.blocks) + 1, 5)
    assert torch.equal(lens[:, -1], model(x))
    for depth, resid in enumerate(residual_by_trace(model, x)):
        torch.testing.assert_close(lens[:, depth], model.head(model.norm(resid[:, 0])), rtol=1e-5, atol=1e-5)
    assert torch.equal(lens[0, 0], lens[1, 0]), "depth 0 is the class token and its position: one for all images"
    assert not torch.allclose(lens[:, 1], lens[:, -1], atol=1e-3)
    assert_untouched(model, before)


@torch.no_grad()
def test_the_lens_of_a_token_labeling_model_adds_the_auxiliary_head_or_says_what_it_adds():
    model, x = small_t2t(aux_head=True), images()
    cache = mech.run_with_cache(model, x)
    lens, cls_only = mech.logit_lens(model, cache), mech.logit_lens(model, cache, aux=False)
    assert torch.equal(lens[:, -1], model(x))
    aux = 0.5 * model.aux_head(model.norm(cache.resid[-1])[:, 1:]).amax(dim=1)  # TokenLabeling's eval term
    assert aux.abs().min() > 1e-3
    torch.testing.assert_close(lens[:, -1] - cls_only[:, -1], aux, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls_only[:, -1], model.head(model.norm(cache.resid[-1][:, 0])))
    for depth, resid in enumerate(residual_by_trace(model, x)):
        normed = model.norm(resid)
        want = model.head(normed[:, 0]) + 0.5 * model.aux_head(normed[:, 1:]).amax(dim=1)
        torch.testing.assert_close(lens[:, depth], want, rtol=1e-5, atol=1e-5)


def test_readable_depth_first_and_stable():
    lens = torch.zeros(3, 4, 2)
    top = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1]])  # top-1 class per depth; the last is final
    lens.scatter_(2, top[..., None], 1.0)
    assert mech.readable_depth(lens).tolist() == [0, 0, 1]
    assert mech.readable_depth(lens, stay=True).tolist() == [2, 0, 3]


@torch.no_grad()
@pytest.mark.parametrize("name", ["vit", "t2t"])
def test_patch_lens_reads_each_patch_token_through_the_norm_and_head(name):
    model, x = MAKERS[name](), images()
    target = torch.tensor([0, 3, 4])
    maps = mech.patch_lens(model, x, target)
    h, w = model.grid(32, 32)
    assert maps.shape == (3, len(model.blocks) + 1, h, w)
    for depth, resid in enumerate(residual_by_trace(model, x)):
        logits = model.head(model.norm(resid[:, 1:]))                           # (B, N, C)
        want = logits[torch.arange(3), :, target].reshape(3, h, w)
        torch.testing.assert_close(maps[:, depth], want, rtol=1e-5, atol=1e-5)
    predicted = mech.patch_lens(model, x)
    torch.testing.assert_close(predicted, mech.patch_lens(model, x, model(x).argmax(-1)))
    with pytest.raises(ValueError, match="auxiliary"):
        mech.patch_lens(model, x, head="aux")


# --- direct logit attribution ---------------------------------------------------------------------------

def hand_dla_terms(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Heads (B, L, H), MLPs (B, L), embedding (B,) and the biases' term (B,), from this test's own hooks."""
    zs, mlps, finals = [], [], []
    handles = [b.attn.proj.register_forward_pre_hook(lambda _m, a: zs.append(a[0][:, 0])) for b in model.blocks]
    handles += [b.mlp.register_forward_hook(lambda _m, _a, y: mlps.append(y[:, 0])) for b in model.blocks]
    handles.append(model.norm.register_forward_pre_hook(lambda _m, a: finals.append(a[0][:, 0])))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    final = finals[0].double()
    sigma = torch.sqrt(final.var(-1, unbiased=False) + model.norm.eps)
    w_out = model.head.weight[target].double()                                # (B, D)

    def through_norm(c: Tensor) -> Tensor:                                    # (B, D) -> (B,)
        c = c.double()
        return ((c - c.mean(-1, keepdim=True)) * model.norm.weight.double() * w_out).sum(-1) / sigma

    heads = torch.zeros(len(x), len(model.blocks), model.blocks[0].attn.num_heads, dtype=torch.float64)
    bias = (w_out * model.norm.bias.double()).sum(-1) + model.head.bias[target].double()
    for layer, block in enumerate(model.blocks):
        d = block.attn.proj.in_features // block.attn.num_heads
        for h in range(block.attn.num_heads):
            part = zs[layer][:, h * d:(h + 1) * d].double() @ block.attn.proj.weight[:, h * d:(h + 1) * d].double().T
            heads[:, layer, h] = through_norm(part)
        bias = bias + through_norm(block.attn.proj.bias.expand(len(x), -1))
    embed = through_norm((model.cls_token[:, 0] + model.pos_embed[:, 0]).expand(len(x), -1))
    return heads, torch.stack([through_norm(m) for m in mlps], dim=1), embed, bias


@torch.no_grad()
@pytest.mark.parametrize("name", MAKERS)
def test_dla_sums_to_the_logit_and_each_head_term_equals_a_hook_computation(name):
    model, x = MAKERS[name](), images()
    before = snapshot(model)
    logits = model(x)
    target = torch.tensor([1, 0, 4])
    dla = mech.direct_logit_attribution(model, x, target)
    assert dla.heads.shape == (3, len(model.blocks), model.blocks[0].attn.num_heads)
    assert dla.mlps.shape == (3, len(model.blocks)) and dla.embed.shape == dla.bias.shape == (3,)
    want = logits[torch.arange(3), target]
    torch.testing.assert_close(dla.heads.sum((1, 2)) + dla.mlps.sum(1) + dla.embed + dla.bias, want,
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(dla.total, want, rtol=0, atol=1e-4)
    heads, mlps, embed, bias = hand_dla_terms(model, x, target)
    torch.testing.assert_close(dla.heads, heads.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dla.mlps, mlps.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dla.embed, embed.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dla.bias, bias.float(), rtol=1e-5, atol=1e-5)
    assert dla.heads.abs().min() > 0 and dla.heads.std() > 0.01, "the heads' terms must be non-trivial"
    assert torch.all(dla.aux == 0)
    torch.testing.assert_close(mech.direct_logit_attribution(model, x).target, logits.argmax(-1))
    assert_untouched(model, before)


@torch.no_grad()
def test_dla_of_a_token_labeling_model_reports_the_auxiliary_term_apart():
    model, x = small_t2t(aux_head=True), images()
    logits = model(x)
    dla = mech.direct_logit_attribution(model, x)
    cls_logit = model.head(model.norm(mech.run_with_cache(model, x).resid[-1][:, 0]))[torch.arange(3), dla.target]
    torch.testing.assert_close(dla.total, cls_logit, rtol=0, atol=1e-4)
    torch.testing.assert_close(dla.total + dla.aux, logits[torch.arange(3), dla.target], rtol=0, atol=1e-4)
    assert dla.aux.abs().min() > 1e-3


def test_top_share_is_the_share_of_the_largest_magnitudes():
    values = torch.tensor([[4.0, -3.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert mech.top_share(values, 0.1).item() == pytest.approx(7 / 10)   # ceil(1.2) = 2 of 12: |4| + |-3| of 10
    assert mech.top_share(values, 0.05).item() == pytest.approx(4 / 10)  # 1 of 12
    assert mech.top_share(torch.ones(2, 3, 4), 0.25).tolist() == pytest.approx([0.25, 0.25])


# --- patching -------------------------------------------------------------------------------------------

def capture(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Each block's `attn @ v` from this test's own forward pre-hooks."""
    zs: list[Tensor] = []
    handles = [b.attn.proj.register_forward_pre_hook(lambda _m, a: zs.append(a[0].clone())) for b in model.blocks]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return zs


def run_with_head_from(model: nn.Module, x: Tensor, source_z: Tensor, block: int, head: int) -> Tensor:
    """Logits of `model(x)` with head `head` of `block` taking its slice of `attn @ v` from `source_z`."""
    d = model.blocks[block].attn.proj.in_features // model.blocks[block].attn.num_heads

    def hook(_m, args):
        z = args[0].clone()
        z[..., head * d:(head + 1) * d] = source_z[..., head * d:(head + 1) * d]
        return (z,)

    handle = model.blocks[block].attn.proj.register_forward_pre_hook(hook)
    try:
        return model(x)
    finally:
        handle.remove()


@torch.no_grad()
@pytest.mark.parametrize("name", ["vit", "t2t"])
def test_patching_every_site_gives_the_clean_run_and_no_site_the_corrupted_one(name):
    model, clean, corrupted = MAKERS[name](), images(2), images(2, seed=9)
    before = snapshot(model)
    want_clean, want_corrupted = model(clean), model(corrupted)
    source = mech.run_with_cache(model, clean)
    t = source.resid[0].shape[1]
    with mech.patched(model, source):
        assert torch.equal(model(corrupted), want_corrupted)
    for index in range(len(model.blocks) + 1):
        with mech.patched(model, source, resid=[(index, tok) for tok in range(t)]):
            torch.testing.assert_close(model(corrupted), want_clean, rtol=1e-5, atol=1e-5)
        with mech.patched(model, source, resid=[(index, None)]):
            torch.testing.assert_close(model(corrupted), want_clean, rtol=1e-5, atol=1e-5)
    every_head = [(b, h) for b in range(len(model.blocks)) for h in range(model.blocks[0].attn.num_heads)]
    # the class token enters as a constant (its embedding and position) and learns about the image only through
    # the heads: with every head from the clean run its whole stream, and so the logits, are the clean ones
    with mech.patched(model, source, heads=every_head):
        torch.testing.assert_close(model(corrupted), want_clean, rtol=1e-5, atol=1e-5)
    with mech.patched(model, source, heads=every_head[1:]):
        assert not torch.allclose(model(corrupted), want_clean, atol=1e-4)
    assert_untouched(model, before)


@torch.no_grad()
@pytest.mark.parametrize("name", ["vit", "t2t"])
@pytest.mark.parametrize("max_batch", [256, 5])
def test_a_heads_patch_equals_a_hand_written_hook(name, max_batch):
    model, clean, corrupted = MAKERS[name](), images(3), images(3, seed=9)
    before = snapshot(model)
    result = mech.activation_patching(model, clean, corrupted, site="heads", max_batch=max_batch, min_rows=4)
    target = model(clean).argmax(-1)
    assert torch.equal(result.target, target)
    idx = torch.arange(3)
    m_clean, m_corr = model(clean)[idx, target], model(corrupted)[idx, target]
    torch.testing.assert_close(result.clean, m_clean)
    torch.testing.assert_close(result.corrupted, m_corr)
    zs = capture(model, clean)
    for block in range(len(model.blocks)):
        for head in range(model.blocks[0].attn.num_heads):
            m = run_with_head_from(model, corrupted, zs[block], block, head)[idx, target]
            torch.testing.assert_close(result.patched[:, block, head], m, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(result.recovered[:, block, head], (m - m_corr) / (m_clean - m_corr),
                                       rtol=1e-4, atol=1e-4)
    assert result.recovered.std() > 0.01
    assert_untouched(model, before)


@torch.no_grad()
def test_logit_difference_metric_layers_and_the_blur_shortcut():
    model, clean = small_vit(), images(2)
    corrupted = mech.blurred(clean, 2.0)
    target, other = torch.tensor([1, 2]), torch.tensor([0, 4])
    diff = mech.activation_patching(model, clean, corrupted, target, baseline=other)
    zs = capture(model, clean)
    idx = torch.arange(2)
    m = run_with_head_from(model, corrupted, zs[1], 1, 2)
    torch.testing.assert_close(diff.patched[:, 1, 2], m[idx, target] - m[idx, other], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diff.clean, model(clean)[idx, target] - model(clean)[idx, other])
    some = mech.activation_patching(model, clean, "blur", target, baseline=other, layers=[1])
    full = mech.activation_patching(model, clean, mech.blurred(clean), target, baseline=other)
    assert torch.isnan(some.recovered[:, [0, 2]]).all() and not torch.isnan(some.recovered[:, 1]).any()
    torch.testing.assert_close(some.patched[:, 1], full.patched[:, 1])
    apart = mech.activation_patching(model, clean, corrupted, target, layers=[0, 2], min_rows=64)  # one group
    every = mech.activation_patching(model, clean, corrupted, target)
    torch.testing.assert_close(apart.patched[:, [0, 2]], every.patched[:, [0, 2]], rtol=1e-5, atol=1e-5)
    assert torch.isnan(apart.patched[:, 1]).all()
    resid = mech.activation_patching(model, clean, corrupted, target, site="resid", layers=[0, 3])
    assert torch.isnan(resid.patched[:, 1:3]).all()
    with pytest.raises(ValueError, match="layers"):
        mech.activation_patching(model, clean, corrupted, site="heads", layers=[3])


@torch.no_grad()
@pytest.mark.parametrize("name", ["vit", "t2t"])
@pytest.mark.parametrize("max_batch", [256, 7])
def test_a_residual_patch_equals_a_hand_written_hook(name, max_batch):
    model, clean, corrupted = MAKERS[name](), images(2), images(2, seed=4)
    before = snapshot(model)
    result = mech.activation_patching(model, clean, corrupted, site="resid", max_batch=max_batch)
    resid = residual_by_trace(model, clean)
    blocks, t = len(model.blocks), resid[0].shape[1]
    assert result.patched.shape == (2, blocks + 1, t)
    idx, target = torch.arange(2), result.target
    for index in range(blocks + 1):
        for tok in range(t):
            def hook(_m, args, index=index, tok=tok):
                x = args[0].clone()
                x[:, tok] = resid[index][:, tok]
                return (x, *args[1:])
            module = model.blocks[index] if index < blocks else model.norm
            handle = module.register_forward_pre_hook(hook)
            try:
                m = model(corrupted)[idx, target]
            finally:
                handle.remove()
            torch.testing.assert_close(result.patched[:, index, tok], m, rtol=1e-5, atol=1e-5)
    # after the last block only the class token is read: patching it recovers everything, the rest nothing
    torch.testing.assert_close(result.recovered[:, -1, 0], torch.ones(2))
    torch.testing.assert_close(result.recovered[:, -1, 1:], torch.zeros(2, t - 1))
    # before block 0 the class token and its position are the same in both runs
    torch.testing.assert_close(result.recovered[:, 0, 0], torch.zeros(2))
    assert_untouched(model, before)


def made_linear(model: nn.Module) -> nn.Module:
    """The same model with every nonlinearity after block 0's input removed: norms and GELUs become identities
    and queries and keys zero (uniform attention), so the logits are affine in every activation."""
    with torch.no_grad():
        for block in model.blocks:
            block.norm1, block.norm2, block.mlp.act = nn.Identity(), nn.Identity(), nn.Identity()
            dim = block.attn.proj.in_features
            block.attn.qkv.weight[:2 * dim] = 0
            if block.attn.qkv.bias is not None:
                block.attn.qkv.bias[:2 * dim] = 0
        model.norm = nn.Identity()
    return model


@pytest.mark.parametrize("name", ["vit", "t2t"])
@pytest.mark.parametrize("site", mech.SITES)
def test_attribution_patching_is_exact_for_a_model_made_linear(name, site):
    model, clean, corrupted = made_linear(MAKERS[name]()), images(2), images(2, seed=3)
    before = snapshot(model)
    exact = mech.activation_patching(model, clean, corrupted, site=site)
    approx = mech.activation_patching(model, clean, corrupted, site=site, method="attribution")
    torch.testing.assert_close(approx.patched, exact.patched, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(approx.corrupted, exact.corrupted)
    assert (exact.patched - exact.corrupted[:, None, None]).abs().max() > 1e-2
    assert_untouched(model, before)


@pytest.mark.parametrize("site", mech.SITES)
def test_attribution_patching_is_only_an_approximation_of_the_real_model(site):
    model, clean, corrupted = small_vit(), images(2), images(2, seed=3)
    before = snapshot(model)
    exact = mech.activation_patching(model, clean, corrupted, site=site)
    approx = mech.activation_patching(model, clean, corrupted, site=site, method="attribution")
    a, b = exact.patched.flatten(), approx.patched.flatten()
    keep = ~torch.isnan(a)
    assert not torch.allclose(a[keep], b[keep], atol=1e-3)
    assert np.corrcoef(a[keep], b[keep])[0, 1] > 0  # related, not equal
    assert_untouched(model, before)


@torch.no_grad()
def test_models_stay_bit_identical_after_an_exception_and_other_threads_never_see_a_patch():
    model, clean, corrupted = small_t2t(), images(2), images(2, seed=9)
    before = snapshot(model)
    want = model(corrupted)
    source = mech.run_with_cache(model, clean)
    with pytest.raises(RuntimeError, match="inside"):
        with mech.patched(model, source, heads=[(0, 1)], resid=[(1, 3)]):
            raise RuntimeError("inside the with-block")
    assert_untouched(model, before)
    seen: list[Tensor] = []
    with mech.patched(model, source, resid=[(0, None)]):
        worker = threading.Thread(target=lambda: seen.append(model(corrupted)))
        worker.start()
        worker.join()
        inside = model(corrupted)
    assert torch.equal(seen[0], want)
    torch.testing.assert_close(inside, model(clean), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        with mech.patched(model, source, heads=[(0, 0)]):
            model(images(3))
    assert_untouched(model, before)


# --- corrupted inputs -----------------------------------------------------------------------------------

def test_blur_is_a_normalised_gaussian():
    x = images(2)
    assert torch.equal(mech.blurred(x, 0), x)
    const = torch.full((1, 3, 32, 32), 0.7)
    torch.testing.assert_close(mech.blurred(const, 3.0), const)
    sigma, r = 1.5, 5  # radius ceil(3 sigma)
    grid = torch.arange(-r, r + 1, dtype=torch.float64)
    kernel = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    interior = (x[:, :, 16 - r:16 + r + 1, 12 - r:12 + r + 1].double() * kernel).sum((-1, -2))
    torch.testing.assert_close(mech.blurred(x, sigma)[:, :, 16, 12].double(), interior, rtol=1e-5, atol=1e-6)
    assert mech.blurred(x, 2.0).std() < x.std()


def test_the_synthetic_twins_keep_everything_but_the_object():
    ds = LocalStructureDataset("test", size=12, img_size=64)
    for i in range(12):
        own = mech.render_variant("test", 0, i, 64, ds.label(i))
        assert np.array_equal(own, ds.array_chw(i)), "drawing its own class must reproduce the dataset's image"
        background = mech.render_variant("test", 0, i, 64, None)
        other = mech.render_variant("test", 0, i, 64, (ds.label(i) + 3) % 10)
        changed = (own != background).any(0)
        assert 0 < changed.mean() < 0.6, "only the object's pixels differ"
        assert (other != background).any(0).mean() > 0
        assert not np.array_equal(other, own)
        outside = ~changed & ~(other != background).any(0)
        assert outside.mean() > 0.3 and np.array_equal(own[:, outside], other[:, outside])


def test_synthetic_pairs_normalise_for_the_model():
    model = small_vit()
    model.default_cfg = {"img_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    ds = LocalStructureDataset("test", size=4, img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    for kind in mech.COUNTERFACTUALS:
        clean, corrupted, labels, other = mech.synthetic_pairs(model, 2, start=2, kind=kind)
        torch.testing.assert_close(clean, torch.stack([ds[2][0], ds[3][0]]))
        assert labels.tolist() == [2, 3] and corrupted.shape == clean.shape
        assert not torch.equal(corrupted, clean)
        if kind == "background":
            assert other.tolist() == [-1, -1]
            want = normalize(torch.from_numpy(mech.render_variant("test", 0, 3, 32, None)), (0.5,) * 3, (0.25,) * 3)
            torch.testing.assert_close(corrupted[1], want)
        elif kind == "other_class":
            assert other.tolist() == [3, 4]
        else:
            torch.testing.assert_close(corrupted, mech.blurred(clean, 8.0))
    with pytest.raises(ValueError, match="kind"):
        mech.synthetic_pairs(model, 1, kind="noise")


# --- where the decision lives ---------------------------------------------------------------------------

def test_tokens_for_share_and_spatial_spread_on_hand_built_maps():
    scores = torch.tensor([[5.0, -2.0, 3.0, 2.0], [0.0, -1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert mech.tokens_for_share(scores, 0.8).tolist() == [2, 0, 4]   # 5 + 3 = 8 of 10
    assert mech.tokens_for_share(scores, 0.5).tolist() == [1, 0, 2]
    spread = mech.spatial_spread(scores, (2, 2))
    assert torch.isnan(spread[1])
    assert spread[2].item() == pytest.approx(np.sqrt(0.5))           # every corner 0.707 cells from the centre
    single = torch.zeros(1, 9)
    single[0, 4] = 1.0
    assert mech.spatial_spread(single, (3, 3)).item() == 0.0


# --- attention sinks ------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("name", ["vit", "t2t", "t2t-transformer"])
def test_sinks_measure_norms_and_received_attention_as_defined(name):
    model, x = MAKERS[name](), images(2)
    before = snapshot(model)
    sinks = mech.attention_sinks(model, x, norm_factor=1.3, attention_factor=1.5)
    tr = t2t.trace(model, x)
    resid = residual_by_trace(model, x)
    b = sinks.blocks
    blocks, t = len(model.blocks), resid[0].shape[1]
    assert b.norms.shape == b.received.shape == b.high_norm.shape == (2, blocks, t)
    for layer in range(blocks):
        torch.testing.assert_close(b.norms[:, layer], resid[layer].norm(dim=-1), rtol=1e-5, atol=1e-5)
        attn = tr[f"blocks.{layer}.attn"]
        torch.testing.assert_close(b.received[:, layer], attn.sum(dim=(1, 2)) / (attn.shape[1] * t))
    torch.testing.assert_close(b.received.sum(-1), torch.ones(2, blocks))
    median = b.norms.median(dim=-1, keepdim=True).values
    assert torch.equal(b.high_norm, b.norms > 1.3 * median)
    assert torch.equal(b.sink, b.received > 1.5 / t)
    assert b.flagged.any() and not b.flagged.all()
    torch.testing.assert_close(sinks.final_norms, resid[-1].norm(dim=-1))
    torch.testing.assert_close(sinks.rollout, cls_rollout(tr.attentions()))
    if name.startswith("t2t"):
        assert set(sinks.t2t) == {"t2t.attn1", "t2t.attn2"}
        for stage, s in sinks.t2t.items():
            full = tr[f"{stage}_map"][:, 0]                                 # (B, N, N), formed here
            torch.testing.assert_close(s.received[:, 0], full.sum(1) / full.sum((1, 2))[:, None],
                                       rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(s.norms[:, 0], tr[stage].norm(dim=-1))
            assert s.grid == tr.grid(stage) and s.num_prefix_tokens == 0
    else:
        assert sinks.t2t == {}
    assert_untouched(model, before)


@torch.no_grad()
def test_a_planted_high_norm_token_is_flagged_and_removed_from_the_rollout():
    model, x = small_vit(), images(2)
    none = mech.attention_sinks(model, x, norm_factor=1e9, attention_factor=1e9)
    assert not none.blocks.flagged.any()
    torch.testing.assert_close(none.rollout_without_sinks, none.rollout)
    with torch.no_grad():
        model.pos_embed[0, 6] *= 0
        model.pos_embed[0, 6] += 40.0 * torch.randn(16, generator=torch.Generator().manual_seed(2))
    sinks = mech.attention_sinks(model, x, norm_factor=3.0, attention_factor=1e9)
    assert sinks.blocks.high_norm[:, 0, 6].all()
    assert sinks.blocks.high_norm[:, 0].sum().item() == 2, "only the planted token, in both images"
    # by hand: block 0's fused attention without column 6, then rollout.py's (A + I) / 2 and row product
    tr = t2t.trace(model, x)
    flagged = sinks.blocks.flagged.clone()
    flagged[..., 0] = False
    row = torch.zeros(2, 1, 17)
    row[:, 0, 0] = 1.0
    for layer in reversed(range(3)):
        a = tr[f"blocks.{layer}.attn"].mean(1).masked_fill(flagged[:, layer, None, :], 0.0)
        a = (a + torch.eye(17)) / 2
        row = row @ (a / a.sum(-1, keepdim=True))
    torch.testing.assert_close(sinks.rollout_without_sinks, row[:, 0, 1:])
    assert not torch.allclose(sinks.rollout_without_sinks, sinks.rollout)
