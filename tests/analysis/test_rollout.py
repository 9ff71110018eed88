import pytest
import torch

from analysis.rollout import (
    DEFAULT_DISCARD,
    DISCARD_RULES,
    cls_rollout,
    discard_lowest,
    fuse_heads,
    grad_rollout,
    grad_rollout_map,
    num_discarded,
    rollout,
    rollout_map,
)


def _stack(*heads):
    """Heads given as lists of rows -> (1, H, T, T)."""
    return torch.tensor(heads, dtype=torch.float64)[None]


# Two 3-token blocks; block 1 has two heads whose mean is [[.5, .5, 0], [0, 1, 0], [0, 0, 1]].
A1 = _stack([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 1, 0], [0, 1, 0], [0, 0, 1]])
A2 = _stack([[0, 0.5, 0.5], [0, 1, 0], [1, 0, 0]], [[0, 0.5, 0.5], [0, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_of_identity_attention_is_identity(fusion):
    eye = torch.eye(7).expand(2, 4, 7, 7)
    out = rollout([eye] * 5, head_fusion=fusion, discard_ratio=0.5)
    torch.testing.assert_close(out, torch.eye(7).expand(2, 7, 7))


def test_two_layer_rollout_by_hand():
    # (A1 + I)/2 = [[.75, .25, 0], [0, 1, 0], [0, 0, 1]];  (A2 + I)/2 = [[.5, .25, .25], [0, 1, 0], [.5, 0, .5]]
    # joint = M2 @ M1:
    #   row 0 = .5 [.75, .25, 0] + .25 [0, 1, 0] + .25 [0, 0, 1] = [.375, .375, .25]
    #   row 2 = .5 [.75, .25, 0] + .5 [0, 0, 1]                   = [.375, .125, .5]
    expected = torch.tensor([[0.375, 0.375, 0.25], [0, 1, 0], [0.375, 0.125, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(rollout([A1, A2])[0], expected)
    torch.testing.assert_close(cls_rollout([A1, A2])[0], torch.tensor([0.375, 0.25], dtype=torch.float64))
    # start_layer=1 leaves only M2
    torch.testing.assert_close(rollout([A1, A2], start_layer=1)[0, 0], torch.tensor([0.5, 0.25, 0.25]).double())


def test_rollout_without_identity_is_plain_product():
    # A2 @ mean(A1): row 0 = .5 [0, 1, 0] + .5 [0, 0, 1]
    out = rollout([A1, A2], add_identity=False)[0, 0]
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))


def test_head_fusions_by_hand():
    torch.testing.assert_close(fuse_heads(A1, "max")[0, 0], torch.tensor([1.0, 1, 0]).double())
    torch.testing.assert_close(fuse_heads(A1, "min")[0, 0], torch.tensor([0.0, 0, 0]).double())
    # max fusion, then identity, then rows renormalised: row 0 = [1+1, 1, 0] / 2 -> / 1.5
    out = rollout([A1], head_fusion="max")[0, 0]
    torch.testing.assert_close(out, torch.tensor([2 / 3, 1 / 3, 0]).double())
    with pytest.raises(ValueError):
        fuse_heads(A1, "median")


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (0.3, 3), (0.5, 5), (0.9, 9), (0.99, 9)])
def test_discard_drops_the_stated_fraction_of_each_row(ratio, expected):
    torch.manual_seed(0)
    attn = torch.randn(2, 11, 11).softmax(-1)  # T = 11: 10 patch columns per row
    assert num_discarded(11, ratio, "row") == expected
    out = discard_lowest(attn, ratio, "row")
    patches, kept = attn[..., 1:], out[..., 1:]
    # exactly `expected` zeros per row, and they are the smallest patch weights
    assert ((kept == 0).sum(-1) == expected).all()
    threshold = patches.sort(dim=-1).values[..., expected - 1 : expected] if expected else None
    if expected:
        assert (patches[kept == 0].view(2, 11, expected) <= threshold).all()
    torch.testing.assert_close(kept[kept != 0], patches[kept != 0])
    # the class-token column is never dropped
    torch.testing.assert_close(out[..., 0], attn[..., 0])


def test_discard_keeps_class_column_even_when_it_is_smallest():
    attn = torch.tensor([[[0.01, 0.5, 0.29, 0.2]]])  # (B=1, one row, T=4)
    out = discard_lowest(attn, 0.34, "row")  # floor(0.34 * 3) = 1 patch column dropped: the 0.2
    torch.testing.assert_close(out, torch.tensor([[[0.01, 0.5, 0.29, 0.0]]]))
    with pytest.raises(ValueError):
        discard_lowest(attn, 1.0, "row")


def test_grad_rollout_pairs_each_block_with_its_own_gradient():
    uniform = torch.full((1, 1, 3, 3), 1 / 3, dtype=torch.float64)
    g1 = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    g1[..., 1] = 3.0  # block 1: every row's weight goes to token 1 -> fused rows [0, 1, 0]
    g2 = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    g2[..., 2] = 3.0  # block 2: rows [0, 0, 1]
    # M1 = [[.5, .5, 0], [0, 1, 0], [0, .5, .5]], M2 = [[.5, 0, .5], [0, .5, .5], [0, 0, 1]]
    # M2 @ M1 row 0 = .5 [.5, .5, 0] + .5 [0, .5, .5] = [.25, .5, .25]
    right = grad_rollout([uniform, uniform], [g1, g2], discard_ratio=0.0)
    torch.testing.assert_close(right[0], torch.tensor([0.5, 0.25], dtype=torch.float64))
    # the vit-explain bug (block l with gradient of block L-1-l) gives M1 @ M2 row 0 = [.25, .25, .5]
    swapped = grad_rollout([uniform, uniform], [g2, g1], discard_ratio=0.0)
    torch.testing.assert_close(swapped[0], torch.tensor([0.25, 0.5], dtype=torch.float64))


def test_grad_rollout_clamps_negative_evidence_after_head_mean():
    a = torch.full((1, 2, 3, 3), 1 / 3)
    g = torch.stack([torch.full((3, 3), 1.0), torch.full((3, 3), -3.0)])[None]  # head mean < 0
    torch.testing.assert_close(grad_rollout([a], [g], discard_ratio=0.0)[0], torch.zeros(2))
    with pytest.raises(ValueError):
        grad_rollout([a, a], [g], discard_ratio=0.0)


@pytest.mark.parametrize("kwargs", [{}, {"head_fusion": "max", "discard_ratio": 0.5}, {"start_layer": 2},
                                    {"discard": "row", "discard_ratio": 0.7}])
def test_class_row_equals_row_of_full_rollout(kwargs):
    torch.manual_seed(0)
    attns = [torch.randn(2, 3, 9, 9).softmax(-1) for _ in range(4)]
    torch.testing.assert_close(cls_rollout(attns, **kwargs), rollout(attns, **kwargs)[:, 0, 1:])


# --- vit-explain's discard rule, against an implementation written from its code --------------


def vit_explain_rollout(attentions, discard_ratio, head_fusion):
    """jacobgil/vit-explain vit_rollout.py `rollout` for one image, (1, H, T, T) maps -> (N,) max-normalised.

    Its method as written, with its one bug fixed: `a / a.sum(dim=-1)` (which divides columns by
    row sums through broadcasting) becomes a row normalisation with keepdim=True.
    """
    result = torch.eye(attentions[0].size(-1), dtype=attentions[0].dtype)
    with torch.no_grad():
        for attention in attentions:
            if head_fusion == "mean":
                fused = attention.mean(axis=1)
            elif head_fusion == "max":
                fused = attention.max(axis=1)[0]
            else:
                fused = attention.min(axis=1)[0]
            flat = fused.view(fused.size(0), -1)
            _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
            indices = indices[indices != 0]
            flat[0, indices] = 0
            eye = torch.eye(fused.size(-1), dtype=fused.dtype)
            a = (fused + 1.0 * eye) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = torch.matmul(a, result)
    mask = result[0, 0, 1:]
    return mask / mask.max()


def vit_explain_grad_rollout(attentions, gradients, discard_ratio):
    """vit-explain vit_grad_rollout.py `grad_rollout` for one image, with each block's own gradient
    (its hooks pair them reversed) and rows normalised with keepdim=True (its broadcast bug fixed).
    Its `indices = indices[indices != 0]` is commented out there: nothing is protected."""
    result = torch.eye(attentions[0].size(-1), dtype=attentions[0].dtype)
    with torch.no_grad():
        for attention, grad in zip(attentions, gradients):
            fused = (attention * grad).mean(axis=1)
            fused[fused < 0] = 0
            flat = fused.view(fused.size(0), -1)
            _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
            flat[0, indices] = 0
            eye = torch.eye(fused.size(-1), dtype=fused.dtype)
            a = (fused + 1.0 * eye) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = torch.matmul(a, result)
    mask = result[0, 0, 1:]
    return mask / mask.max()


def _maxnorm(x):
    return x / x.amax(dim=-1, keepdim=True)


def _peaked_attentions(blocks=4, batch=3, heads=3, tokens=17, seed=0):
    """Softmax maps whose rows differ in sharpness (so the two rules rank differently), float64.

    Heads share most of their logits, as a model's heads share structure, so that min fusion
    at ratio 0.9 still leaves the class row something to roll out (else both maps are 0 / 0).
    """
    g = torch.Generator().manual_seed(seed)
    shape = (blocks, batch, 1, tokens, tokens)
    shared = torch.randn(shape, generator=g, dtype=torch.float64)
    own = torch.randn((blocks, batch, heads, tokens, tokens), generator=g, dtype=torch.float64)
    sharpness = torch.linspace(3, 0.5, tokens, dtype=torch.float64)[:, None]  # class row sharpest
    return list(((shared + 0.3 * own) * sharpness).softmax(-1))


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 0.9, 0.95])
@pytest.mark.parametrize("rule", ["vit-explain", "row"])
def test_discard_drops_the_entries_a_sorted_topk_drops_even_among_ties(rule, ratio):
    """discard_lowest selects with an unsorted topk: the same entries as the sorted topk vit-explain
    calls, also when many weights are equal (ties at the cut)."""
    g = torch.Generator().manual_seed(0)
    fused = torch.randint(0, 4, (2, 197, 197), generator=g).double() / 4  # four values: ties everywhere
    ours = discard_lowest(fused, ratio, rule)
    k = num_discarded(197, ratio, rule)
    if rule == "vit-explain":
        flat = fused.flatten(-2).clone()
        for i in range(len(flat)):
            indices = flat[i].topk(k, -1, False).indices
            flat[i, indices[indices != 0]] = 0
        want = flat.view_as(fused)
    else:
        patches = fused[..., 1:].scatter(-1, fused[..., 1:].topk(k, dim=-1, largest=False).indices, 0.0)
        want = torch.cat([fused[..., :1], patches], dim=-1)
    assert torch.equal(ours, want)


def test_the_default_rule_is_vit_explains():
    assert DEFAULT_DISCARD == "vit-explain" and DISCARD_RULES == ("row", "vit-explain")


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_vit_explain_rule_equals_vit_rollout_py(fusion, ratio):
    attns = _peaked_attentions()
    ours = _maxnorm(cls_rollout(attns, head_fusion=fusion, discard_ratio=ratio, discard="vit-explain"))
    for i in range(attns[0].shape[0]):  # vit-explain handles one image at a time
        want = vit_explain_rollout([a[i : i + 1].clone() for a in attns], ratio, fusion)
        torch.testing.assert_close(ours[i], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(_maxnorm(rollout(attns, fusion, ratio, discard="vit-explain")[:, 0, 1:]), ours)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_vit_explain_rule_equals_vit_grad_rollout_py(ratio):
    attns = _peaked_attentions(seed=1)
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(a.shape, generator=g) for a in attns]
    ours = _maxnorm(grad_rollout(attns, grads, ratio, discard="vit-explain"))
    for i in range(attns[0].shape[0]):
        want = vit_explain_grad_rollout([a[i : i + 1].clone() for a in attns], [g[i : i + 1] for g in grads], ratio)
        torch.testing.assert_close(ours[i], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_the_two_rules_differ_and_row_is_not_vit_explain(ratio):
    attns = _peaked_attentions()
    row = _maxnorm(cls_rollout(attns, discard_ratio=ratio, discard="row"))
    flat = _maxnorm(cls_rollout(attns, discard_ratio=ratio, discard="vit-explain"))
    assert (row - flat).abs().max() > 1e-2
    want = vit_explain_rollout([a[:1].clone() for a in attns], ratio, "mean")
    assert (row[0] - want).abs().max() > 1e-2


def test_vit_explain_rule_by_hand():
    # T = 3, 9 entries; ratio 0.5 -> int(4.5) = 4 lowest of the whole map, wherever they are
    a = torch.tensor([[[0.2, 0.5, 0.3], [0.05, 0.9, 0.06], [0.1, 0.15, 0.75]]])
    want = torch.tensor([[[0.2, 0.5, 0.3], [0.0, 0.9, 0.0], [0.0, 0.0, 0.75]]])
    torch.testing.assert_close(discard_lowest(a, 0.5, "vit-explain"), want)
    assert num_discarded(3, 0.5, "vit-explain") == 4 and num_discarded(3, 0.5, "row") == 1
    # the row rule: one patch column per row, the class column kept
    torch.testing.assert_close(discard_lowest(a, 0.5, "row"), torch.tensor([[[0.2, 0.5, 0.0], [0.05, 0.9, 0.0],
                                                                             [0.1, 0.0, 0.75]]]))
    # (0, 0) among the 4 lowest: vit_rollout.py spares it and zeroes only the other 3 (0.15 survives);
    # vit_grad_rollout.py (keep_first=False) zeroes it too
    a[0, 0, 0] = 0.01
    kept = torch.tensor([[[0.01, 0.5, 0.3], [0.0, 0.9, 0.0], [0.0, 0.15, 0.75]]])
    torch.testing.assert_close(discard_lowest(a, 0.5, "vit-explain"), kept)
    kept[0, 0, 0] = 0.0
    torch.testing.assert_close(discard_lowest(a, 0.5, "vit-explain", keep_first=False), kept)


def test_bad_discard_options_are_refused_before_any_work():
    attns = _peaked_attentions(blocks=1, batch=1)
    with pytest.raises(ValueError, match="discard must be one of"):
        cls_rollout(attns, discard_ratio=0.5, discard="flat")
    with pytest.raises(ValueError, match="discard_ratio must be in"):
        grad_rollout(attns, attns, discard_ratio=1.0)

    class NoModel(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the model must not run for a bad option")

    with pytest.raises(ValueError, match="discard must be one of"):
        rollout_map(NoModel(), torch.zeros(1, 3, 8, 8), discard="rows")
    with pytest.raises(ValueError, match="discard_ratio"):
        grad_rollout_map(NoModel(), torch.zeros(1, 3, 8, 8), discard_ratio=-0.1)


def test_rollout_map_of_the_embedded_model_equals_vit_rollout_py():
    t2t = pytest.importorskip("t2t")
    from t2t.data import LocalStructureDataset

    model = t2t.create_model("t2t_vit_7", pretrained="embedded")
    ds = LocalStructureDataset("test", size=2)
    images = torch.stack([ds[i][0] for i in range(2)])
    with torch.no_grad():
        attns = t2t.trace(model, images).attentions()
    ours = rollout_map(model, images, head_fusion="max", discard_ratio=0.9).flatten(1)  # default rule
    for i in range(2):
        want = vit_explain_rollout([a[i : i + 1].double() for a in attns], 0.9, "max")
        torch.testing.assert_close(_maxnorm(ours[i : i + 1].double())[0], want, atol=1e-5, rtol=0)
