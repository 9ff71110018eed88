import torch

from analysis.relevance import cls_relevance, relevance


def test_chefer_rule_by_hand():
    # block 1, two heads; gradients 2 on head a and -1 on head b
    a1 = torch.tensor([[[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [0.0, 1.0]]])[None]
    g1 = torch.stack([torch.full((2, 2), 2.0), torch.full((2, 2), -1.0)])[None]
    # (g * A).clamp(0): head a [[1, 1], [1, 1]], head b 0 -> A_bar = [[.5, .5], [.5, .5]]
    # (clamping after the head mean would give [[0, .5], [.5, 0]])
    # R1 = I + A_bar = [[1.5, .5], [.5, 1.5]]
    a2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])[None]
    g2 = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])[None]
    # A_bar2 = [[0, .5], [0, .5]];  A_bar2 @ R1 = [[.25, .75], [.25, .75]]
    expected = torch.tensor([[1.75, 1.25], [0.75, 2.25]])
    torch.testing.assert_close(relevance([a1, a2], [g1, g2])[0], expected)
    torch.testing.assert_close(cls_relevance([a1, a2], [g1, g2])[0], torch.tensor([1.25]))
    # start_layer=1: R = I + A_bar2
    torch.testing.assert_close(relevance([a1, a2], [g1, g2], start_layer=1)[0], torch.tensor([[1.0, 0.5], [0, 1.5]]))


def test_relevance_is_per_image_and_layer_order_matters():
    torch.manual_seed(0)
    a = [torch.rand(3, 2, 4, 4).softmax(-1) for _ in range(3)]
    g = [torch.randn(3, 2, 4, 4) for _ in range(3)]
    batched = relevance(a, g)
    single = relevance([x[1:2] for x in a], [x[1:2] for x in g])
    torch.testing.assert_close(batched[1:2], single)
    # zero gradients: nothing is mixed in, R stays the identity
    torch.testing.assert_close(relevance(a, [torch.zeros_like(x) for x in g]), torch.eye(4).expand(3, 4, 4))
    assert not torch.allclose(relevance(a, g), relevance(a[::-1], g[::-1]))
