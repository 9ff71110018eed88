import io

import numpy as np
import pytest
import torch

from analysis import figures, plots
from analysis.figures import heat_to_pixels, image_hwc, tile_maps


def test_tile_maps_layout():
    maps = torch.stack([torch.full((2, 3), float(i)) for i in range(5)])
    maps[:, 0, 0] += 1  # so each map is non-flat and normalises to 1 at (0, 0), 0 elsewhere
    mosaic = tile_maps(maps, ncols=2)
    assert mosaic.shape == (3 * 3, 2 * 4)  # 3 rows of (2 + 1) by 2 cols of (3 + 1)
    assert mosaic[0, 0] == 1 and mosaic[0, 1] == 0 and mosaic[3, 4] == 1  # map 3 starts at (3, 4)
    assert np.isnan(mosaic[2, 0]) and np.isnan(mosaic[6, 4])  # gap row; missing sixth map


def test_image_and_heat_conversion():
    img = image_hwc(torch.ones(3, 8, 8) * 0.5)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8 and img[0, 0, 0] == 128
    assert heat_to_pixels(torch.ones(2, 2), (8, 8)).shape == (8, 8)


@pytest.mark.parametrize("lib", [figures, plots])
def test_builders(lib):
    image = torch.rand(3, 32, 32)
    maps = torch.randn(10, 4, 4)
    invalid = torch.zeros(10, dtype=torch.bool)
    invalid[[2, 7]] = True
    figs = [
        lib.heatmap_overlay(image, torch.rand(4, 4), title="rollout"),
        lib.channel_grid(maps, invalid, ncols=4),
        lib.metric_vs_depth({"t2t": torch.rand(14), "vit": torch.rand(12)}, "effective_rank"),
        lib.cka_heatmap(torch.rand(14, 12), "t2t", "vit"),
        lib.faithfulness_curves(torch.linspace(0, 1, 5), {"a": torch.linspace(1, 0, 5)}, "deletion"),
        lib.attention_distance_scatter({"vit": torch.rand(12, 3) * 100}),
    ]
    if lib is figures:
        assert len(figs[0].data) == 2  # image + heat
        assert len(figs[1].layout.shapes) == 2  # one outline per invalid channel
        assert [len(t.x) for t in figs[2].data] == [14, 12]
        assert figs[4].data[0].name == "a (AUC 0.500)"
        assert len(figs[5].data[0].y) == 36
    else:
        assert len(figs[1].axes[0].patches) == 2
        assert figs[4].axes[0].get_legend().get_texts()[0].get_text() == "a (AUC 0.500)"
        for fig in figs:
            fig.savefig(io.BytesIO(), format="png")  # renders without a display
