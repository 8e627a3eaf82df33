"""Deterministic train/val/test splits by group (query or prompt), never by item."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def split_groups(
    group_ids: Sequence[str],
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Split the unique ``group_ids`` into ``{"train", "val", "test"}`` lists of group ids.

    ``group_ids`` may repeat (one entry per item). The unique ids are sorted, permuted with
    ``numpy.random.default_rng(seed)``, and cut by ``fractions``; each split is returned sorted.
    Every split gets at least one group, so at least 3 groups are needed.
    """
    fractions = _checked_fractions(fractions)
    unique = sorted({str(g) for g in group_ids})
    if len(unique) < len(SPLIT_NAMES):
        raise ValueError(
            f"splitting needs at least {len(SPLIT_NAMES)} groups (one per split), "
            f"got {len(unique)}"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    bounds = np.cumsum([0, *_split_sizes(len(unique), fractions)])
    return {
        name: sorted(shuffled[start:stop])
        for name, start, stop in zip(SPLIT_NAMES, bounds[:-1], bounds[1:])
    }


def _checked_fractions(fractions: Sequence[float]) -> list[float]:
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(SPLIT_NAMES):
        raise ValueError(f"fractions must be 3 numbers (train, val, test), got {fractions}")
    if any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions}")
    return fractions


def _split_sizes(n_groups: int, fractions: list[float]) -> list[int]:
    """Group counts per split: largest-remainder rounding, then at least 1 for every split."""
    exact = [f * n_groups for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: n_groups - sum(sizes)]:
        sizes[i] += 1
    for i in range(len(sizes)):
        if sizes[i] == 0:  # tiny data: borrow a group from the largest split
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] = 1
    return sizes
