"""Ranking metrics and session-level bootstrap intervals, as small pure numpy functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "bootstrap_ci",
    "bootstrap_distribution",
    "hits_at_k",
    "paired_bootstrap_diff",
    "reciprocal_ranks_at_k",
]

FloatArray = npt.NDArray[np.float64]
Ranks = Sequence[int | None] | npt.NDArray[np.integer]


def _as_ranks(ranks: Ranks) -> npt.NDArray[np.int64]:
    # None and 0 both mean "not ranked"; a plain int array keeps the rest vectorised.
    values = np.asarray([0 if r is None else r for r in ranks], dtype=np.int64)
    if values.size and values.min() < 0:
        raise ValueError("ranks are 1-based; use None or 0 for an unranked target")
    return values


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def hits_at_k(ranks: Ranks, k: int) -> FloatArray:
    """Per-point hit indicator: ``hit_i = 1 if 1 <= rank_i <= k else 0``.

    Args:
        ranks: 1-based rank of each point's target; None or 0 when it was not ranked.
        k: Cut-off.

    Returns:
        Float array ``[n_points]`` of 0/1.
    """
    _check_k(k)
    r = _as_ranks(ranks)
    return ((r >= 1) & (r <= k)).astype(np.float64)


def reciprocal_ranks_at_k(ranks: Ranks, k: int) -> FloatArray:
    """Per-point reciprocal rank: ``rr_i = 1 / rank_i if 1 <= rank_i <= k else 0``.

    Args:
        ranks: 1-based rank of each point's target; None or 0 when it was not ranked.
        k: Cut-off.

    Returns:
        Float array ``[n_points]``.
    """
    _check_k(k)
    r = _as_ranks(ranks)
    inside = (r >= 1) & (r <= k)
    out = np.zeros(r.shape, dtype=np.float64)
    out[inside] = 1.0 / r[inside]
    return out


def bootstrap_distribution(
    values: npt.ArrayLike,
    groups: npt.ArrayLike,
    n_resamples: int = 1000,
    seed: int = 0,
) -> FloatArray:
    """Bootstrap distribution of a point mean, resampling whole groups with replacement.

    Points of one test session are correlated, so the resampling unit is the session: each
    replicate draws G of the G groups with replacement (multiplicities ``w_g``) and computes
    ``sum_g w_g * S_g / sum_g w_g * n_g`` with ``S_g`` the sum and ``n_g`` the number of the
    group's values, i.e. the mean over the points of the drawn sessions.

    Args:
        values: Per-point values ``[n_points]``.
        groups: Per-point group label ``[n_points]`` (any hashable, e.g. session index).
        n_resamples: Number of replicates R.
        seed: Seed of the numpy generator; equal seeds and groups give equal draws, which is
            what makes the paired bootstrap paired.

    Returns:
        Float array ``[R]`` of replicate means.
    """
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups)
    if v.shape != g.shape or v.ndim != 1:
        raise ValueError(
            f"values and groups must be 1-d and equally long, got {v.shape}, {g.shape}"
        )
    if v.size == 0:
        return np.full(n_resamples, np.nan)
    _, inverse = np.unique(g, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    sums = np.bincount(inverse, weights=v, minlength=n_groups)  # [G]
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)  # [G]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))  # [R, G]
    # Every group has >= 1 point, so the drawn point count is never 0.
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # [R]


def bootstrap_ci(
    values: npt.ArrayLike,
    groups: npt.ArrayLike,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Mean over points with a percentile bootstrap interval over groups.

    ``mean = sum_i v_i / n``; ``(lo, hi)`` are the ``alpha/2`` and ``1 - alpha/2`` quantiles
    (numpy's linear interpolation) of `bootstrap_distribution`.

    Args:
        values: Per-point values ``[n_points]``.
        groups: Per-point group label ``[n_points]``; whole groups are resampled.
        n_resamples: Number of bootstrap replicates.
        seed: Seed of the resampling.
        alpha: 1 - coverage of the interval (0.05 gives a 95 % interval).

    Returns:
        ``(mean, lo, hi)``; all NaN when there are no points.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = np.asarray(values, dtype=np.float64)
    stats = bootstrap_distribution(v, groups, n_resamples=n_resamples, seed=seed)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(v.mean()), float(lo), float(hi)


def paired_bootstrap_diff(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    groups: npt.ArrayLike,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` on the same points, with a paired group bootstrap interval.

    ``d_i = a_i - b_i``; the result is `bootstrap_ci` of ``d``, so both methods are measured
    on the same resampled sessions in every replicate and their shared variance cancels.

    Args:
        a: Per-point values of the first method ``[n_points]``.
        b: Per-point values of the second method on the same points ``[n_points]``.
        groups: Per-point group label ``[n_points]``.
        n_resamples: Number of bootstrap replicates.
        seed: Seed of the resampling.
        alpha: 1 - coverage of the interval.

    Returns:
        ``(mean_diff, lo, hi)``.
    """
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape:
        raise ValueError(f"a and b must cover the same points, got {va.shape} and {vb.shape}")
    return bootstrap_ci(va - vb, groups, n_resamples=n_resamples, seed=seed, alpha=alpha)
