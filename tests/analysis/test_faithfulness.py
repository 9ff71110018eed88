"""Deletion / insertion against closed forms; ROAD's noisy linear imputation against Quantus and by hand."""

import numpy as np
import pytest
import torch
from torch import nn

from analysis.faithfulness import (
    ROAD_NEIGHBOURS,
    auc,
    deletion_insertion,
    dissection_order,
    faithfulness,
    gaussian_blur,
    input_noise,
    linear_imputation,
    make_baseline,
    noisy_linear_imputation,
    pixel_ranks,
    road,
    road_generator,
    road_removed,
)
from tests.analysis.test_knockout import assert_untouched, images, small_vit, snapshot

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


# --- ROAD: noisy linear imputation and the MoRF / LeRF curves -------------------------------------------


def test_dissection_order_numbers_every_pixel_once():
    for h, w in ((1, 1), (7, 5), (40, 33)):
        key = dissection_order(h, w)
        assert sorted(key.tolist()) == list(range(h * w))


def test_imputed_pixel_is_the_weighted_mean_of_its_neighbours():
    """One removed pixel: the reference's equation sum_j w_j (x_j - x_i) = 0 over the neighbours that exist."""
    img = np.random.default_rng(0).random((3, 6, 7))
    for r, c in ((2, 3), (0, 0), (5, 2)):  # inside, a corner, the bottom edge
        removed = np.zeros((6, 7), dtype=bool)
        removed[r, c] = True
        nbrs = [(r + dr, c + dc, w) for (dr, dc), w in ROAD_NEIGHBOURS if 0 <= r + dr < 6 and 0 <= c + dc < 7]
        want = sum(w * img[:, i, j] for i, j, w in nbrs) / sum(w for _, _, w in nbrs)
        np.testing.assert_allclose(linear_imputation(img, removed)[:, 0], want, rtol=0, atol=1e-12)
    assert sum(w for _, w in ROAD_NEIGHBOURS) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(12, 12), (17, 23)])
def test_linear_imputation_equals_quantus(shape):
    """Quantus's `noisy_linear_imputation` (the reference's NoisyLinearImputer) with its noise off, RGB images,
    holes of every size, most and least relevant first."""
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, *shape, generator=g, dtype=torch.float64)
    saliency = torch.rand(2, *shape, generator=g)
    for order in ("morf", "lerf"):
        removed = road_removed(saliency, [5, 30, 60, 95], order)
        for k in range(removed.shape[1]):
            ours = noisy_linear_imputation(x, removed[:, k], noise=0.0)
            for i in range(2):
                indices = np.flatnonzero(removed[i, k].numpy().ravel())
                want = quantus_imputation(x[i].numpy(), indices, noise=0.0)
                np.testing.assert_allclose(ours[i].numpy(), want, rtol=0, atol=1e-6)
                assert not np.allclose(want, x[i].numpy())  # pixels were really replaced


def test_noise_is_added_to_removed_pixels_only_with_its_std_per_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=g, dtype=torch.float64)
    removed = road_removed(torch.rand(1, 64, 64, generator=g), [50], "morf")[:, 0]
    clean = noisy_linear_imputation(x, removed, noise=0.0)
    noisy = noisy_linear_imputation(x, removed, noise=[0.01, 0.1, 1.0], generator=torch.Generator().manual_seed(1))
    d = noisy - clean
    assert torch.equal(noisy[0][:, ~removed[0]], x[0][:, ~removed[0]])
    stds = d[0][:, removed[0]].std(dim=1)
    torch.testing.assert_close(stds, torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64), rtol=0.05, atol=0)
    again = noisy_linear_imputation(x, removed, noise=[0.01, 0.1, 1.0], generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    with pytest.raises(ValueError, match="every pixel is removed"):
        noisy_linear_imputation(x, torch.ones(1, 64, 64, dtype=torch.bool), noise=0.0)


def test_road_removes_the_reference_counts():
    saliency = torch.arange(100.0).flip(0).view(1, 10, 10)  # raster pixel i has rank i
    saliency[0, 0, :2] = 99.0  # a tie at the top: broken in raster order
    morf = road_removed(saliency, [10, 33, 90], "morf")
    lerf = road_removed(saliency, [10, 33, 90], "lerf")
    assert morf.sum(dim=(2, 3)).tolist() == [[10, 33, 90]]  # int(P q / 100) most relevant
    assert lerf.sum(dim=(2, 3)).tolist() == [[10, 33, 90]]  # all but the int(P (100 - q) / 100) most relevant
    assert morf[0, 0].flatten()[:10].all() and not morf[0, 0].flatten()[10:].any()
    assert lerf[0, 0].flatten()[-10:].all() and not lerf[0, 0].flatten()[:-10].any()
    with pytest.raises(ValueError, match="strictly between"):
        road_removed(saliency, [0, 50], "morf")
    with pytest.raises(ValueError, match="order"):
        road_removed(saliency, [50], "both")


class OneChannelNet(nn.Module):
    """A small seeded 1-channel classifier (Quantus's ROAD imputes only single-channel images correctly)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                                 nn.Linear(54, 4))

    def forward(self, x):
        return self.net(x)


def test_road_equals_quantus_road():
    """quantus.ROAD (MoRF: the accuracy after removing the most relevant q%) on 1-channel 10 x 10 images, its noise
    off; LeRF is Quantus's MoRF of the reversed map (on 100 pixels the two counts agree)."""
    import quantus

    model = OneChannelNet().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(12, 1, 10, 10, generator=g)
    saliency = torch.rand(12, 10, 10, generator=g)  # no ties: every library sorts the same way
    y = model(x).argmax(-1)
    pct = [10, 30, 50, 70, 90]
    ours = road(model, x, saliency, target=y, percentages=pct, noise=0.0, batch_size=7)
    for order, a in (("morf", saliency), ("lerf", 1 - saliency)):  # Quantus refuses all-negative maps
        metric = quantus.ROAD(percentages=pct, noise=0.0, abs=False, normalise=False, disable_warnings=True)
        theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), device="cpu")
        np.testing.assert_allclose(ours.accuracy(order).numpy(), [theirs[p] for p in pct], rtol=0, atol=1e-6)
    assert ours.accuracy("morf").min() < 1  # removing pixels does change predictions: the comparison has teeth
    probs = model(x).softmax(-1)
    assert (ours.morf <= 1).all() and ours.morf.shape == ours.lerf.shape == (12, 5)
    assert not torch.allclose(ours.morf[:, 0], probs.gather(1, y[:, None])[:, 0])


def test_quantus_road_cannot_impute_colour_images():
    """Why `road` is our own: Quantus 0.6's ROAD indexes the image's pixels with indices of the map broadcast over
    the colour channels and fails on any RGB image."""
    import quantus

    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.rand(2, 3, 8, 8)
    metric = quantus.ROAD(percentages=[50], noise=0.0, disable_warnings=True)
    with pytest.raises(IndexError):
        metric(model=model, x_batch=x.numpy(), y_batch=np.zeros(2, dtype=int), a_batch=np.random.rand(2, 1, 8, 8),
               device="cpu")


def _mask_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * S * S, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[1] = MASK.float().repeat(3, 1, 1).flatten() / 20  # class 1 logit: mean-ish of the mask
    return model


def test_road_rewards_the_map_that_points_at_what_the_model_reads():
    model = _mask_model()
    x = torch.zeros(2, 3, S, S)
    x[:, :, MASK] = 1.0  # a bright square on black: imputed from outside it, it turns dark
    perfect = MASK.float().expand(2, S, S) + 0.01 * torch.rand(2, S, S, generator=torch.Generator().manual_seed(0))
    random_map = torch.rand(2, S, S, generator=torch.Generator().manual_seed(1))
    kw = {"target": 1, "percentages": [10, 50], "noise": 0.0}
    good, rnd, bad = (road(model, x, m, **kw) for m in (perfect, random_map, 1 - perfect))
    assert (good.morf_mean < rnd.morf_mean).all() and (good.lerf_mean > rnd.lerf_mean).all()
    assert (bad.morf_mean > good.morf_mean).all() and (bad.lerf_mean < good.lerf_mean).all()
    p1 = model(x).softmax(-1)[:, 1].detach()
    torch.testing.assert_close(good.lerf[:, 0], p1)  # the mask kept: nothing the model reads changed


def test_road_does_not_depend_on_batches_or_threads_and_leaves_the_model_alone():
    model, x = small_vit(), images(2)
    before = snapshot(model)
    saliency = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    kw = {"percentages": [20, 60], "noise": 0.05, "seed": 3}
    a = road(model, x, saliency, batch_size=1, workers=1, **kw)
    b = road(model, x, saliency, batch_size=64, workers=2, **kw)
    for name in ("morf", "lerf"):  # the same imputed images; the model's batched float32 sums differ by ulps
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6)
    assert torch.equal(a.morf_correct, b.morf_correct) and torch.equal(a.lerf_correct, b.lerf_correct)
    assert_untouched(model, before)
    # the same as imputing image by image, each with its own generator
    pixels = torch.nn.functional.interpolate(saliency[:, None], size=32, mode="bilinear", align_corners=False)[:, 0]
    target = model(x).argmax(-1)
    for i in range(2):
        for order in ("morf", "lerf"):
            for k, q in enumerate([20, 60]):
                removed = road_removed(pixels[i:i + 1], [q], order)[:, 0]
                gen = road_generator(3, i, order, q)
                xi = noisy_linear_imputation(x[i:i + 1], removed, input_noise(model, 0.05), gen)
                p = model(xi).softmax(-1)[0, target[i]]
                assert getattr(a, order)[i, k].item() == pytest.approx(p.item(), abs=1e-6)
    only = road(model, x, saliency, orders=["morf"], **kw)  # an image's noise does not depend on the others
    assert torch.isnan(only.lerf).all()
    torch.testing.assert_close(only.morf, a.morf, rtol=0, atol=1e-6)


def test_noise_is_in_pixel_units():
    class Normalised(nn.Identity):
        default_cfg = {"std": (0.5, 0.25, 0.2)}

    torch.testing.assert_close(input_noise(Normalised(), 0.01), torch.tensor([0.02, 0.04, 0.05], dtype=torch.float64))
    assert input_noise(nn.Identity(), 0.01) == 0.01
