import numpy as np
import pytest
import torch

from analysis.cka import (
    accumulate,
    cka_from_state,
    cka_matrix,
    hsic1_matrix,
    linear_cka,
    minibatch_cka,
    unbiased_cka,
)


def _related(n=300, p=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(p, 7, generator=g, dtype=torch.float64)) + 0.5 * torch.randn(
        n, 7, generator=g, dtype=torch.float64
    )
    return x, y


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = _related()
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert unbiased_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_feature_space_and_gram_forms_agree():
    x, y = _related(n=40)
    from analysis.cka import cka_from_grams, gram_linear

    via_grams = cka_from_grams(gram_linear(x)[None], gram_linear(y)[None])[0, 0]
    assert linear_cka(x, y).item() == pytest.approx(via_grams.item(), abs=1e-12)  # p < n: feature form
    wide = torch.randn(40, 100, dtype=torch.float64)
    assert linear_cka(wide, y).item() == pytest.approx(
        cka_from_grams(gram_linear(wide)[None], gram_linear(y)[None])[0, 0].item(), abs=1e-12
    )


def test_cka_invariances():
    x, y = _related()
    base = linear_cka(x, y).item()
    assert 0.1 < base < 0.9  # a case where invariance is not trivially 0 or 1
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert linear_cka(x @ q, y).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y).item() == pytest.approx(base, abs=1e-10)
    assert unbiased_cka(x @ q * 5, y).item() == pytest.approx(unbiased_cka(x, y).item(), abs=1e-10)
    # ... but not to anisotropic scaling: the invariance tests above can fail
    d = torch.linspace(0.1, 10, 12, dtype=torch.float64)
    assert abs(linear_cka(x * d, y).item() - base) > 0.01


def test_cka_by_hand_on_tiny_case():
    # centred x = [-1, 0, 1], y = [-1, 2, -1] (orthogonal to x): CKA 0; y = x^2 shifted is the same
    x = torch.tensor([[0.0], [1.0], [2.0]])
    assert linear_cka(x, torch.tensor([[0.0], [3.0], [0.0]])).item() == pytest.approx(0.0, abs=1e-12)
    # 1-d features: CKA = corr^2; x and [0, 1, 3] have centred [-1, 0, 1], [-4/3, -1/3, 5/3]
    # corr = (4/3 + 5/3) / (sqrt(2) sqrt(42/9)) = 3 / sqrt(84/9) -> corr^2 = 81/84
    assert linear_cka(x, torch.tensor([[0.0], [1.0], [3.0]])).item() == pytest.approx(81 / 84)


def test_cka_of_independent_features_is_near_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g, dtype=torch.float64)
    y = torch.randn(3000, 8, generator=g, dtype=torch.float64)
    assert linear_cka(x, y).item() < 0.02
    batches = [([x[i : i + 100]], [y[i : i + 100]]) for i in range(0, 3000, 100)]
    assert abs(minibatch_cka(batches).item()) < 0.02


def test_hsic1_matches_the_formula_written_with_matrices():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(9, 4, generator=g, dtype=torch.float64)
    m = torch.randn(9, 6, generator=g, dtype=torch.float64)
    K, L = (k @ k.T).numpy(), (m @ m.T).numpy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    n, one = 9, np.ones(9)
    expected = (
        np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ K @ L @ one
    ) / (n * (n - 3))
    got = hsic1_matrix((k @ k.T)[None], (m @ m.T)[None])[0, 0].item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_minibatch_cka_approaches_full_batch_on_large_data():
    x, y = _related(n=6000, seed=3)
    full = linear_cka(x, y).item()
    mb = minibatch_cka([([x[i : i + 250]], [y[i : i + 250]]) for i in range(0, 6000, 250)]).item()
    assert mb == pytest.approx(full, abs=0.02)
    # one batch of minibatch CKA is the unbiased estimator on that batch
    assert cka_from_state(accumulate(None, [x[:50]], [y[:50]]))[0, 0].item() == pytest.approx(
        unbiased_cka(x[:50], y[:50]).item(), abs=1e-12
    )


def test_cka_matrix_between_block_lists():
    x, y = _related()
    z = torch.randn(300, 3, 5, dtype=torch.float64)  # (n, ...) features are flattened
    m = cka_matrix([x, y, z], [y, x])
    assert m.shape == (3, 2)
    assert m[0, 1].item() == pytest.approx(1.0) and m[1, 0].item() == pytest.approx(1.0)
    assert m[0, 0].item() == pytest.approx(linear_cka(x, y).item())
    assert m[2, 1].item() == pytest.approx(linear_cka(z.flatten(1), x).item())
    mb = minibatch_cka([([x[:150], y[:150]], [y[:150]]), ([x[150:], y[150:]], [y[150:]])])
    assert mb.shape == (2, 1) and mb[1, 0].item() == pytest.approx(1.0)
