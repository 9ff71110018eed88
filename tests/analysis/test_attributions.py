import pytest
import torch
from captum.attr import IntegratedGradients

from analysis.attributions import (
    COMPLETENESS_TOLERANCE,
    IG_METHODS,
    Completeness,
    _path_gradients,
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


# --- Integrated Gradients: its axioms, Captum, and the adaptive rule ------------------------------

TOY = ToyTokenNet(norm=True)  # LayerNorm of each patch token: a non-linear logit
SATURATING = ToyTokenNet(norm=True)
with torch.no_grad():  # without the embedding's bias, LayerNorm(alpha t) saturates at small alpha, as in T2T-ViT
    SATURATING.embed.bias.zero_()


def _change(model, images, target, baseline=0.0):
    with torch.no_grad():
        b = torch.as_tensor(baseline, dtype=images.dtype).expand_as(images)
        return model(images)[:, target] - model(b)[:, target]


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_captum_methods_are_captums_integrated_gradients(method):
    got, delta = integrated_gradients_pixels(TOY, IMAGES, target=1, n_steps=12, internal_batch_size=7,
                                             reduction="sum", method=method, return_convergence_delta=True)
    want, want_delta = IntegratedGradients(TOY).attribute(IMAGES, baselines=0.0, target=1, n_steps=12, method=method,
                                                          return_convergence_delta=True)
    torch.testing.assert_close(got, want.sum(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta.float(), want_delta.float(), rtol=1e-4, atol=1e-5)


def test_our_path_gradients_with_captums_nodes_are_captums_result():
    # the machinery of the adaptive rule (points on the path, gradients, weights) with Captum's
    # Gauss-Legendre nodes and weights reproduces Captum: only the choice of nodes differs
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(10)
    alphas, weights = torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)
    want = IntegratedGradients(TOY).attribute(IMAGES, baselines=0.0, target=2, n_steps=10)
    for i in range(2):
        x, b = IMAGES[i], torch.zeros_like(IMAGES[i])
        grads, _ = _path_gradients(TOY, x, b, 2, alphas, batch=4)
        got = (grads * weights.float().view(-1, 1, 1, 1)).sum(0) * (x - b)
        torch.testing.assert_close(got, want[i], rtol=1e-4, atol=1e-6)


def _captum_in_segments(model, images, target, edges):
    """IG from the zero baseline as a sum of Captum IG over path segments [a, a'] (baseline a x, input a' x),
    each with 64 Gauss-Legendre points: a converged reference where the logit moves at tiny alpha."""
    ig = IntegratedGradients(model)
    return sum(ig.attribute(images * hi, baselines=images * lo, target=target, n_steps=64)
               for lo, hi in zip(edges[:-1], edges[1:], strict=True))


def test_adaptive_rule_is_the_same_integral_as_a_converged_reference():
    # pixel by pixel, not only in sum: the adaptive rule is a quadrature of IG's integral, not a
    # rescaling to meet completeness. Scaled inputs make the logit saturate at alpha ~1e-4, as in T2T-ViT.
    images = IMAGES * 100
    edges = [0.0, *torch.logspace(-7, 0, 57, dtype=torch.float64).tolist()]
    want = _captum_in_segments(SATURATING, images, 0, edges).sum(dim=1)
    scale = want.abs().amax(dim=(1, 2), keepdim=True)
    ours = integrated_gradients_pixels(SATURATING, images, target=0, reduction="sum")
    assert ((ours - want).abs() / scale).max() < 0.005
    tight = integrated_gradients_pixels(SATURATING, images, target=0, reduction="sum", tolerance=0.002, max_steps=1024)
    assert ((tight - want).abs() / scale).max() < 0.0005  # converges to it
    coarse = integrated_gradients_pixels(SATURATING, images, target=0, reduction="sum", method="gausslegendre")
    assert ((coarse - want).abs() / scale).max() > 0.1  # the test can tell a wrong rule


def test_completeness_and_delta_as_captum_defines_them():
    target = torch.tensor([0, 2])
    attr, delta = integrated_gradients_pixels(TOY, IMAGES, target=target, reduction="sum",
                                              return_convergence_delta=True)
    change = _change(TOY, IMAGES, 0), _change(TOY, IMAGES, 2)
    change = torch.stack([change[0][0], change[1][1]]).double()
    torch.testing.assert_close(delta, attr.double().sum(dim=(1, 2)) - change, rtol=1e-4, atol=1e-5)
    assert (delta.abs() <= COMPLETENESS_TOLERANCE * change.abs()).all()
    heat, comp = integrated_gradients_map(TOY, IMAGES, target=target, reduction="sum", return_completeness=True)
    assert isinstance(comp, Completeness) and heat.shape == (2, 2, 3)
    torch.testing.assert_close(comp.output_change, change, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp.delta, delta, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp.relative_gap, delta.abs() / change.abs())
    torch.testing.assert_close(heat.sum(dim=(1, 2)).double() * 64, attr.double().sum(dim=(1, 2)), rtol=1e-4,
                               atol=1e-4)
    # explain() passes it through; a non-zero baseline works the same way
    _, comp2 = explain("integrated_gradients", TOY, IMAGES, target=target, return_completeness=True, baseline=0.5)
    change2 = torch.stack([_change(TOY, IMAGES, 0, 0.5)[0], _change(TOY, IMAGES, 2, 0.5)[1]]).double()
    torch.testing.assert_close(comp2.output_change, change2, rtol=1e-4, atol=1e-5)
    assert (comp2.relative_gap <= COMPLETENESS_TOLERANCE).all()


def test_integrated_gradients_refuses_bad_options():
    assert IG_METHODS[0] == "adaptive_log_mean"
    with pytest.raises(ValueError, match="method must be one of"):
        integrated_gradients_pixels(TOY, IMAGES, target=0, method="simpson")
    with pytest.raises(ValueError, match="max_steps"):
        integrated_gradients_pixels(TOY, IMAGES, target=0, n_steps=16, max_steps=8)
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients_pixels(TOY, IMAGES, target=0, n_steps=1)


@pytest.fixture(scope="module")
def embedded_inputs():
    """The embedded models, each with two synthetic test images and one sample photo, preprocessed for it."""
    t2t = pytest.importorskip("t2t")
    from t2t.data import LocalStructureDataset
    from t2t.images import open_image, preprocess, sample_images

    out = {}
    for name in ("t2t_vit_7", "deit_tiny_patch16_224"):
        model = t2t.create_model(name, pretrained="embedded")
        cfg = model.default_cfg
        ds = LocalStructureDataset("test", size=2, mean=cfg["mean"], std=cfg["std"])
        photo = preprocess(open_image(sample_images()["cat"]), cfg["mean"], cfg["std"], 224, cfg["crop_pct"])
        out[name] = model, torch.cat([torch.stack([ds[i][0] for i in range(2)]), photo])
    return out


@pytest.mark.parametrize("name", ["t2t_vit_7", "deit_tiny_patch16_224"])
def test_default_integrated_gradients_are_complete_on_the_embedded_models(embedded_inputs, name):
    model, images = embedded_inputs[name]
    heat, comp = integrated_gradients_map(model, images, return_completeness=True)  # every default
    assert heat.shape == (3, 14, 14) and torch.isfinite(heat).all()
    assert (comp.output_change.abs() > 0.5).all()  # a real change to account for
    assert (comp.relative_gap < COMPLETENESS_TOLERANCE).all(), comp.relative_gap
