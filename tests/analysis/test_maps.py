import numpy as np
import pytest
import torch

from analysis.maps import display_scale, keep_mass


def test_keep_mass_keeps_the_largest_weights_up_to_the_share():
    maps = np.array([[[0.5, 0.3], [0.2, 0.0]]])
    assert keep_mass(maps, 0.6).tolist() == [[[0.5, 0.3], [0.0, 0.0]]]  # 0.5 < 0.6: the crossing 0.3 is kept
    assert keep_mass(maps, 0.5).tolist() == [[[0.5, 0.0], [0.0, 0.0]]]
    two = np.stack([maps[0], maps[0][::-1]])  # each map on its own
    assert keep_mass(two, 0.6)[1].tolist() == [[0.0, 0.0], [0.5, 0.3]]


def test_display_scale_clips_at_the_quantile():
    heat = torch.arange(1000.0)
    shown = display_scale(heat, 0.9)
    top = torch.quantile(heat, 0.9)
    assert shown[0].item() == 0.0 and shown.max().item() == 1.0
    assert (shown[heat >= top] == 1).all()
    assert shown[100].item() == pytest.approx(100 / top.item())
