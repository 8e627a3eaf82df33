"""Pareto-front metrics: dominance, hypervolume, bootstrap over groups, steerability, weight grids.

Points are (P, m) arrays, one row per trade-off point and one column per objective. `direction`
says whether every objective is maximised ("max", e.g. NDCG) or minimised ("min", e.g. preference
cross-entropy). Hypervolume always comes out larger-is-better, whatever the direction.
"""

from __future__ import annotations

from typing import Literal

import moocore
import numpy as np
from scipy.stats import rankdata

Direction = Literal["max", "min"]

SIMPLEX_TOLERANCE = 1e-6


def _maximise(direction: str) -> bool:
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    return direction == "max"


def _as_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    """Return `points` as a finite float64 (P, m) array."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 1:
        raise ValueError(f"{name} must be a (points, objectives) array, got shape {points.shape}")
    if not np.isfinite(points).all():
        n_bad = np.count_nonzero(~np.isfinite(points))
        raise ValueError(f"{name} must be finite, got {n_bad} NaN/inf entries")
    return points


def non_dominated(points: np.ndarray, direction: Direction) -> np.ndarray:
    """Mask of the points no other point dominates.

    Args:
        points: (P, m) objective values.
        direction: "max" or "min" for every objective.

    Returns:
        (P,) bool, True for non-dominated points. Duplicates of a non-dominated point are all kept.
    """
    maximise = _maximise(direction)
    points = _as_points(points)
    return np.asarray(moocore.is_nondominated(points, maximise=maximise, keep_weakly=True), bool)


def hypervolume(points: np.ndarray, reference_point: np.ndarray, direction: Direction) -> float:
    """Hypervolume dominated by `points` and bounded by a fixed reference point (via moocore).

    Args:
        points: (P, m) objective values; P may be 0.
        reference_point: (m,) the worst corner: below every useful point for "max", above for "min".
        direction: "max" or "min" for every objective.

    Returns:
        The hypervolume (>= 0). Points not strictly better than the reference on every axis add
        nothing; with none left the hypervolume is 0.0.
    """
    maximise = _maximise(direction)
    points = _as_points(points)
    reference = np.asarray(reference_point, dtype=np.float64)
    if reference.shape != (points.shape[1],):
        raise ValueError(
            f"reference_point must have one value per objective ({points.shape[1]}), "
            f"got shape {reference.shape}"
        )
    if not np.isfinite(reference).all():
        raise ValueError(f"reference_point must be finite, got {reference.tolist()}")
    better = points > reference if maximise else points < reference
    useful = points[better.all(axis=1)]
    if len(useful) == 0:
        return 0.0
    return float(moocore.hypervolume(useful, ref=reference, maximise=maximise))


def bootstrap_indices(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """Group indices of `n_resamples` bootstrap resamples, drawn with replacement.

    Returns:
        (B, n_groups) int64 indices into the groups. Share them across methods for paired results.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_groups, size=(n_resamples, n_groups), dtype=np.int64)


def resample_means(per_group: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean of each point's per-group metrics over each resample, ignoring NaN groups.

    Args:
        per_group: (P, G, m) per-group metric values, NaN where a group has no signal.
        indices: (B, n) group indices of each resample, values in [0, G).

    Returns:
        (B, P, m) means; NaN where no group of the resample carries signal.
    """
    per_group = np.asarray(per_group, dtype=np.float64)
    indices = np.asarray(indices)
    if per_group.ndim != 3:
        raise ValueError(
            f"per_group must be a (points, groups, objectives) array, got shape {per_group.shape}"
        )
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"indices must be a (resamples, groups) integer array, got {indices.dtype} "
            f"{indices.shape}"
        )
    n_groups = per_group.shape[1]
    if indices.size and (indices.min() < 0 or indices.max() >= n_groups):
        raise ValueError(f"indices must lie in [0, {n_groups}) to index per_group's groups")

    # How many times each resample draws each group: a weighted mean replaces the copy per resample.
    n_resamples = indices.shape[0]
    offsets = n_groups * np.arange(n_resamples)[:, None]
    counts = np.bincount((indices + offsets).ravel(), minlength=n_resamples * n_groups)
    counts = counts.reshape(n_resamples, n_groups).astype(np.float64)  # (B, G)

    has_signal = ~np.isnan(per_group)  # (P, G, m)
    totals = np.einsum("bg,pgm->bpm", counts, np.where(has_signal, per_group, 0.0))
    weights = np.einsum("bg,pgm->bpm", counts, has_signal.astype(np.float64))
    means = np.full(totals.shape, np.nan)
    np.divide(totals, weights, out=means, where=weights > 0)
    return means


def hypervolume_samples(
    per_group: np.ndarray,
    indices: np.ndarray,
    reference_point: np.ndarray,
    direction: Direction,
) -> np.ndarray:
    """Bootstrap distribution of one method's hypervolume.

    Args:
        per_group: (P, G, m) per-group metric of each grid point, NaN where a group has no signal.
        indices: (B, n) resampled group indices (`bootstrap_indices`); the same for every method.
        reference_point: (m,) fixed reference point.
        direction: "max" or "min" for every objective.

    Returns:
        (B,) hypervolume of the P mean points of each resample. A point whose mean is undefined in
        a resample (no resampled group has signal for some objective) adds nothing to that one.
    """
    means = resample_means(per_group, indices)  # (B, P, m)
    measured = ~np.isnan(means).any(axis=2)  # (B, P)
    return np.array(
        [
            hypervolume(points[keep], reference_point, direction)
            for points, keep in zip(means, measured)
        ]
    )


def confidence_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples: the central `level` mass of (B,) samples."""
    samples = np.asarray(samples, dtype=np.float64)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if samples.ndim != 1 or samples.size == 0 or not np.isfinite(samples).all():
        raise ValueError(
            f"samples must be a non-empty finite (resamples,) vector, got shape {samples.shape}"
        )
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_probability(samples_a: np.ndarray, samples_b: np.ndarray) -> float:
    """Fraction of paired resamples in which a beats b (ties count one half).

    Both are (B,) samples from the same resample indices, larger is better (as for hypervolume).
    """
    samples_a = np.asarray(samples_a, dtype=np.float64)
    samples_b = np.asarray(samples_b, dtype=np.float64)
    if samples_a.ndim != 1 or samples_a.shape != samples_b.shape or samples_a.size == 0:
        raise ValueError(
            f"samples_a and samples_b must be non-empty (resamples,) vectors of one length, got "
            f"{samples_a.shape} and {samples_b.shape}"
        )
    return float(np.mean(samples_a > samples_b) + 0.5 * np.mean(samples_a == samples_b))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation of two (n,) vectors over their finite pairs; 0.0 if one is constant."""
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 2:
        return 0.0
    x_ranks, y_ranks = rankdata(x[finite]), rankdata(y[finite])
    x_ranks, y_ranks = x_ranks - x_ranks.mean(), y_ranks - y_ranks.mean()
    scale = np.sqrt((x_ranks**2).sum() * (y_ranks**2).sum())
    return float((x_ranks * y_ranks).sum() / scale) if scale > 0 else 0.0


def steerability(weights: np.ndarray, metrics: np.ndarray, direction: Direction) -> list[float]:
    """Per objective, the Spearman correlation between its weight and its metric over the grid.

    Args:
        weights: (P, m) grid of trade-off weights.
        metrics: (P, m) metric of each objective at each grid point; NaN entries are skipped.
        direction: "max" or "min"; for "min" metrics are negated, so +1 always means the weight
            steers its objective the right way and -1 the wrong way.

    Returns:
        m correlations in [-1, 1]; 0.0 where weights or metrics do not vary (or fewer than two
        points are measured), meaning no evidence of steering.
    """
    sign = 1.0 if _maximise(direction) else -1.0
    weights = np.asarray(weights, dtype=np.float64)
    metrics = np.asarray(metrics, dtype=np.float64)
    if weights.ndim != 2 or metrics.shape != weights.shape:
        raise ValueError(
            f"weights and metrics must be (points, objectives) arrays of one shape, got "
            f"{weights.shape} and {metrics.shape}"
        )
    return [spearman(weights[:, j], sign * metrics[:, j]) for j in range(weights.shape[1])]


def weight_grid(m: int, n_points: int = 11, seed: int = 0) -> np.ndarray:
    """The trade-off weights every method is evaluated at.

    m = 2: n_points evenly spaced, first weight ascending from 0 to 1 (for 11 points exactly
    (k/10, 1 - k/10)). m > 2: the m vertices, the centroid, then seeded Dir(1) samples.

    Returns:
        (n_points, m) float64 weights, each row on the simplex.
    """
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise ValueError(f"m (number of objectives) must be an integer >= 2, got {m!r}")
    if m == 2:
        if n_points < 2:
            raise ValueError(f"n_points must be >= 2 for m = 2, got {n_points}")
        # Rounding turns 1 - 0.7 = 0.30000000000000004 back into 0.3.
        first = np.round(np.linspace(0.0, 1.0, n_points), 12)
        return np.stack([first, np.round(1.0 - first, 12)], axis=1)
    if n_points < m + 1:
        raise ValueError(
            f"n_points must be >= m + 1 = {m + 1} (vertices and centroid), got {n_points}"
        )
    rng = np.random.default_rng(seed)
    vertices = np.eye(m)
    centroid = np.full((1, m), 1.0 / m)
    samples = rng.dirichlet(np.ones(m), size=n_points - m - 1)
    return np.concatenate([vertices, centroid, samples], axis=0)


def check_simplex(w: np.ndarray, name: str = "weights", size: int | None = None) -> np.ndarray:
    """Validate a trade-off weight vector and return it as float64 (m,).

    Args:
        w: candidate weights.
        name: what to call them in the error message.
        size: the number of objectives they must cover, if known.
    """
    w = np.asarray(w, dtype=np.float64)
    shown = "[" + ", ".join(f"{x:.6g}" for x in w.ravel()) + "]"
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {w.shape}")
    if size is not None and w.size != size:
        raise ValueError(f"{name} {shown} must have one entry per objective ({size}), got {w.size}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} {shown} must be finite")
    total = w.sum()
    if (w < 0).any() or abs(total - 1.0) > SIMPLEX_TOLERANCE:
        raise ValueError(
            f"{name} {shown} must lie on the simplex: entries >= 0 that sum to 1 "
            f"(sum is {total:.6g})"
        )
    return w


def spread(points: np.ndarray) -> float:
    """Mean Euclidean distance of a front's points from their centroid: 0 when every trade-off
    gives the same result (mode collapse), larger when the trade-offs reach further apart."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or not len(points):
        raise ValueError(f"points must be a non-empty (P, m) array, got shape {points.shape}")
    return float(np.linalg.norm(points - points.mean(0), axis=1).mean())


def trade_off_share(rewards: np.ndarray) -> float:
    """Share of the within-group sample pairs that trade objectives off: one sample strictly
    better on some objective and strictly worse on another (mutually non-dominated).

    Args:
        rewards: (n, k, m) rewards of ``k`` samples for each of ``n`` prompts (higher is better).

    Only such pairs change order with the trade-off ``w``; the rest are ordered alike by every
    ``w``, so a prompt-conditioned method learns to read ``w`` from the first kind alone. 0.0 when
    no pair trades off (``k < 2`` included).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 3:
        raise ValueError(f"rewards must be an (n, k, m) array, got shape {rewards.shape}")
    k = rewards.shape[1]
    if k < 2:
        return 0.0
    i, j = np.triu_indices(k, 1)
    diff = rewards[:, i] - rewards[:, j]  # (n, pairs, m)
    trades = (diff > 0).any(-1) & (diff < 0).any(-1)
    return float(trades.mean())
