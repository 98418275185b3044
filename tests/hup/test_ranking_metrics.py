from __future__ import annotations

import math

import numpy as np
import pytest

from hup.ranking_metrics import (
    bootstrap_ci,
    bootstrap_distribution,
    hits_at_k,
    paired_bootstrap_diff,
    reciprocal_ranks_at_k,
)

RANKS = [1, 3, None, 0, 25, 2]


def test_per_point_arrays_by_hand() -> None:
    np.testing.assert_array_equal(hits_at_k(RANKS, 20), [1, 1, 0, 0, 0, 1])
    np.testing.assert_allclose(reciprocal_ranks_at_k(RANKS, 20), [1, 1 / 3, 0, 0, 0, 1 / 2])
    np.testing.assert_array_equal(hits_at_k(RANKS, 2), [1, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(reciprocal_ranks_at_k(RANKS, 2), [1, 0, 0, 0, 0, 1 / 2])


def test_recall_and_mrr_by_hand() -> None:
    # Recall@k and MRR@k are the means of the per-point arrays.
    # @20: hits 1,1,0,0,0,1 -> 3/6; rr 1 + 1/3 + 1/2 = 11/6 over 6 points -> 11/36.
    assert hits_at_k(RANKS, 20).mean() == pytest.approx(0.5)
    assert reciprocal_ranks_at_k(RANKS, 20).mean() == pytest.approx(11 / 36)
    # @2: rank 3 and 25 fall out -> 2/6 and (1 + 1/2)/6.
    assert hits_at_k(RANKS, 2).mean() == pytest.approx(1 / 3)
    assert reciprocal_ranks_at_k(RANKS, 2).mean() == pytest.approx(0.25)
    assert hits_at_k(np.array([1, 0]), 1).mean() == pytest.approx(0.5)


def test_metric_edge_cases() -> None:
    assert hits_at_k([], 20).size == 0
    assert reciprocal_ranks_at_k([], 20).size == 0
    with pytest.raises(ValueError, match="k must be"):
        hits_at_k([1], 0)
    with pytest.raises(ValueError, match="1-based"):
        reciprocal_ranks_at_k([-1], 5)


def test_bootstrap_resamples_whole_groups() -> None:
    # Group a: four hits, group b: one miss. A replicate draws two groups with replacement:
    # {a,a} -> 8/8 = 1, {a,b} -> 4/5 = 0.8, {b,b} -> 0/2 = 0 with probabilities 1/4, 1/2, 1/4.
    values = [1, 1, 1, 1, 0]
    groups = ["a", "a", "a", "a", "b"]
    stats = bootstrap_distribution(values, groups, n_resamples=4000, seed=1)
    assert set(np.round(stats, 12)) == {0.0, 0.8, 1.0}
    assert np.mean(stats == 0.8) == pytest.approx(0.5, abs=0.03)
    mean, lo, hi = bootstrap_ci(values, groups, n_resamples=4000, seed=1)
    # Point mean 4/5; 2.5 % and 97.5 % quantiles land in the 0 and 1 masses.
    assert (mean, lo, hi) == pytest.approx((0.8, 0.0, 1.0))


def test_bootstrap_ratio_of_group_sums() -> None:
    # Group 0: [1, 0], group 1: [1] -> replicates {0,0}: 2/4, {0,1}: 2/3, {1,1}: 2/2.
    stats = bootstrap_distribution([1, 0, 1], [0, 0, 1], n_resamples=500, seed=3)
    assert set(np.round(stats, 12)) == {0.5, round(2 / 3, 12), 1.0}


def test_bootstrap_degenerate_and_deterministic() -> None:
    assert bootstrap_ci([0.25, 0.75], [7, 7]) == pytest.approx((0.5, 0.5, 0.5))
    assert bootstrap_ci([1, 0, 1, 0], [0, 1, 2, 3], seed=5) == bootstrap_ci(
        [1, 0, 1, 0], [0, 1, 2, 3], seed=5
    )
    assert all(math.isnan(x) for x in bootstrap_ci([], []))
    with pytest.raises(ValueError, match="equally long"):
        bootstrap_ci([1, 0], [0])


def test_paired_bootstrap_diff_by_hand() -> None:
    # d = a - b = [1, 0, 0]; group 0 sums 1 over 2 points, group 1 sums 0 over 1 point.
    # Replicates: {0,0}: 2/4, {0,1}: 1/3, {1,1}: 0; the point mean is 1/3.
    a, b, groups = [1, 0, 1], [0, 0, 1], [0, 0, 1]
    mean, lo, hi = paired_bootstrap_diff(a, b, groups, n_resamples=4000, seed=0)
    assert (mean, lo, hi) == pytest.approx((1 / 3, 0.0, 0.5))
    # A constant shift has no spread at all: pairing cancels the shared per-session variance.
    base = [0.1, 0.9, 0.4, 0.0]
    shifted = [x + 0.5 for x in base]
    assert paired_bootstrap_diff(shifted, base, [0, 1, 2, 3]) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="same points"):
        paired_bootstrap_diff([1], [1, 0], [0])
