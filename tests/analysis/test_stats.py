import math

import numpy as np
import pytest

from analysis.stats import bootstrap_mean, mcnemar_exact, wilson_interval


def test_bootstrap_mean_of_a_constant_is_that_constant_with_no_width():
    mean, lo, hi = bootstrap_mean(np.full(20, 0.3))
    assert mean == lo == hi == pytest.approx(0.3)


def test_bootstrap_interval_matches_the_normal_approximation_for_many_samples():
    values = np.random.default_rng(1).normal(2.0, 1.0, 400)
    mean, lo, hi = bootstrap_mean(values, n_boot=4000, rng=0)
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))   # the CLT's 95% half-width
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    lo90, hi90 = bootstrap_mean(values, n_boot=4000, level=0.9, rng=0)[1:]
    assert lo < lo90 < hi90 < hi


def test_bootstrap_keeps_columns_apart_and_resamples_rows_together():
    values = np.random.default_rng(2).random((30, 3))
    mean, lo, hi = bootstrap_mean(values, rng=5)
    assert mean.shape == lo.shape == hi.shape == (3,)
    for j in range(3):  # the same seed draws the same rows: each column alone gives the same numbers
        assert np.allclose([mean[j], lo[j], hi[j]], bootstrap_mean(values[:, j], rng=5))


def test_bootstrap_generator_draws_on_seed_repeats():
    values = np.arange(10.0)
    assert bootstrap_mean(values, rng=3) == bootstrap_mean(values, rng=3)
    gen = np.random.default_rng(3)
    first, second = bootstrap_mean(values, rng=gen), bootstrap_mean(values, rng=gen)
    assert first != second  # a shared generator moves on


@pytest.mark.parametrize("kwargs", [{"values": []}, {"values": 1.0}, {"values": [1.0], "n_boot": 0},
                                    {"values": [1.0], "level": 1.0}])
def test_bootstrap_bad_input(kwargs):
    with pytest.raises(ValueError):
        bootstrap_mean(**kwargs)


def test_wilson_interval_properties():
    z = 1.96
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(z * z / (10 + z * z))     # the closed form at k = 0
    for k, n in [(3, 10), (81, 263), (9711, 10000)]:
        lo, hi = wilson_interval(k, n)
        assert 0 <= lo < k / n < hi <= 1
        mirror = wilson_interval(n - k, n)
        assert (lo, hi) == pytest.approx((1 - mirror[1], 1 - mirror[0]))   # symmetric in success / failure
        # the interval is the set of p whose score test does not reject: its ends solve |p_hat - p| = z se(p)
        for p in (lo, hi):
            assert abs(k / n - p) == pytest.approx(z * math.sqrt(p * (1 - p) / n))
    with pytest.raises(ValueError):
        wilson_interval(5, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_is_the_two_sided_binomial_test_of_the_discordant_pairs():
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)
    assert mcnemar_exact(10, 0) == mcnemar_exact(0, 10)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    b, c = 33, 5
    m = b + c
    pmf = [math.comb(m, i) / 2**m for i in range(m + 1)]
    # two-sided: every outcome no more likely than the observed one (symmetric null, so both tails)
    assert mcnemar_exact(b, c) == pytest.approx(sum(q for q in pmf if q <= pmf[c] * (1 + 1e-12)))
    assert mcnemar_exact(20, 18) > mcnemar_exact(30, 8) > mcnemar_exact(36, 2)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)
