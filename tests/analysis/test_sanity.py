"""Cascading randomisation (Adebayo et al. 2018) and Random Logit (Sixt et al. 2020): the similarities against
hand computations and the libraries they call, the cascade against the paper's definition written out here and
against Quantus's MPRT, Random Logit against Quantus's algorithm written out. The reference libraries are part
of the [dev] set-up: in CI (CI=true) a missing one fails these tests (tests/conftest.py), it is never skipped."""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import skimage.metrics
import torch
from torch import Tensor, nn

from analysis.sanity import (
    cascading_randomization,
    other_classes,
    pixel_maps,
    random_logit,
    randomization_layers,
    reinitialize,
    spearman,
    ssim,
    ssim_window,
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
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 14, 14, generator=g), torch.randn(4, 14, 14, generator=g)
    b[0] = a[0].round()
    want = [scipy.stats.spearmanr(x.flatten(), y.flatten())[0] for x, y in zip(a, b, strict=True)]
    assert spearman(a, b).numpy() == pytest.approx(want, abs=1e-12)


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
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 14, 14, generator=g), torch.randn(3, 14, 14, generator=g)
    want = [skimage.metrics.structural_similarity(x.double().numpy(), y.double().numpy(), data_range=2.5)
            for x, y in zip(a, b, strict=True)]
    assert ssim(a, b, data_range=2.5).numpy() == pytest.approx(want, abs=1e-12)
    small = torch.rand(2, 5, 6, generator=g)  # a map smaller than the default window: the largest odd one that fits
    assert ssim_window(5, 6) == 5 and ssim_window(14, 14) == 7 and ssim_window(2, 9) == 1
    want = [skimage.metrics.structural_similarity(x.double().numpy(), (x * 0.5).double().numpy(), data_range=1.0,
                                                  win_size=5) for x in small]
    assert ssim(small, small * 0.5, data_range=1.0).numpy() == pytest.approx(want, abs=1e-12)
    assert torch.isnan(ssim(torch.rand(1, 2, 2), torch.rand(1, 2, 2))).all()


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
    import quantus

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


# --- Random Logit (Sixt et al. 2020) through Quantus ------------------------------------------------------


def class_map(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Input x gradient of the target logit, summed over colours: changes with the class."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return (grad * x).sum(dim=1)


def quantus_random_logit(method, model: nn.Module, x: Tensor, target: Tensor, seed: int = 42) -> np.ndarray:
    """quantus.RandomLogit itself, its maps at pixel resolution, each divided by its own largest |value|."""
    import quantus

    def explain(model, inputs, targets, **kwargs):
        return pixel_maps(method(model, torch.as_tensor(inputs), torch.as_tensor(targets)), x.shape[-2:])

    metric = quantus.RandomLogit(num_classes=model.num_classes, seed=seed, normalise_func_kwargs={"normalise_axes":
                                 (1, 2, 3)}, disable_warnings=True, display_progressbar=False)
    state = np.random.get_state()  # Quantus reseeds numpy's global generator
    try:
        return np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None,
                                 explain_func=explain, device="cpu", batch_size=len(x)))
    finally:
        np.random.set_state(state)


def test_other_classes_are_quantus_draw():
    target = torch.tensor([0, 3, 9, 5, 5, 2])
    rng = np.random.RandomState(7)
    draws = rng.randint(0, 9, 6)
    want = [[c for c in range(10) if c != t][d] for t, d in zip(target.tolist(), draws, strict=True)]
    assert other_classes(target, 10, seed=7).tolist() == want
    assert (other_classes(target, 10, seed=7) != target).all()


def test_random_logit_equals_quantus():
    model, x = small_vit(), images(4)
    before = snapshot(model)
    np.random.seed(123)
    state = np.random.get_state()
    got = random_logit(class_map, model, x)
    assert_untouched(model, before)
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state(), state, strict=True)), \
        "numpy's global random state changed"
    target = model(x).argmax(-1)
    want = quantus_random_logit(class_map, model, x, target)
    assert got.numpy() == pytest.approx(want, abs=1e-6)
    assert (got < 0.99).all()  # the maps do change with the class: the comparison has teeth
    given = random_logit(class_map, model, x, target, saliency=class_map(model, x, target))
    assert given.numpy() == pytest.approx(want, abs=1e-6)
    # an image's score does not depend on the other images of the batch (Quantus's default normalisation would)
    assert random_logit(class_map, model, x[:2] * torch.tensor([1.0, 50.0]).view(2, 1, 1, 1))[0].item() \
        == pytest.approx(random_logit(class_map, model, x[:1])[0].item(), abs=1e-9)


def test_random_logit_takes_maps_quantus_refuses():
    """Quantus 0.6 asserts that not every map value is negative; the metric is defined for them all the same."""
    model, x = small_vit(), images(2)

    def negative(model, x, target):
        return -1.0 - class_map(model, x, target).abs()

    with pytest.raises(AssertionError, match="less than zero"):  # when this stops raising, sanity.py can call Quantus
        quantus_random_logit(negative, model, x, model(x).argmax(-1))
    got = random_logit(negative, model, x)
    assert torch.isfinite(got).all() and (got < 1).all()


def test_a_class_agnostic_map_scores_one():
    """Rollout ignores the class: its map for another class is the same map, SSIM 1 (the worst)."""
    got = random_logit("rollout", small_t2t("transformer"), images(2))
    assert got.numpy() == pytest.approx([1.0, 1.0])


# --- CI: a reference check never skips ---------------------------------------------------------------------


def test_a_missing_reference_library_fails_under_ci(tmp_path):
    """tests/conftest.py turns 'could not import' / 'is not installed' skips (in a test or at collection) into
    failures when CI=true; other skips, and every skip outside CI, stay skips."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_make_collect_report, "
                                          "pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_refs.py").write_text(textwrap.dedent("""
        import pytest

        def test_missing_module():
            pytest.importorskip("a_library_nobody_installed")

        def test_missing_tool():
            pytest.skip("LXT is not installed (pip install --no-deps lxt)")

        def test_other_skip():
            pytest.skip("ViT has no T2T module")
    """))
    (tmp_path / "test_module_level.py").write_text("import pytest\n"
                                                   "pytest.importorskip('another_missing_library')\n"
                                                   "def test_x():\n    pass\n")
    root = Path(__file__).resolve().parents[2]

    def run(ci: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(root)}
        if ci is not None:
            env["CI"] = ci
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider",
                               "--continue-on-collection-errors", "--rootdir",
                               str(tmp_path), str(tmp_path)], env=env, capture_output=True, text=True, cwd=tmp_path)
        return done.stdout

    out = run("true")
    summary = out.strip().splitlines()[-1]
    assert "2 failed" in summary and "1 skipped" in summary and "1 error" in summary, out
    assert out.count("skipped for a missing library under CI=true") >= 3, out  # both tests and the module
    summary = run(None).strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary and "4 skipped" in summary, summary
    summary = run("false").strip().splitlines()[-1]
    assert "4 skipped" in summary, summary


def test_given_original_maps_are_used_not_recomputed():
    model, x = small_vit(), images(2)
    calls = []

    def counted(m, imgs, target):
        calls.append(m is model)
        return input_gradient(m, imgs, target)

    target = model(x).argmax(-1)
    full = cascading_randomization(counted, model, x, target)
    n = len(calls)
    calls.clear()
    reused = cascading_randomization(counted, model, x, target, original=input_gradient(model, x, target))
    assert len(calls) == n - 1 and not any(calls)  # every run on a randomised copy, none on the intact model
    torch.testing.assert_close(reused.spearman, full.spearman)
