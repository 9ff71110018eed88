import pytest
import torch

from analysis.rollout import cls_rollout, discard_lowest, fuse_heads, grad_rollout, num_discarded, rollout


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
    assert num_discarded(11, ratio) == expected
    out = discard_lowest(attn, ratio)
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
    out = discard_lowest(attn, 0.34)  # floor(0.34 * 3) = 1 patch column dropped: the 0.2
    torch.testing.assert_close(out, torch.tensor([[[0.01, 0.5, 0.29, 0.0]]]))
    with pytest.raises(ValueError):
        discard_lowest(attn, 1.0)


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


@pytest.mark.parametrize("kwargs", [{}, {"head_fusion": "max", "discard_ratio": 0.5}, {"start_layer": 2}])
def test_class_row_equals_row_of_full_rollout(kwargs):
    torch.manual_seed(0)
    attns = [torch.randn(2, 3, 9, 9).softmax(-1) for _ in range(4)]
    torch.testing.assert_close(cls_rollout(attns, **kwargs), rollout(attns, **kwargs)[:, 0, 1:])
