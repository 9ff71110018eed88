import math

import pytest
import torch

from analysis.attention_stats import attention_entropy, attention_profile, mean_attention_distance, token_centres


def _with_cls(patch_attn: torch.Tensor, cls_weight: float = 0.0) -> torch.Tensor:
    """(N, N) patch attention -> (1, 1, 1+N, 1+N) with a class token taking `cls_weight` of every row."""
    n = patch_attn.shape[0]
    full = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    full[1:, 1:] = patch_attn * (1 - cls_weight)
    full[1:, 0] = cls_weight
    full[0] = 1 / (n + 1)
    return full[None, None]


def test_uniform_attention_on_a_line_has_closed_form_distance():
    # mean |i - j| over all pairs (i, j) of n points on a line = (n^2 - 1) / (3 n)
    n, stride = 7, 16.0
    attn = _with_cls(torch.full((n, n), 1 / n, dtype=torch.float64), cls_weight=0.3)
    got = mean_attention_distance(attn, (1, n), stride)
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(stride * (n * n - 1) / (3 * n))


def _shift_attention(grid, dy, dx, weight):
    """Each token puts `weight` on the token (dy, dx) away (reflected at the border), the rest on itself."""
    h, w = grid
    n = h * w
    a = torch.zeros(n, n, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            rr = r + dy if 0 <= r + dy < h else r - dy
            cc = c + dx if 0 <= c + dx < w else c - dx
            a[r * w + c, r * w + c] += 1 - weight
            a[r * w + c, rr * w + cc] += weight
    return a


@pytest.mark.parametrize(
    "dy,dx,weight,stride,expected",
    [
        (0, 1, 0.5, 16.0, 8.0),  # half the weight one token to the side: 0.5 * 16
        (1, 0, 1.0, (8.0, 16.0), 8.0),  # vertical neighbour, rows 8 px apart
        (1, 1, 1.0, 16.0, 16.0 * math.sqrt(2)),  # diagonal neighbour
        (0, 0, 1.0, 16.0, 0.0),  # attends only itself
    ],
)
def test_local_attention_distance(dy, dx, weight, stride, expected):
    attn = _with_cls(_shift_attention((4, 5), dy, dx, weight), cls_weight=0.2)
    got = mean_attention_distance(attn.expand(2, 3, -1, -1), (4, 5), stride)
    torch.testing.assert_close(got, torch.full((2, 3), expected, dtype=torch.float64))


def test_token_centres_are_row_major():
    c = token_centres((2, 3), 16)
    torch.testing.assert_close(c[4], torch.tensor([16.0, 16.0]))  # token 4 = row 1, col 1
    torch.testing.assert_close(c[2], torch.tensor([0.0, 32.0]))


def test_entropy_of_uniform_is_log_n_and_of_one_hot_is_zero():
    t = 10
    uniform = torch.full((2, 3, t, t), 1 / t)
    torch.testing.assert_close(attention_entropy(uniform), torch.full((2, 3), math.log(t)))
    torch.testing.assert_close(attention_entropy(uniform, patches_only=True), torch.full((2, 3), math.log(t - 1)))
    torch.testing.assert_close(attention_entropy(torch.eye(t).expand(1, 2, t, t)), torch.zeros(1, 2))
    # two equal weights per row -> log 2
    two = (torch.eye(t) + torch.eye(t).roll(1, dims=1)) / 2
    torch.testing.assert_close(attention_entropy(two[None, None]), torch.full((1, 1), math.log(2)))


def test_profile_stacks_blocks():
    torch.manual_seed(0)
    attns = [torch.rand(2, 3, 17, 17).softmax(-1) for _ in range(4)]
    prof = attention_profile(attns, (4, 4), 16.0)
    assert prof["distance"].shape == prof["entropy"].shape == (2, 4, 3)
    torch.testing.assert_close(prof["distance"][:, 2], mean_attention_distance(attns[2], (4, 4), 16.0))
    torch.testing.assert_close(prof["entropy"][:, 1], attention_entropy(attns[1]))


def test_distance_is_differentiable_after_a_call_under_inference_mode():
    """The distance matrix is cached: a first call under inference_mode must not poison it."""
    a = torch.rand(1, 2, 10, 10).softmax(-1)
    with torch.inference_mode():
        first = mean_attention_distance(a, (3, 3), 7.5)
    b = a.clone().requires_grad_(True)
    d = mean_attention_distance(b, (3, 3), 7.5)
    d.sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    torch.testing.assert_close(d.detach(), first)


def test_mean_token_distance_is_a_uniform_heads_distance_and_has_a_closed_form_on_a_line():
    from analysis.attention_stats import mean_token_distance

    n = 7  # on a 1 x n line with stride 16: 16 (n^2 - 1) / (3 n), self-pairs included
    assert mean_token_distance((1, n), 16) == pytest.approx(16 * (n * n - 1) / (3 * n))
    grid = (3, 4)
    uniform = torch.full((grid[0] * grid[1],) * 2, 1 / (grid[0] * grid[1]), dtype=torch.float64)
    expected = mean_attention_distance(_with_cls(uniform), grid, (8.0, 5.0)).item()
    assert mean_token_distance(grid, (8.0, 5.0)) == pytest.approx(expected)
