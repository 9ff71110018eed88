import pytest
import torch

from analysis.t2t_backproject import (
    T2T_SOFT_SPLITS,
    attention_backproject,
    backproject,
    receptive_field_box,
    split_backproject,
    stage_grids,
)


def test_stage_grids():
    assert stage_grids((224, 224)) == [(224, 224), (56, 56), (28, 28), (14, 14)]
    assert stage_grids((64, 64)) == [(64, 64), (16, 16), (8, 8), (4, 4)]


def test_split_backproject_by_hand():
    # 4x4 input, k3 s2 p1 -> 2x2 tokens; token (0, 0) covers rows/cols -1..1, in-image 0..1
    one_hot = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    mass = split_backproject(one_hot, (4, 4), 3, 2, 1, "mass")
    expected = torch.zeros(1, 4, 4)
    expected[0, :2, :2] = 0.25
    torch.testing.assert_close(mass, expected)
    # coverage: pixel value / number of windows over it: (0,0) 1 window, (0,1) 2, (1,1) 4
    cov = split_backproject(one_hot, (4, 4), 3, 2, 1, "coverage")
    torch.testing.assert_close(cov[0, :2, :2], torch.tensor([[1.0, 0.5], [0.5, 0.25]]))
    assert cov[0, 2:].abs().sum() == 0 and cov[0, :, 2:].abs().sum() == 0
    with pytest.raises(ValueError):
        split_backproject(one_hot, (6, 6), 3, 2, 1)


def test_attention_backproject_by_hand():
    r = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # token 0 of a 2x2 map
    attn = torch.eye(4)[None].clone()
    attn[0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # token 0 attended tokens 0 and 1 equally
    torch.testing.assert_close(attention_backproject(r, attn), torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]))
    torch.testing.assert_close(attention_backproject(r, attn[:, None], residual=True),
                               torch.tensor([[[0.75, 0.25], [0.0, 0.0]]]))


def _support_box(pixel_map):
    rows = pixel_map.abs().sum(-1).nonzero().flatten()
    cols = pixel_map.abs().sum(-2).nonzero().flatten()
    return (rows.min().item(), rows.max().item()), (cols.min().item(), cols.max().item())


# Receptive field of backbone token a (per axis) at 224 px, composed by hand:
#   split2 (k3 s2 p1): 28-grid tokens [2a - 1, 2a + 1]
#   split1 (k3 s2 p1): 56-grid tokens [2(2a - 1) - 1, 2(2a + 1) + 1] = [4a - 3, 4a + 3]
#   split0 (k7 s4 p2): pixels [4(4a - 3) - 2, 4(4a + 3) - 2 + 6] = [16a - 14, 16a + 16]
# each clipped to the grid; a = 5 -> [66, 96]; a = 0 -> 28-grid [0, 1], 56-grid [0, 3], pixels [0, 16];
# a = 13 -> 28-grid [25, 27], 56-grid [49, 55], pixels [194, 223]; a = 2 -> [18, 48]; a = 9 -> [130, 160]
@pytest.mark.parametrize(
    "row,col,box",
    [(5, 5, ((66, 96), (66, 96))), (0, 0, ((0, 16), (0, 16))), (13, 13, ((194, 223), (194, 223))),
     (2, 9, ((18, 48), (130, 160)))],
)
@pytest.mark.parametrize("mode", ["mass", "coverage"])
def test_one_hot_token_with_identity_attention_fills_exactly_its_receptive_field(row, col, box, mode):
    token = torch.zeros(1, 14, 14, dtype=torch.float64)
    token[0, row, col] = 1.0
    eye1 = torch.eye(56 * 56, dtype=torch.float64)[None, None]
    eye2 = torch.eye(28 * 28, dtype=torch.float64)[None, None]
    pixels = backproject(token, 224, eye1, eye2, mode=mode)
    assert pixels.shape == (1, 224, 224)
    assert (pixels >= 0).all()
    assert _support_box(pixels[0]) == box
    (y0, y1), (x0, x1) = box
    assert (pixels[0, y0 : y1 + 1, x0 : x1 + 1] > 0).all()  # the whole box, not just its corners
    if mode == "mass":
        assert pixels.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert receptive_field_box(row, col, 224) == box
    torch.testing.assert_close(backproject(token, 224, mode=mode), pixels)  # identity = pure geometry


def test_attention_moves_mass_to_attended_tokens_by_hand():
    # 64 px: grids 16 -> 8 -> 4. Backbone token (0, 0) -> 8-grid rows/cols [0, 1], 1/4 each.
    # attn2: every 8-grid token attended only token (7, 7) -> all mass at (7, 7).
    # split1: (7, 7) covers 16-grid [13, 15] (in image: 15 is the last) -> 1/9 each; attn1 identity.
    # split0: 16-grid rows 13..15 -> pixels [4*13 - 2, 4*15 + 4] = [50, 64] -> clipped [50, 63].
    token = torch.zeros(1, 4, 4, dtype=torch.float64)
    token[0, 0, 0] = 1.0
    attn2 = torch.zeros(1, 64, 64, dtype=torch.float64)
    attn2[..., 63] = 1.0
    pixels = backproject(token, 64, torch.eye(256, dtype=torch.float64)[None], attn2)
    assert _support_box(pixels[0]) == ((50, 63), (50, 63))
    assert pixels.sum().item() == pytest.approx(1.0)


def test_mass_is_conserved_with_random_attention_and_coverage_keeps_constants():
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(2, 4, 4, generator=g, dtype=torch.float64)
    attn1 = torch.rand(2, 1, 256, 256, generator=g, dtype=torch.float64).softmax(-1)
    attn2 = torch.rand(2, 1, 64, 64, generator=g, dtype=torch.float64).softmax(-1)
    pixels = backproject(heat, 64, attn1, attn2, mode="mass")
    torch.testing.assert_close(pixels.sum(dim=(1, 2)), heat.sum(dim=(1, 2)))
    # coverage normalisation: a constant map stays constant through the geometry
    torch.testing.assert_close(backproject(torch.full((1, 14, 14), 2.0), 224, mode="coverage"),
                               torch.full((1, 224, 224), 2.0))


def test_soft_split_geometry_matches_the_model_library():
    t2t_vit = pytest.importorskip("t2t.t2t_vit")
    assert tuple(t2t_vit.SOFT_SPLITS) == T2T_SOFT_SPLITS


# --- backproject_stages on a trace of several images ------------------------------------------


@pytest.fixture(scope="module")
def three_images():
    """The embedded T2T-ViT-7 (Performer T2T), three different synthetic images, their joint trace."""
    t2t = pytest.importorskip("t2t")
    from t2t.data import LocalStructureDataset

    model = t2t.create_model("t2t_vit_7", pretrained="embedded")
    ds = LocalStructureDataset("test", size=3)
    images = torch.stack([ds[i][0] for i in range(3)])
    with torch.no_grad():
        trace = t2t.trace(model, images)
        singles = [t2t.trace(model, images[i : i + 1]) for i in range(3)]
    maps = torch.rand(3, 14, 14, generator=torch.Generator().manual_seed(0))
    return trace, singles, maps


@pytest.mark.parametrize("mode,residual", [("mass", True), ("coverage", False)])
def test_stages_of_a_batch_equal_single_image_runs(three_images, mode, residual):
    from analysis.t2t_backproject import backproject_stages

    trace, singles, maps = three_images
    batch = backproject_stages(maps, trace, (224, 224), mode=mode, residual=residual)
    for i in range(3):
        alone = backproject_stages(maps[i], singles[i], (224, 224), mode=mode, residual=residual)
        picked = backproject_stages(maps[i], trace, (224, 224), mode=mode, residual=residual, index=i)
        assert [label for label, _ in batch] == [label for label, _ in alone] == [label for label, _ in picked]
        for (_, b), (_, a), (_, p) in zip(batch, alone, picked, strict=True):
            assert b.shape[0] == 3 and p.shape == a.shape == b.shape[1:]
            torch.testing.assert_close(b[i], a, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(p, a, rtol=1e-4, atol=1e-7)
    # the images' attentions differ, so using image 0's for image 1 would show: the test can fail
    wrong = backproject_stages(maps[1], singles[0], (224, 224), mode=mode, residual=residual)[-1][1]
    assert (wrong - batch[-1][1][1]).abs().max() > 1e-3 * batch[-1][1][1].abs().max()


def test_stages_refuse_ambiguous_or_mismatched_batches(three_images):
    from analysis.t2t_backproject import backproject_stages

    trace, singles, maps = three_images
    with pytest.raises(ValueError, match="holds 3 images: pass index="):
        backproject_stages(maps[0], trace, (224, 224))
    with pytest.raises(ValueError, match="2 maps for a trace of 3 images"):
        backproject_stages(maps[:2], trace, (224, 224))
    with pytest.raises(ValueError, match="index=1 picks one image, but a batch of 3 maps"):
        backproject_stages(maps, trace, (224, 224), index=1)
    with pytest.raises(ValueError, match="index 3 is out of range for a trace of 3"):
        backproject_stages(maps[0], trace, (224, 224), index=3)
    with pytest.raises(ValueError, match="must be \\(h, w\\) or \\(B, h, w\\)"):
        backproject_stages(maps[None], trace, (224, 224))
    with pytest.raises(ValueError, match="not the traced image size"):
        backproject_stages(maps[0], singles[0], (256, 256))
