"""Small-sample statistics for comparing two models on the same images.

- `bootstrap_mean`: mean over samples and its percentile-bootstrap interval (Efron & Tibshirani 1993,
  the percentile method), columns kept apart.
- `wilson_interval`: the Wilson score interval of a proportion (Wilson 1927), e.g. an accuracy.
- `mcnemar_exact`: McNemar's exact (binomial) test of two classifiers on paired images.

Inputs are numbers or arrays; nothing here knows about models.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def bootstrap_mean(
    values: ArrayLike, n_boot: int = 2000, level: float = 0.95, rng: np.random.Generator | int | None = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 and its percentile-bootstrap interval.

    values: (N, ...) one row per sample (an image); every other axis (e.g. depth) is kept, and the same
    resampled rows are used for all of them. Returns (mean, lo, hi), each of shape values.shape[1:]
    (0-d for a vector). `rng`: a Generator (drawn from, so successive calls differ) or a seed.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError(f"bootstrap_mean needs at least one sample along axis 0, got shape {values.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    idx = rng.integers(0, len(values), (n_boot, len(values)))     # (n_boot, N) resampled rows
    means = values[idx].mean(axis=1)                               # (n_boot, ...)
    tail = 100 * (1 - level) / 2
    return values.mean(axis=0), np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the proportion k / n (z = 1.96: 95%); always inside [0, 1]."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test.

    only_a / only_b: the paired samples that only classifier A / only B gets right (the discordant
    pairs; the concordant ones carry no information). Under the null each discordant pair is a fair
    coin, so this is the two-sided binomial test of min(only_a, only_b) in only_a + only_b flips.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a}, {only_b}")
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**m)  # exact integers until the one division
