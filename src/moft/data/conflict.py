"""Conflict matrix: do the objectives disagree enough for a Pareto front to be worth drawing?

Two labels that rank the items of each query the same way give a flat front. The matrix holds the
mean, over groups, of the within-group Spearman correlation of every pair of labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def conflict_matrix(
    df: pd.DataFrame, columns: dict[str, str], group_col: str = "group_id"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean within-group Spearman correlation between every pair of named label columns.

    ``columns`` maps a label's name to its column in ``df``. A group counts for a pair only when
    both columns vary within it (Spearman is undefined on a constant). Returns ``(means, counts)``,
    both ``(k, k)`` frames indexed by the names: ``means`` is NaN where no group counted, the
    diagonal is 1 (or NaN for a label constant in every group), ``counts`` the groups used.
    """
    names = list(columns)
    values = _label_values(df, columns, group_col)  # (n_items, k)
    sums = np.zeros((len(names), len(names)))
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    for rows in _group_rows(df[group_col]):
        if len(rows) < 2:
            continue  # a single item ranks nothing
        x = values[rows]  # (n_group, k)
        varying = np.flatnonzero((x != x[0]).any(axis=0))
        if not len(varying):
            continue
        pair = np.ix_(varying, varying)
        sums[pair] += _spearman(x[:, varying])
        counts[pair] += 1
    means = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
    return (
        pd.DataFrame(means, index=names, columns=names),
        pd.DataFrame(counts, index=names, columns=names),
    )


def agreement_warnings(
    matrix: pd.DataFrame, threshold: float = 0.7, among: list[str] | None = None
) -> list[str]:
    """One warning per pair of labels (within ``among``, default all) with mean rho >= threshold."""
    names = list(matrix.index) if among is None else list(among)
    unknown = [n for n in names if n not in matrix.index]
    if unknown:
        raise ValueError(f"unknown objectives {unknown}; the matrix has {list(matrix.index)}")
    warnings = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rho = matrix.loc[a, b]
            if not np.isnan(rho) and rho >= threshold:
                warnings.append(
                    f"objectives {a!r} and {b!r} agree strongly (mean within-group Spearman "
                    f"{rho:+.2f} >= {threshold:.2f}): a front between them will be nearly flat; "
                    "drop one of them or pick objectives that conflict"
                )
    return warnings


def _label_values(df: pd.DataFrame, columns: dict[str, str], group_col: str) -> np.ndarray:
    """The named columns as a float64 ``(n_items, k)`` matrix, checked for presence and NaN."""
    wanted = {group_col: "group column"}
    wanted.update({col: f"column of {name!r}" for name, col in columns.items()})
    missing = [f"{col!r} ({what})" for col, what in wanted.items() if col not in df.columns]
    if missing:
        raise ValueError(f"missing from the frame: {', '.join(missing)}")
    if len(columns) < 2:
        raise ValueError(f"a conflict matrix needs at least 2 labels, got {list(columns)}")
    values = df[list(columns.values())].to_numpy(dtype=np.float64)
    nan_columns = [name for name, has in zip(columns, np.isnan(values).any(axis=0)) if has]
    if nan_columns:
        raise ValueError(f"labels with NaN values: {nan_columns}")
    return values


def _group_rows(group_ids: pd.Series) -> list[np.ndarray]:
    """Row positions of each group, ``[(n_group,), ...]``, whether or not groups are contiguous."""
    codes, _ = pd.factorize(group_ids)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, starts)


def _spearman(x: np.ndarray) -> np.ndarray:
    """Spearman correlation matrix ``(v, v)`` of the columns of ``x`` ``(n, v)``, none constant."""
    if x.shape[1] == 1:
        return np.ones((1, 1))
    rho = stats.spearmanr(x).statistic
    return np.array([[1.0, rho], [rho, 1.0]]) if x.shape[1] == 2 else rho
