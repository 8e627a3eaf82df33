"""Labels for auxiliary objectives: raw signals -> non-negative labels where larger is better.

Raw auxiliary signals are awkward as ranking labels: click counts reach 10^6, quality scores are
better when lower. ``objective_labels`` applies the configured direction, then one transform:

- ``identity``: the value itself, shifted so that its minimum is 0 if it was negative;
- ``log1p``: ``log(1 + v)`` of that non-negative value (tames heavy-tailed counts);
- ``minmax``: per group (query) to [0, 1]; a constant group becomes all 0;
- ``grade``: per-dataset quantile bins to ``0..n_grades-1``, like LETOR relevance grades.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd

Direction = Literal["higher", "lower"]
Transform = Literal["identity", "log1p", "minmax", "grade"]


def objective_labels(
    values: np.ndarray,
    group_ids: np.ndarray,
    direction: Direction,
    transform: Transform,
    n_grades: int = 5,
    name: str = "values",
) -> np.ndarray:
    """Map raw values ``(n_items,)`` to float64 labels ``(n_items,)``: >= 0, larger is better.

    ``group_ids`` ``(n_items,)`` gives each item's group (used by ``minmax``). ``direction="lower"``
    first maps ``v -> max(v) - v`` over the whole data set. ``name`` is used in error messages
    (for example the objective's name or column).
    """
    if direction not in get_args(Direction):
        raise ValueError(
            f"{name}: direction must be one of {get_args(Direction)}, got {direction!r}"
        )
    if transform not in get_args(Transform):
        raise ValueError(
            f"{name}: transform must be one of {get_args(Transform)}, got {transform!r}"
        )
    v = _checked_values(values, group_ids, name)
    if direction == "lower":
        v = v.max() - v
    if transform == "identity":
        return _shift_nonnegative(v)
    if transform == "log1p":
        return np.log1p(_shift_nonnegative(v))
    if transform == "minmax":
        return _minmax_per_group(v, np.asarray(group_ids))
    if n_grades < 2:
        raise ValueError(f"{name}: n_grades must be >= 2, got {n_grades}")
    return _quantile_grades(v, n_grades)


def _checked_values(values: np.ndarray, group_ids: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a float64 copy ``(n_items,)`` after checking shape and finiteness."""
    v = np.array(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {v.shape}")
    if len(group_ids) != len(v):
        raise ValueError(f"{name}: {len(v)} values but {len(group_ids)} group ids")
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        kind = "NaN" if np.isnan(v[bad[0]]) else "inf"
        raise ValueError(
            f"{name}: {len(bad)} non-finite value(s), first is {kind} at position {bad[0]}; "
            "objective values must be finite numbers"
        )
    return v


def _shift_nonnegative(v: np.ndarray) -> np.ndarray:
    """Shift ``v`` up so that its minimum is 0 when it is negative; leave it alone otherwise."""
    low = v.min()
    return v - low if low < 0 else v


def _minmax_per_group(v: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Scale each group of ``v`` ``(n_items,)`` to [0, 1]; constant groups become 0."""
    by_group = pd.Series(v).groupby(group_ids, sort=False)
    low = by_group.transform("min").to_numpy()
    span = by_group.transform("max").to_numpy() - low
    return np.divide(v - low, span, out=np.zeros_like(v), where=span > 0)


def _quantile_grades(v: np.ndarray, n_grades: int) -> np.ndarray:
    """Bin ``v`` ``(n_items,)`` into grades ``0..k-1`` (``k <= n_grades``) by dataset quantiles.

    Like ``pandas.qcut(v, n_grades, duplicates="drop")``: bins are closed on the right and repeated
    edges are merged, so a heavily tied value (most click counts are 0) makes fewer grades rather
    than empty ones. The edges are data values (``inverted_cdf``), so no bin is ever empty.
    """
    # inverted_cdf quantiles in integer arithmetic: float probabilities such as 3/5 * 10 land on
    # 6.000000000000001 and would shift an edge by one item
    ceil_ranks = -(-np.arange(n_grades + 1) * len(v) // n_grades)  # ceil(i * n / n_grades)
    edges = np.unique(np.sort(v)[np.maximum(ceil_ranks - 1, 0)])
    inner = edges[1:-1]  # (k - 1,) upper ends of all grades but the top one
    return np.searchsorted(inner, v, side="left").astype(np.float64)
