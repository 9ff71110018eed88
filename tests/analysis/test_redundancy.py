import math

import pytest
import torch

from analysis.redundancy import (
    block_metrics,
    effective_rank,
    feature_maps,
    high_frequency_fraction,
    invalid_channels,
    invalid_fraction,
    mean_abs_correlation,
    stacked_block_metrics,
)


def test_feature_maps_layout_and_class_token_dropped():
    b, h, w, d = 2, 3, 4, 5
    r, c, ch = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(d), indexing="ij")
    patches = (100 * ch + 10 * r + c).float().reshape(1, h * w, d).expand(b, -1, -1)
    tokens = torch.cat([torch.full((b, 1, d), -1.0), patches], dim=1)
    maps = feature_maps(tokens, (h, w))
    assert maps.shape == (b, d, h, w)
    assert maps[1, 3, 2, 1].item() == 321.0
    assert (maps >= 0).all()


def test_effective_rank_of_rank_k_with_equal_singular_values_is_k():
    g = torch.Generator().manual_seed(0)
    for k in (1, 3, 10):
        u, _ = torch.linalg.qr(torch.randn(40, k, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(60, k, generator=g, dtype=torch.float64))
        x = 7.0 * u @ v.T
        assert effective_rank(x[None]).item() == pytest.approx(k, abs=1e-6)
    # random rank-k matrix: at most k, and not far below
    x = torch.randn(50, 5, generator=g) @ torch.randn(5, 80, generator=g)
    assert 3.5 < effective_rank(x[None]).item() <= 5 + 1e-4


def test_effective_rank_closed_form_for_unequal_singular_values():
    x = torch.diag(torch.tensor([3.0, 1.0, 0.0]))[None]
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(x).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)


def test_effective_rank_center_removes_shared_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g) @ torch.randn(2, 20, generator=g) + 50.0  # rank 2 + offset
    assert effective_rank(x[None]).item() < 1.5  # the offset dominates
    assert 1.5 < effective_rank(x[None], center=True).item() <= 2 + 1e-4


def test_constant_and_zero_channels_are_invalid_relative_to_layer_scale():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 8, 4, 4, generator=g)
    maps[:, 3] = 5.0  # large but constant
    maps[:, 7] = 0.0  # dead
    maps[:, 5] *= 0.02  # varies, but 2 % of the others: near-constant
    maps[:, 6] *= 0.5  # weaker but informative
    invalid = invalid_channels(maps)
    expected = torch.zeros(2, 8, dtype=torch.bool)
    expected[:, [3, 5, 7]] = True
    torch.testing.assert_close(invalid, expected)
    torch.testing.assert_close(invalid_channels(1000 * maps), expected)  # scale-free
    torch.testing.assert_close(invalid_fraction(maps), torch.full((2,), 3 / 8))


def test_mean_abs_correlation_by_hand():
    a = torch.tensor([[1.0, -1.0], [1.0, -1.0]])  # columns
    b = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # rows: uncorrelated with a
    maps = torch.stack([a, b, -3 * a, torch.full((2, 2), 4.0)])[None]  # last one is flat
    # valid pairs (a, b) 0, (a, -3a) 1, (b, -3a) 0 -> 1/3; the flat channel is excluded
    assert mean_abs_correlation(maps).item() == pytest.approx(1 / 3)
    copies = torch.randn(1, 1, 5, 5) * torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    assert mean_abs_correlation(copies).item() == pytest.approx(1.0, abs=1e-5)


def test_high_frequency_fraction_closed_forms():
    h = w = 8
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((-1.0) ** (r + c)).float()  # frequency (1/2, 1/2): all high
    smooth = torch.cos(2 * math.pi * c / w).float()  # 1/8 cycle per token: all low
    maps = torch.stack([checker, smooth, checker + smooth, torch.full((h, w), 3.0)])[None]
    # checker + smooth: energy is the mean square, 1 (checker) vs 1/2 (cosine) -> 1 / 1.5
    torch.testing.assert_close(high_frequency_fraction(maps), torch.tensor([[1.0, 0.0, 2 / 3, 0.0]]))


def test_block_metrics_all_blocks_at_once_equals_one_by_one():
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(2, 1 + 12, 16, generator=g) for _ in range(3)]
    stacked = stacked_block_metrics(blocks, (3, 4))
    for name, values in stacked.items():
        assert values.shape == (2, 3)
        for i, tok in enumerate(blocks):
            torch.testing.assert_close(values[:, i], block_metrics(tok, (3, 4))[name])


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (14, 14), (5, 6)])
def test_high_frequency_half_spectrum_equals_full_spectrum(hw):
    maps = torch.randn(2, 5, *hw, generator=torch.Generator().manual_seed(0))
    x = maps - maps.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().square()
    fy, fx = torch.fft.fftfreq(hw[0]), torch.fft.fftfreq(hw[1])
    high = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() > 0.25
    expected = (power * high).sum(dim=(-2, -1)) / power.sum(dim=(-2, -1))
    torch.testing.assert_close(high_frequency_fraction(maps), expected)


def test_fast_metrics_are_close_to_exact():
    g = torch.Generator().manual_seed(0)
    # tokens with structure: 20 latent factors mixed into 384 channels, plus noise
    tokens = torch.randn(2, 197, 20, generator=g) @ torch.randn(20, 384, generator=g)
    tokens = tokens + 0.3 * torch.randn(2, 197, 384, generator=g)
    exact = block_metrics(tokens, (14, 14))
    fast = block_metrics(tokens, (14, 14), fast=True)
    for name in ("invalid_fraction", "high_freq_fraction"):
        torch.testing.assert_close(fast[name], exact[name])
    torch.testing.assert_close(fast["effective_rank"], exact["effective_rank"], rtol=1e-4, atol=0)
    torch.testing.assert_close(fast["mean_abs_corr"], exact["mean_abs_corr"], rtol=0.05, atol=0)
    assert not torch.equal(fast["mean_abs_corr"], exact["mean_abs_corr"])  # it is a subset estimate


def test_metric_selection():
    tokens = torch.randn(2, 13, 16, generator=torch.Generator().manual_seed(0))
    some = block_metrics(tokens, (3, 4), metrics=("invalid_fraction", "high_freq_fraction"))
    assert set(some) == {"invalid_fraction", "high_freq_fraction"}
    torch.testing.assert_close(some["high_freq_fraction"], block_metrics(tokens, (3, 4))["high_freq_fraction"])
    with pytest.raises(ValueError):
        block_metrics(tokens, (3, 4), metrics=("rank",))
    with pytest.raises(ValueError):
        block_metrics(tokens, (4, 4))  # 12 patch tokens do not fill a 4 x 4 grid


def test_neighbour_correlation_by_hand():
    from analysis.redundancy import neighbour_correlation

    h, w = 3, 4
    r, c = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    # channel 0 is a ramp along rows (every right pair equal, lower pairs shifted by one: corr 1 both ways);
    # channel 1 a checkerboard (every neighbour the opposite sign: corr -1); channel 2 constant (left out)
    ramp, checker, flat = r + c, (-1.0) ** (r + c), torch.zeros(h, w)
    tokens = torch.stack([ramp, checker, flat], dim=-1).reshape(1, h * w, 3)
    assert neighbour_correlation(tokens, (h, w)).tolist() == pytest.approx([0.0])  # (1 + 1 - 1 - 1) / 4
    assert neighbour_correlation(tokens[..., :1], (h, w)).tolist() == pytest.approx([1.0])
    noise = torch.randn(2, h * w, 5, generator=torch.Generator().manual_seed(0))
    x = noise.reshape(2, h, w, 5)
    a, b = x[0, :, :-1, 1].flatten(), x[0, :, 1:, 1].flatten()  # one channel, right pairs, by torch.corrcoef
    right = torch.corrcoef(torch.stack([a, b]))[0, 1]
    per = []
    for ch in range(5):
        for p, q in ((x[0, :, :-1, ch], x[0, :, 1:, ch]), (x[0, :-1, :, ch], x[0, 1:, :, ch])):
            per.append(torch.corrcoef(torch.stack([p.flatten(), q.flatten()]))[0, 1])
    assert per[2].item() == pytest.approx(right.item())
    assert neighbour_correlation(noise, (h, w))[0].item() == pytest.approx(torch.stack(per).mean().item(), abs=1e-6)
    assert math.isnan(neighbour_correlation(torch.zeros(1, h * w, 2), (h, w))[0].item())
