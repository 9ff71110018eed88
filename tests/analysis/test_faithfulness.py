import pytest
import torch
from torch import nn

from analysis.faithfulness import (
    auc,
    deletion_insertion,
    faithfulness,
    gaussian_blur,
    make_baseline,
    pixel_ranks,
)

S = 32
MASK = torch.zeros(S, S, dtype=torch.bool)
MASK[4:12, 20:28] = True  # 64 of 1024 pixels = 1/16 of the image


def _mask_score(x, index):
    """Synthetic model: the class score is the sum of the pixels inside MASK."""
    return x[:, :, MASK].sum(dim=(1, 2))


def _images(b=3):
    return 0.5 + 0.5 * torch.rand(b, 3, S, S, generator=torch.Generator().manual_seed(0))


def test_pixel_ranks_by_hand():
    ranks = pixel_ranks(torch.tensor([[[3.0, 1.0], [2.0, 5.0]]]))
    torch.testing.assert_close(ranks, torch.tensor([[1, 3, 2, 0]]))


def test_perfect_map_closed_form_and_beats_random():
    images = _images()
    full = _mask_score(images, None)
    perfect = MASK.float().expand(3, S, S)
    curves = deletion_insertion(_mask_score, images, perfect, baseline="zero", steps=16, batch_size=7)
    assert curves.deletion.shape == curves.insertion.shape == (3, 17)
    # fractions k/16: after the first step exactly the 64 mask pixels are removed / inserted
    torch.testing.assert_close(curves.deletion[:, 0], full)
    torch.testing.assert_close(curves.deletion[:, 1:], torch.zeros(3, 16))
    torch.testing.assert_close(curves.insertion[:, 0], torch.zeros(3))
    torch.testing.assert_close(curves.insertion[:, 1:], full[:, None].expand(3, 16))
    torch.testing.assert_close(curves.deletion_auc, full / 32)
    torch.testing.assert_close(curves.insertion_auc, full - full / 32)

    random_map = torch.rand(3, S, S, generator=torch.Generator().manual_seed(1))
    rnd = deletion_insertion(_mask_score, images, random_map, baseline="zero", steps=16)
    assert (curves.deletion_auc < rnd.deletion_auc).all()
    assert (curves.insertion_auc > rnd.insertion_auc).all()
    # a random order removes the mask linearly: AUC about half the full score
    torch.testing.assert_close(rnd.deletion_auc / full, torch.full((3,), 0.5), atol=0.08, rtol=0)
    # an inverted map is worst
    inverted = deletion_insertion(_mask_score, images, 1 - perfect, baseline="zero", steps=16)
    assert (inverted.deletion_auc > rnd.deletion_auc).all()


def test_token_resolution_map_is_upsampled_and_batch_size_does_not_matter():
    images = _images(2)
    coarse = torch.zeros(2, 4, 4)
    coarse[:, 0:2, 2:4] = 1.0  # 8-pixel cells: covers the mask region
    a = deletion_insertion(_mask_score, images, coarse, baseline="mean", steps=8, batch_size=1)
    b = deletion_insertion(_mask_score, images, coarse, baseline="mean", steps=8, batch_size=100)
    torch.testing.assert_close(a.deletion, b.deletion)
    torch.testing.assert_close(a.insertion, b.insertion)


def test_auc_and_baselines():
    f = torch.linspace(0, 1, 5)
    torch.testing.assert_close(auc(f, f.expand(2, 5)), torch.full((2,), 0.5))
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(gaussian_blur(torch.full((1, 3, 16, 16), 0.7), 2.0), torch.full((1, 3, 16, 16), 0.7))
    blurred = make_baseline(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    torch.testing.assert_close(make_baseline(x, "mean")[:, :, 5, 7], x.mean(dim=(2, 3)))
    assert make_baseline(x, "zero").abs().sum() == 0
    with pytest.raises(ValueError):
        make_baseline(x, "noise")


def test_model_wrapper_scores_the_target_probability():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * S * S, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[1] = MASK.float().repeat(3, 1, 1).flatten()  # class 1 logit: sum over the mask
    images = _images(2)
    curves = faithfulness(model, images, MASK.float().expand(2, S, S), target=1, baseline="zero", steps=4)
    p1 = model(images).softmax(-1)[:, 1]
    torch.testing.assert_close(curves.deletion[:, 0], p1.detach())
    torch.testing.assert_close(curves.deletion[:, -1], torch.full((2,), 0.5))  # logits equal: p = 1/2
