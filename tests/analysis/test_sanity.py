"""Cascading randomisation (Adebayo et al. 2018): similarities against hand computations, the cascade
against the paper's definition written out here, and, where Quantus installs, against its MPRT."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from analysis.sanity import (
    cascading_randomization,
    randomization_layers,
    rankdata,
    reinitialize,
    spearman,
    ssim,
)
from tests.analysis.test_knockout import assert_untouched, images, small_t2t, small_vit, snapshot

# --- similarities by hand ---------------------------------------------------------------------------------


def ranks_by_hand(x: list[float]) -> list[float]:
    """Rank = 1 + number of smaller values + (number of other equal values) / 2: the average rank of a tie."""
    return [1 + sum(y < v for y in x) + (sum(y == v for y in x) - 1) / 2 for v in x]


def spearman_by_hand(a: list[float], b: list[float]) -> float:
    ra, rb = ranks_by_hand(a), ranks_by_hand(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return num / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def ssim_by_hand(a: np.ndarray, b: np.ndarray, data_range: float, win: int = 7) -> float:
    """skimage's structural_similarity, window by window: uniform win x win windows that fit in the map,
    sample (n - 1) variances and covariance, C1 = (0.01 L)^2, C2 = (0.03 L)^2, the mean over windows."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i, j in itertools.product(range(a.shape[0] - win + 1), range(a.shape[1] - win + 1)):
        x, y = a[i:i + win, j:j + win].ravel(), b[i:i + win, j:j + win].ravel()
        mx, my = x.mean(), y.mean()
        vx, vy = x.var(ddof=1), y.var(ddof=1)
        cxy = ((x - mx) * (y - my)).sum() / (x.size - 1)
        values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ranks_average_ties():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])
    assert rankdata(x)[0].tolist() == ranks_by_hand([3, 1, 3, 2, 3]) == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_spearman_equals_a_hand_computation_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 4, 5), generator=g).float()  # many ties
    b = a + torch.randn(3, 4, 5, generator=g)
    got = spearman(a, b)
    for i in range(3):
        assert got[i].item() == pytest.approx(spearman_by_hand(a[i].flatten().tolist(), b[i].flatten().tolist()))
    assert spearman(a, a * 3 + 1).tolist() == pytest.approx([1.0] * 3)
    assert spearman(a, -a).tolist() == pytest.approx([-1.0] * 3)
    assert torch.isnan(spearman(torch.ones(1, 3, 3), a[:1, :3, :3])).all()  # a constant map has no ranking


def test_spearman_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 14, 14, generator=g), torch.randn(4, 14, 14, generator=g)
    b[0] = a[0].round()
    want = [stats.spearmanr(x.flatten(), y.flatten())[0] for x, y in zip(a, b, strict=True)]
    assert spearman(a, b).tolist() == pytest.approx(want)


@pytest.mark.parametrize("shape", [(14, 14), (9, 11), (5, 6)])
def test_ssim_equals_a_hand_computation(shape):
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, *shape, generator=g)
    b = 0.6 * a + 0.4 * torch.rand(2, *shape, generator=g)
    got = ssim(a, b, data_range=1.0)
    win = min(7, *shape) - (1 - min(7, *shape) % 2)
    for i in range(2):
        assert got[i].item() == pytest.approx(ssim_by_hand(a[i].double().numpy(), b[i].double().numpy(), 1.0, win))
    assert ssim(a, a, data_range=1.0).tolist() == pytest.approx([1.0, 1.0])
    joint = float(max(a[0].max(), b[0].max()) - min(a[0].min(), b[0].min()))  # default: the pair's joint range
    assert ssim(a[:1], b[:1])[0].item() == pytest.approx(ssim_by_hand(a[0].double().numpy(), b[0].double().numpy(),
                                                                       joint, win))


def test_ssim_equals_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 14, 14, generator=g), torch.randn(3, 14, 14, generator=g)
    want = [metrics.structural_similarity(x.double().numpy(), y.double().numpy(), data_range=2.5)
            for x, y in zip(a, b, strict=True)]
    assert ssim(a, b, data_range=2.5).tolist() == pytest.approx(want)


# --- the cascade ------------------------------------------------------------------------------------------


def input_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """|d logit_target / d x| summed over colours, (B, S, S): a method that depends on every weight."""
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(out, x)
    return grad.abs().sum(dim=1)


def edges(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """An edge detector: ignores the model entirely, the failure the test exists to catch."""
    gray = x.mean(dim=1)
    return (gray[:, 1:, 1:] - gray[:, :-1, 1:]).abs() + (gray[:, 1:, 1:] - gray[:, 1:, :-1]).abs()


def test_layers_go_from_the_head_down_to_the_stem():
    vit, t2t = small_vit(), small_t2t()
    assert [label for label, _ in randomization_layers(vit)] == ["head", "norm", "blocks.2", "blocks.1", "blocks.0",
                                                                  "stem"]
    assert randomization_layers(vit)[-1][1] == ["patch_embed", "pos_embed", "cls_token"]
    assert randomization_layers(t2t)[-1][1] == ["tokens_to_token", "cls_token"]


def test_similarity_is_one_before_any_randomisation_and_the_model_is_untouched():
    model, x = small_vit(), images(3)
    before = snapshot(model)
    rng_state = torch.get_rng_state()
    curve = cascading_randomization(input_gradient, model, x)
    assert_untouched(model, before)
    assert torch.equal(torch.get_rng_state(), rng_state), "the caller's random state changed"
    assert curve.layers[0] == "original" and len(curve.layers) == 7 == curve.spearman.shape[0]
    for metric in (curve.spearman, curve.spearman_abs, curve.ssim):
        assert metric.shape == (7, 3)
        assert metric[0].tolist() == pytest.approx([1.0] * 3)
    assert curve.mean("spearman")[-1] < 0.5 and curve.passes()


def test_a_method_that_ignores_the_model_fails():
    curve = cascading_randomization(edges, small_vit(), images(2))
    assert curve.spearman.numpy() == pytest.approx(np.ones((7, 2)))
    assert curve.ssim.numpy() == pytest.approx(np.ones((7, 2)))
    assert not curve.passes()


def test_each_step_reinitialises_one_more_layer_cumulatively():
    model, x = small_t2t(), images(1)
    original = snapshot(model)
    states: list[dict[str, Tensor]] = []

    def record(m: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return images.mean(dim=1)

    cascading_randomization(record, model, x)
    layers = randomization_layers(model)
    changed = [{k for k in original if not torch.equal(original[k], s[k])} for s in states]
    assert changed[0] == set()
    for k in range(1, len(states)):
        names = [n for _, ns in layers[:k] for n in ns]
        owned = {key for key in original if any(key == n or key.startswith(n + ".") for n in names)}
        frozen = {"pos_embed", "tokens_to_token.attention1.w", "tokens_to_token.attention2.w"}  # not learned
        assert changed[k] == owned - frozen, layers[k - 1][0]


def reference_cascade(method, model: nn.Module, x: Tensor, target: Tensor, seed: int = 0) -> list[Tensor]:
    """The paper's definition, written out: a copy; from the top layer down re-initialise one more
    layer with the model's initialiser and recompute the map."""
    work = copy.deepcopy(model)
    maps = [method(model, x, target)]
    for k, (_, names) in enumerate(randomization_layers(model), start=1):
        torch.manual_seed(seed + k)
        with torch.no_grad():
            for n in names:
                part = work.get_submodule(n) if n not in dict(work.named_parameters()) else work.get_parameter(n)
                reinitialize(part)
        maps.append(method(work, x, target))
    return maps


def test_cascade_equals_the_definition_written_out():
    model, x = small_vit(), images(2)
    target = torch.tensor([1, 4])
    maps = reference_cascade(input_gradient, model, x, target, seed=5)
    curve = cascading_randomization(input_gradient, model, x, target, seed=5)
    for k, m in enumerate(maps):
        torch.testing.assert_close(curve.maps[k], m)
        assert curve.spearman[k].tolist() == pytest.approx(spearman(maps[0], m).tolist())
        assert curve.spearman_abs[k].tolist() == pytest.approx(spearman(maps[0].abs(), m.abs()).tolist())


def test_named_methods_run_and_rollout_depends_on_the_weights():
    model, x = small_t2t("transformer"), images(1)
    curve = cascading_randomization("rollout", model, x)
    assert curve.method == "rollout" and curve.maps.shape == (len(curve.layers), 1, 2, 2)
    assert torch.isnan(curve.ssim).all()  # a 2 x 2 grid has no 3 x 3 window
    assert curve.spearman[0].item() == pytest.approx(1.0)
    curve = cascading_randomization("chefer", small_vit(), images(2))
    assert curve.maps.shape == (7, 2, 4, 4) and curve.ssim[0].tolist() == pytest.approx([1.0, 1.0])
    assert curve.mean("spearman")[-1] < 0.9
    with pytest.raises(ValueError, match="neither a submodule nor a parameter"):
        cascading_randomization(edges, model, x, layers=[("x", ["nope"])])


def test_matches_quantus_mprt():
    """Quantus's MPRT (layer_order="top_down") re-initialises, from the last module with
    `reset_parameters` to the first, one more at a time with PyTorch's default initialiser after
    `torch.manual_seed(seed + 1)`: the same cascade, given those layers and that initialiser."""
    quantus = pytest.importorskip("quantus")
    model, x = small_vit(), images(3)
    target = model(x).argmax(-1)
    seed = 42
    modules = [name for name, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]

    def reset(m: nn.Module) -> None:
        torch.manual_seed(seed + 1)
        m.reset_parameters()

    ours = cascading_randomization(input_gradient, model, x, target, layers=[(n, [n]) for n in modules],
                                   initialize=reset)

    def explain(model, inputs, targets, **kwargs):
        maps = input_gradient(model, torch.as_tensor(inputs), torch.as_tensor(targets))
        return maps[:, None].numpy()  # (B, 1, S, S): one channel, the image's spatial size

    metric = quantus.MPRT(layer_order="top_down", seed=seed, abs=False, normalise=False,
                          similarity_func=quantus.similarity_func.correlation_spearman, disable_warnings=True,
                          display_progressbar=False)
    scores = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None, explain_func=explain,
                    device="cpu")
    theirs = [scores["original"], *(scores[n] for n in modules)]
    assert np.array(theirs) == pytest.approx(ours.spearman.numpy(), abs=1e-6)
