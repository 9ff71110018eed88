"""Knock-outs against hand-written forwards of small T2T-ViT and ViT configurations."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from analysis.knockout import (
    all_heads,
    head_importance,
    head_importance_scores,
    knocked_out,
    mean_head_outputs,
    pruning_curve,
    removable_heads,
)
from t2t.layers import TokenPerformer
from t2t.t2t_vit import T2TViT
from t2t.vit import VisionTransformer


def scaled(model: nn.Module) -> nn.Module:
    """Weights of unit gain (the init's std 0.02 makes every change too small to see), random biases and norms."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features**-0.5)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=0.1)
            elif isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, mean=1.0, std=0.1)
                nn.init.normal_(m.bias, std=0.1)
    return model.eval()


def small_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return scaled(VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=3, num_heads=4,
                                    mlp_ratio=2.0))


def small_t2t(tokens_type: str = "performer", seed: int = 0) -> T2TViT:
    torch.manual_seed(seed)
    return scaled(T2TViT(img_size=32, tokens_type=tokens_type, num_classes=5, embed_dim=16, depth=2, num_heads=2,
                         mlp_ratio=2.0, token_dim=8))


def images(n: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def snapshot(model) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype for k in before)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules()), "a hook was left behind"


# --- hand-written forwards ----------------------------------------------------------------------------

def heads_by_hand(attn, x: Tensor) -> Tensor:
    """softmax(q k^T * scale) v of every head, concatenated: (B, T, D), the input of attn.proj."""
    b, t, dim = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x).view(b, t, 3, h, dim // h)
    q, k, v = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
    a = (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)
    return (a @ v).transpose(1, 2).reshape(b, t, dim)


def block_by_hand(block, x: Tensor, edit=None) -> Tensor:
    z = heads_by_hand(block.attn, block.norm1(x))
    if edit is not None:
        z = edit(z)
    x = x + block.attn.proj(z)
    return x + block.mlp(block.norm2(x))


def forward_by_hand(model, x: Tensor, edits: dict[int, object] | None = None, stem=None) -> Tensor:
    edits = edits or {}
    tokens = stem(x) if stem is not None else model.stem(x)
    t = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1) + model.pos_embed
    for i, block in enumerate(model.blocks):
        t = block_by_hand(block, t, edits.get(i))
    return model.head(model.norm(t)[:, 0])


# --- knocked_out ----------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("make", [small_vit, small_t2t], ids=["vit", "t2t"])
def test_every_head_of_a_block_equals_the_block_with_its_attention_output_zeroed(make):
    model, x = make(), images()
    block = 1
    with knocked_out(model, [(block, h) for h in range(model.blocks[block].attn.num_heads)]):
        got = model(x)
    # by hand: block 1 adds only the output projection's bias (which belongs to no head), then its MLP
    tokens = model.stem(x)
    t = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1) + model.pos_embed
    for i, blk in enumerate(model.blocks):
        if i == block:
            t = t + blk.attn.proj.bias
            t = t + blk.mlp(blk.norm2(t))
        else:
            t = block_by_hand(blk, t)
    expected = model.head(model.norm(t)[:, 0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, model(x), atol=1e-4), "the knock-out changed nothing: the check would be empty"


@torch.no_grad()
def test_the_hand_forward_is_the_model():
    model, x = small_vit(), images()
    torch.testing.assert_close(forward_by_hand(model, x), model(x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("make", [small_vit, small_t2t], ids=["vit", "t2t"])
def test_knocking_out_nothing_changes_nothing(make):
    model, x = make(), images()
    clean = model(x)
    with knocked_out(model, [], mode="zero"):
        assert torch.equal(model(x), clean)
    with knocked_out(model):
        assert torch.equal(model(x), clean)


@torch.no_grad()
@pytest.mark.parametrize("tokens_type", ["performer", "transformer"])
def test_model_is_bit_identical_after_knock_outs_and_after_an_exception(tokens_type):
    model, x = small_t2t(tokens_type), images()
    before = snapshot(model)
    clean = model(x)
    with knocked_out(model, [(0, 1), (1, 0)], t2t=(1, 2)):
        assert not torch.equal(model(x), clean)
    assert_untouched(model, before)
    with knocked_out(model, [(1, 1)], mode="mean", reference=images(4, seed=7)):
        model(x)
    assert_untouched(model, before)
    with pytest.raises(RuntimeError, match="inside"):
        with knocked_out(model, [(0, 0)], t2t=(1,)):
            model(x)
            raise RuntimeError("inside the with-block")
    assert_untouched(model, before)
    assert torch.equal(model(x), clean)


@torch.no_grad()
def test_bad_requests_fail_before_any_hook():
    model = small_vit()
    before = snapshot(model)
    for kwargs, message in [({"heads": [(3, 0)]}, "does not exist"), ({"heads": [(0, 4)]}, "does not exist"),
                            ({"heads": [(0,)]}, "pairs"), ({"heads": [(0, 0)], "mode": "median"}, "mode"),
                            ({"heads": [(0, 0)], "mode": "mean"}, "reference"),
                            ({"t2t": (1,)}, "patch embedding")]:
        with pytest.raises(ValueError, match=message):
            with knocked_out(model, **kwargs):
                pass
        assert_untouched(model, before)
    with pytest.raises(ValueError, match="attention layers 1 and 2"):
        with knocked_out(small_t2t(), t2t=(3,)):
            pass


@torch.no_grad()
def test_mean_ablation_equals_a_hand_computation():
    model, x, ref = small_vit(), images(2), images(5, seed=3)
    # per-token mean over the reference batch of block 2's attn @ v, by hand
    t = torch.cat([model.cls_token.expand(len(ref), -1, -1), model.stem(ref)], dim=1) + model.pos_embed
    for blk in model.blocks[:2]:
        t = block_by_hand(blk, t)
    mean = heads_by_hand(model.blocks[2].attn, model.blocks[2].norm1(t)).mean(dim=0)  # (T, D)
    d = 16 // 4

    def edit(z):
        z = z.clone()
        z[..., 1 * d:2 * d] = mean[:, 1 * d:2 * d]
        z[..., 3 * d:4 * d] = mean[:, 3 * d:4 * d]
        return z

    expected = forward_by_hand(model, x, {2: edit})
    with knocked_out(model, [(2, 1), (2, 3)], mode="mean", reference=ref):
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean_head_outputs(model, ref, batch_size=2)[2], mean, rtol=1e-5, atol=1e-6)
    with knocked_out(model, [(2, 1), (2, 3)], mode="mean", reference=mean_head_outputs(model, ref)):
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same size"):
        with knocked_out(model, [(2, 1)], mode="mean", reference=torch.randn(3, 10, 16)):  # 10 tokens, not 17
            model(x)


def value_path_by_hand(layer, x: Tensor) -> Tensor:
    """A T2T token layer with its attention reduced to v: v, then v + MLP(norm2(v))."""
    if isinstance(layer, TokenPerformer):
        _, _, v = layer.kqv(layer.norm1(x)).split(layer.emb, dim=-1)  # official order k, q, v
    else:
        _, _, v = layer.attn.qkv(layer.norm1(x)).chunk(3, dim=-1)
    return v + layer.mlp(layer.norm2(v))


def t2t_stem_by_hand(model, x: Tensor, knocked: tuple[int, ...]) -> Tensor:
    m = model.tokens_to_token
    grid = m.soft_split0.grid(*x.shape[-2:])
    t = m.soft_split0(x)
    t = value_path_by_hand(m.attention1, t) if 1 in knocked else m.attention1(t)
    t = t.transpose(1, 2).reshape(len(x), -1, *grid)
    grid = m.soft_split1.grid(*grid)
    t = m.soft_split1(t)
    t = value_path_by_hand(m.attention2, t) if 2 in knocked else m.attention2(t)
    t = t.transpose(1, 2).reshape(len(x), -1, *grid)
    return m.project(m.soft_split2(t))


@torch.no_grad()
@pytest.mark.parametrize("tokens_type", ["performer", "transformer"])
@pytest.mark.parametrize("knocked", [(1,), (2,), (1, 2)])
def test_t2t_value_path_equals_a_hand_computation(tokens_type, knocked):
    model, x = small_t2t(tokens_type), images()
    torch.testing.assert_close(t2t_stem_by_hand(model, x, ()), model.stem(x), rtol=1e-5, atol=1e-5)
    expected = forward_by_hand(model, x, stem=lambda im: t2t_stem_by_hand(model, im, knocked))
    with knocked_out(model, t2t=knocked):
        got = model(x)
        stem = model.stem(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stem, t2t_stem_by_hand(model, x, knocked), rtol=1e-5, atol=1e-5)
    assert (stem - model.stem(x)).abs().max() > 1e-3, "the knock-out changed nothing: the check would be empty"


@torch.no_grad()
def test_another_thread_never_sees_the_knock_out():
    model, x = small_vit(), images()
    clean = model(x)
    seen: list[Tensor] = []
    with knocked_out(model, [(0, 0), (1, 2), (2, 3)]):
        worker = threading.Thread(target=lambda: seen.append(model(x)))
        worker.start()
        worker.join()
        inside = model(x)
    assert torch.equal(seen[0], clean)
    assert not torch.allclose(inside, clean, atol=1e-4)


# --- head_importance ------------------------------------------------------------------------------------

def importance_by_loops(model, x: Tensor, target: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
    given = kwargs.pop("given", [])
    with knocked_out(model, given, **kwargs):
        base = model(x)
    logit = torch.zeros(len(x), len(model.blocks), model.blocks[0].attn.num_heads)
    prob = torch.zeros_like(logit)
    for b, h in all_heads(model):
        if (b, h) in given:
            continue
        with knocked_out(model, [*given, (b, h)], **kwargs):
            out = model(x)
        idx = torch.arange(len(x))
        logit[:, b, h] = base[idx, target] - out[idx, target]
        prob[:, b, h] = base.softmax(-1)[idx, target] - out.softmax(-1)[idx, target]
    return logit, prob


@torch.no_grad()
@pytest.mark.parametrize("make", [small_vit, small_t2t], ids=["vit", "t2t"])
@pytest.mark.parametrize("max_batch", [256, 5])
def test_head_importance_equals_per_head_loops(make, max_batch):
    model, x = make(), images(3)
    before = snapshot(model)
    scores = head_importance_scores(model, x, max_batch=max_batch)
    assert torch.equal(scores.target, model(x).argmax(-1))
    logit, prob = importance_by_loops(model, x, scores.target)
    torch.testing.assert_close(scores.logit_drop, logit, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores.prob_drop, prob, rtol=1e-4, atol=1e-6)
    assert logit.abs().max() > 1e-4
    torch.testing.assert_close(head_importance(model, x, 2), importance_by_loops(model, x, torch.full((3,), 2))[0],
                               rtol=1e-4, atol=1e-5)
    assert_untouched(model, before)


@torch.no_grad()
def test_head_importance_given_heads_mean_mode_and_t2t():
    model, x, ref = small_t2t("transformer"), images(2), images(4, seed=5)
    target = torch.tensor([1, 3])
    kwargs = {"given": [(0, 1)], "t2t": (2,), "mode": "mean", "reference": ref}
    scores = head_importance_scores(model, x, target, **kwargs)
    logit, prob = importance_by_loops(model, x, target, **kwargs)
    torch.testing.assert_close(scores.logit_drop, logit, rtol=1e-4, atol=1e-5)
    assert torch.all(scores.logit_drop[:, 0, 1] == 0)


# --- pruning_curve --------------------------------------------------------------------------------------

def test_removable_heads_stops_at_the_first_drop_beyond_the_tolerance():
    removed = np.arange(6)
    acc = np.array([[0.90, 0.90, 0.895, 0.87, 0.90, 0.5], [0.9, 0.9, 0.9, 0.9, 0.9, 0.9]])
    assert removable_heads(acc, removed, 0.01).tolist() == [2, 5]
    assert removable_heads(acc[0], removed, 0.05).tolist() == 4


@torch.no_grad()
def test_pruning_curve_equals_knocking_out_the_ranked_heads():
    model, x, rank_x = small_vit(), images(6, seed=2), images(4, seed=9)
    labels = model(x).argmax(-1)
    labels[:2] = (labels[:2] + 1) % 5  # two wrong labels: intact accuracy 4 / 6
    before = snapshot(model)
    curve = pruning_curve(model, x, labels, rank_x, n_boot=200, batch_size=4)
    assert_untouched(model, before)
    importance = head_importance(model, rank_x).mean(dim=0)
    torch.testing.assert_close(curve.importance, importance, rtol=1e-4, atol=1e-6)
    ranked = [importance[b, h].item() for b, h in curve.order]
    assert ranked == sorted(ranked) and sorted(curve.order) == all_heads(model)
    for k in (0, 1, 5, 12):
        with knocked_out(model, curve.order[:k]):
            acc = (model(x).argmax(-1) == labels).float().mean().item()
        assert curve.accuracy[k].item() == pytest.approx(acc)
    assert curve.accuracy[0].item() == pytest.approx(4 / 6)
    assert len(curve.accuracy) == 13 and curve.removed.tolist() == list(range(13))
    assert torch.all(curve.ci_low <= curve.accuracy + 1e-12) and torch.all(curve.accuracy <= curve.ci_high + 1e-12)
    assert curve.removable == int(removable_heads(curve.accuracy.numpy(), curve.removed.numpy(), 0.01))
    assert curve.fraction_removable == curve.removable / 12
    assert curve.removable_ci[0] <= curve.removable_ci[1]
    some = pruning_curve(model, x, labels, rank_x, n_boot=50, counts=[12, 5, 1])
    assert some.removed.tolist() == [0, 1, 5, 12]
    torch.testing.assert_close(some.accuracy, curve.accuracy[[0, 1, 5, 12]])
    with pytest.raises(ValueError, match="counts"):
        pruning_curve(model, x, labels, rank_x, counts=[13])
