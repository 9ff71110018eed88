import pytest
import torch

from analysis.attributions import (
    gradcam_map,
    integrated_gradients_map,
    integrated_gradients_pixels,
    occlusion_map,
    predict_and_grid,
    token_ablation_map,
    token_cells,
)
from analysis.explain import EXPLAINERS, explain
from analysis.maps import infer_grid
from tests.analysis.toy_models import ToyTokenNet

# 16 x 24 images with 8 x 8 patches: a non-square 2 x 3 token grid
IMAGES = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))


def test_infer_grid_follows_the_image_aspect():
    assert infer_grid(196, (224, 224)) == (14, 14)
    assert infer_grid(6, (16, 24)) == (2, 3)
    assert infer_grid(6, (24, 16)) == (3, 2)
    assert infer_grid(16) == (4, 4)
    model = ToyTokenNet()
    logits, grid = predict_and_grid(model, IMAGES)
    assert grid == (2, 3) and logits.shape == (2, 3)


def test_token_cells_partition():
    cells = token_cells((16, 24), (2, 3))
    assert cells[0, 0] == 0 and cells[7, 7] == 0 and cells[8, 0] == 3 and cells[15, 23] == 5
    assert torch.bincount(cells.flatten()).tolist() == [64] * 6


def test_token_ablation_equals_manual_cell_ablation():
    model = ToyTokenNet()
    got = token_ablation_map(model, IMAGES, target=1)
    assert got.shape == (2, 2, 3)
    with torch.no_grad():
        full = model(IMAGES)[:, 1]
        for r in range(2):
            for c in range(3):
                ablated = IMAGES.clone()
                ablated[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 0
                torch.testing.assert_close(got[:, r, c], full - model(ablated)[:, 1], rtol=1e-4, atol=1e-5)


def test_occlusion_with_one_cell_windows_equals_token_ablation():
    model = ToyTokenNet()
    occ = occlusion_map(model, IMAGES, target=2, window=8, stride=8)
    torch.testing.assert_close(occ, token_ablation_map(model, IMAGES, target=2), rtol=1e-4, atol=1e-5)


def test_integrated_gradients_completeness_on_an_affine_model():
    model = ToyTokenNet()
    attr = integrated_gradients_pixels(model, IMAGES, target=0, n_steps=8, internal_batch_size=5, reduction="sum")
    assert attr.shape == (2, 16, 24)
    with torch.no_grad():
        diff = model(IMAGES)[:, 0] - model(torch.zeros_like(IMAGES))[:, 0]
    torch.testing.assert_close(attr.sum(dim=(1, 2)), diff, rtol=1e-4, atol=1e-4)
    tokens = integrated_gradients_map(model, IMAGES, target=0, n_steps=8, reduction="sum")
    torch.testing.assert_close(tokens.sum(dim=(1, 2)) * 64, diff, rtol=1e-4, atol=1e-4)  # cell means


@pytest.mark.parametrize("norm", [False, True])
def test_gradcam_by_hand(norm):
    # logit_c = head(cls + sum_t w_t y_t), y = norm1(patch tokens): dlogit/dy_t = w_t W_c, so the
    # Grad-CAM channel weights are mean_t(w_t) W_c and cam_t = relu(y_t . alpha)
    model = ToyTokenNet(norm=norm)
    with torch.no_grad():
        y = model.blocks[0].norm1(model.patch_tokens(IMAGES))  # (B, 6, D)
        w = model.blocks[0].token_weights(6)
        alpha = w.mean() * model.head.weight[1]
        expected = (y @ alpha).clamp_min(0).view(2, 2, 3)
    got = gradcam_map(model, IMAGES, target=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # the hook is removed again: the model's output is unchanged
    torch.testing.assert_close(model(IMAGES), model(IMAGES))
    assert not model.blocks[0].norm1._forward_hooks


# --- the real models at 64 px (4 x 4 token grid) ----------------------------------------


@pytest.fixture(scope="module", params=["t2t_vit_7", "deit_tiny_patch16_224"])
def small_model(request):
    t2t = pytest.importorskip("t2t")
    torch.manual_seed(0)
    return t2t.create_model(request.param, img_size=64, num_classes=10).eval()


FAST = {"integrated_gradients": {"n_steps": 4, "internal_batch_size": 8}}


@pytest.mark.parametrize("method", sorted(EXPLAINERS))
def test_every_method_runs_on_both_families(small_model, method):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    heat = explain(method, small_model, images, **FAST.get(method, {}))
    assert heat.shape == (2, 4, 4)
    assert torch.isfinite(heat).all()
    assert not any(p.grad is not None for p in small_model.parameters())  # no side effects on the model


def test_gradcam_on_real_model_matches_manual_gradients(small_model):
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    captured = {}
    handle = small_model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    try:
        logit = small_model(images)[0, 3]
    finally:
        handle.remove()
    a = captured["a"]
    (g,) = torch.autograd.grad(logit, a)
    alpha = g[0, 1:].mean(dim=0)  # channel weights over patch tokens
    expected = (a[0, 1:] @ alpha).clamp_min(0).view(1, 4, 4)
    torch.testing.assert_close(gradcam_map(small_model, images, target=3), expected.detach(), rtol=1e-4, atol=1e-6)
