"""Ranking metrics: NDCG@k over a padded batch of query groups.

A batch holds G groups padded to n items; `mask` marks the real items. The gain is linear, as in
the HyperDPO paper: DCG@k = sum_{i<=k} z_{pi_i} / log2(i + 1), with pi the ranking by descending
score. On tie-free scores this equals `sklearn.metrics.ndcg_score(k=k)`.
"""

from __future__ import annotations

import warnings

import numpy as np


def _check_batch(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return float64 scores and labels and a bool mask, all (G, n), after validating them.

    Only real items (mask True) are checked: padding may hold anything, NaN included.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a boolean array (True = real item), got dtype {mask.dtype}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (groups, items) array, got shape {scores.shape}")
    if labels.shape != scores.shape or mask.shape != scores.shape:
        raise ValueError(
            f"scores, labels and mask must share one (groups, items) shape, got "
            f"scores {scores.shape}, labels {labels.shape}, mask {mask.shape}"
        )
    if not np.isfinite(scores[mask]).all():
        raise ValueError("scores must be finite on real items (mask True)")
    real_labels = labels[mask]
    if not np.isfinite(real_labels).all():
        raise ValueError("labels must be finite on real items (mask True)")
    if (real_labels < 0).any():
        raise ValueError(
            f"labels must be non-negative gains (transform them first), got minimum "
            f"{real_labels.min():g}"
        )
    return scores, labels, mask


def ndcg_at_k(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int = 10
) -> np.ndarray:
    """NDCG@k of every group in a padded batch.

    Args:
        scores: (G, n) model scores; higher ranks first, ties broken by item index.
        labels: (G, n) non-negative relevance gains.
        mask: (G, n) bool, True for real items, False for padding.
        k: rank cut-off, >= 1.

    Returns:
        (G,) float64 NDCG@k; NaN for groups whose ideal DCG@k is 0 (no signal to rank by).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    scores, labels, mask = _check_batch(scores, labels, mask)
    n_items = scores.shape[1]

    ranks = np.arange(1, n_items + 1)
    discounts = np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0)  # (n,)
    gains = np.where(mask, labels, 0.0)  # (G, n)

    # Padding sorts after every real item; the stable sort keeps index order among equal scores.
    sort_key = np.where(mask, -scores, np.inf)
    order = np.argsort(sort_key, axis=1, kind="stable")  # (G, n)
    dcg = np.take_along_axis(gains, order, axis=1) @ discounts  # (G,)
    ideal_dcg = -np.sort(-gains, axis=1) @ discounts  # (G,)

    ndcg = np.full(scores.shape[0], np.nan)
    has_signal = ideal_dcg > 0
    ndcg[has_signal] = dcg[has_signal] / ideal_dcg[has_signal]
    return ndcg


def mean_ndcg(per_group: np.ndarray) -> tuple[float, int]:
    """Mean NDCG over the groups that carry signal.

    Args:
        per_group: (G,) NDCG values, NaN for groups left out (see `ndcg_at_k`).

    Returns:
        (mean over non-NaN groups, number of groups left out); the mean is NaN if all are left out.
    """
    per_group = np.asarray(per_group, dtype=np.float64)
    if per_group.ndim != 1:
        raise ValueError(f"per_group must be a (groups,) vector, got shape {per_group.shape}")
    left_out = int(np.isnan(per_group).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" when all are NaN
        mean = float(np.nanmean(per_group))
    return mean, left_out
