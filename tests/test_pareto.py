import re

import moocore
import numpy as np
import pytest

from moft.metrics.pareto import (
    bootstrap_indices,
    check_simplex,
    confidence_interval,
    hypervolume,
    hypervolume_samples,
    non_dominated,
    paired_probability,
    resample_means,
    spearman,
    steerability,
    weight_grid,
)

STAIRCASE = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])


def test_non_dominated_hand_case():
    points = np.array([[1.0, 3.0], [2.0, 2.0], [1.0, 1.0], [2.0, 2.0], [0.5, 3.0]])
    assert non_dominated(points, "max").tolist() == [True, True, False, True, False]
    assert non_dominated(points, "min").tolist() == [False, False, True, False, True]


def test_hypervolume_hand_computed_2d():
    assert hypervolume(STAIRCASE, [0.0, 0.0], "max") == pytest.approx(6.0)


def test_hypervolume_agrees_with_moocore_in_3d():
    points = np.random.default_rng(0).uniform(0.0, 1.0, size=(40, 3))
    reference = np.array([1.1, 1.1, 1.1])
    expected = moocore.hypervolume(points, ref=reference)
    assert hypervolume(points, reference, "min") == pytest.approx(expected, rel=1e-12)


def test_dominated_points_do_not_change_hypervolume():
    with_dominated = np.vstack([STAIRCASE, [[1.0, 1.0], [0.5, 2.5]]])
    assert hypervolume(with_dominated, [0.0, 0.0], "max") == pytest.approx(6.0)


def test_points_beyond_the_reference_add_nothing():
    beyond = np.vstack([STAIRCASE, [[5.0, -1.0], [-2.0, -2.0]]])
    assert hypervolume(beyond, [0.0, 0.0], "max") == pytest.approx(6.0)
    assert hypervolume(np.array([[-1.0, 5.0]]), [0.0, 0.0], "max") == 0.0
    assert hypervolume(np.empty((0, 2)), [0.0, 0.0], "max") == 0.0


def test_min_direction_mirrors_max():
    losses = 4.0 - STAIRCASE  # (3,1), (2,2), (1,3) as losses below the reference (4, 4)
    assert hypervolume(losses, [4.0, 4.0], "min") == pytest.approx(6.0)
    assert hypervolume(losses, [4.0, 4.0], "max") == 0.0


@pytest.mark.parametrize(
    ("points", "reference", "direction", "message"),
    [
        (STAIRCASE, [0.0, 0.0, 0.0], "max", "reference_point must have one value per objective"),
        (STAIRCASE[0], [0.0, 0.0], "max", "points must be a"),
        (STAIRCASE, [0.0, 0.0], "maximise", "direction must be 'max' or 'min'"),
        ([[np.nan, 1.0]], [0.0, 0.0], "max", "points must be finite"),
    ],
)
def test_hypervolume_bad_input_is_named(points, reference, direction, message):
    with pytest.raises(ValueError, match=message):
        hypervolume(np.asarray(points), reference, direction)


def test_bootstrap_indices_are_seeded():
    first = bootstrap_indices(20, 50, seed=3)
    assert first.shape == (50, 20)
    assert np.array_equal(first, bootstrap_indices(20, 50, seed=3))
    assert not np.array_equal(first, bootstrap_indices(20, 50, seed=4))
    assert first.min() >= 0 and first.max() < 20


def test_resample_means_ignore_nan_groups():
    per_group = np.array([[[1.0], [np.nan], [3.0]]])  # (P=1, G=3, m=1)
    indices = np.array([[0, 0, 2], [1, 1, 1], [1, 2, 2]])
    means = resample_means(per_group, indices)[:, 0, 0]
    assert means[0] == pytest.approx(5.0 / 3.0)
    assert np.isnan(means[1])
    assert means[2] == pytest.approx(3.0)


def front_per_group(rng, shift, n_groups=200):
    """(P, G, 2) noisy per-group metrics of the staircase front, scaled down and shifted."""
    noise = rng.normal(0.0, 0.05, size=(len(STAIRCASE), n_groups, 2))
    return STAIRCASE[:, None, :] / 4.0 + shift + noise


def test_confidence_interval_contains_the_full_data_hypervolume():
    rng = np.random.default_rng(0)
    per_group = front_per_group(rng, shift=0.0)
    full = hypervolume(per_group.mean(axis=1), [0.0, 0.0], "max")

    samples = hypervolume_samples(per_group, bootstrap_indices(200, 300, seed=0), [0.0, 0.0], "max")
    low, high = confidence_interval(samples)

    assert samples.shape == (300,)
    assert low < full < high
    assert high - low < 0.1 * full


def test_paired_probability_sees_a_dominating_front():
    rng = np.random.default_rng(1)
    worse = front_per_group(rng, shift=0.0)
    better = worse + 0.1  # better on every group and every objective
    indices = bootstrap_indices(200, 100, seed=0)
    hv_better = hypervolume_samples(better, indices, [0.0, 0.0], "max")
    hv_worse = hypervolume_samples(worse, indices, [0.0, 0.0], "max")

    assert paired_probability(hv_better, hv_worse) == 1.0
    assert paired_probability(hv_worse, hv_better) == 0.0
    assert paired_probability(hv_worse, hv_worse) == 0.5


def test_steerability_signs():
    weights = weight_grid(2)
    rising = np.stack([np.linspace(0.1, 0.5, 11), np.linspace(0.5, 0.1, 11)], axis=1)

    assert steerability(weights, rising, "max") == pytest.approx([1.0, 1.0])
    assert steerability(weights, rising[::-1], "max") == pytest.approx([-1.0, -1.0])
    assert steerability(weights, rising[::-1], "min") == pytest.approx([1.0, 1.0])


def test_steerability_of_a_constant_metric_is_zero_without_warnings(recwarn):
    flat = np.stack([np.full(11, 0.3), np.linspace(0.5, 0.1, 11)], axis=1)
    flat[3, 1] = np.nan
    assert steerability(weight_grid(2), flat, "max") == pytest.approx([0.0, 1.0])
    assert len(recwarn) == 0


def test_weight_grid_two_objectives_exact():
    grid = weight_grid(2)
    assert grid.tolist() == [[k / 10, (10 - k) / 10] for k in range(11)]
    assert weight_grid(2, n_points=3).tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]


def test_weight_grid_three_objectives():
    grid = weight_grid(3, n_points=11, seed=0)
    assert grid.shape == (11, 3)
    assert np.array_equal(grid[:3], np.eye(3))
    assert np.allclose(grid[3], 1 / 3)
    assert np.allclose(grid.sum(axis=1), 1.0) and (grid >= 0).all()
    assert np.array_equal(grid, weight_grid(3, n_points=11, seed=0))
    assert not np.array_equal(grid, weight_grid(3, n_points=11, seed=1))


@pytest.mark.parametrize(("m", "n_points"), [(1, 11), (3, 3), (2, 1)])
def test_weight_grid_rejects_too_small_grids(m, n_points):
    with pytest.raises(ValueError, match="must be"):
        weight_grid(m, n_points)


def test_check_simplex_accepts_and_rejects():
    assert check_simplex([0.3, 0.7]).tolist() == [0.3, 0.7]
    expected = "weights [0.3, 0.6] must lie on the simplex: entries >= 0 that sum to 1 (sum is 0.9)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_simplex([0.3, 0.6])
    with pytest.raises(ValueError, match=r"w \[-0.5, 1.5\] must lie on the simplex"):
        check_simplex([-0.5, 1.5], name="w")
    with pytest.raises(ValueError, match="must be finite"):
        check_simplex([np.nan, 1.0])
    with pytest.raises(ValueError, match=r"one entry per objective \(3\)"):
        check_simplex([0.5, 0.5], size=3)
    with pytest.raises(ValueError, match="1-D vector"):
        check_simplex([[0.5, 0.5]])


def test_spread_is_zero_for_a_collapsed_front_and_the_mean_distance_to_the_centroid():
    from moft.metrics.pareto import spread

    assert spread(np.array([[0.3, 0.4]] * 5)) == 0.0
    assert spread(np.array([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    square = np.array([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 2.0]])
    assert spread(square) == pytest.approx(np.sqrt(2.0))
    with pytest.raises(ValueError, match="non-empty"):
        spread(np.zeros((0, 2)))


def test_trade_off_share_counts_mutually_non_dominated_sample_pairs():
    from moft.metrics.pareto import trade_off_share

    # prompt 0: samples (1, 0), (0, 1), (2, 2): pairs 01 trade off, 02 and 12 are dominated -> 1 of 3
    # prompt 1: (0, 0), (1, 1), (1, 1): no pair trades off (a tie on both is not a trade-off)
    rewards = np.array([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]])
    assert trade_off_share(rewards) == pytest.approx(1 / 6)
    assert trade_off_share(rewards[:1]) == pytest.approx(1 / 3)
    # perfectly anti-correlated objectives: every pair of distinct samples trades off
    assert trade_off_share(np.array([[[0.0, 3.0], [1.0, 2.0], [2.0, 1.0]]])) == 1.0
    # one sample per prompt has no pair
    assert trade_off_share(np.zeros((4, 1, 2))) == 0.0
    with pytest.raises(ValueError, match=r"\(n, k, m\)"):
        trade_off_share(np.zeros((3, 2)))


def test_spearman_matches_scipy_and_skips_non_finite_pairs():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=40), rng.normal(size=40)
    y[:10] = x[:10]  # some agreement, and ties below
    x[20:25] = 1.0
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    x[0], y[1] = np.nan, np.inf
    assert spearman(x, y) == pytest.approx(spearmanr(x[2:], y[2:]).statistic, abs=1e-12)
    assert spearman(np.ones(5), np.arange(5.0)) == 0.0  # constant: no correlation, not nan
    assert spearman(np.array([1.0, np.nan]), np.array([2.0, 3.0])) == 0.0  # fewer than two finite pairs
