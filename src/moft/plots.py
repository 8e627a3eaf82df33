"""Figures of the evaluation stage: Pareto fronts, objective-conflict heat maps, training curves.

Every figure is a standalone `matplotlib.figure.Figure` drawn on an Agg canvas, never through
pyplot, so no global figure state survives a call. PNGs are written atomically through
`moft.io.atomic_write_bytes` (a temporary file in the target directory, then `os.replace`).
"""

from __future__ import annotations

import os
from io import BytesIO
from itertools import combinations, cycle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from moft.io import atomic_write_bytes
from moft.metrics.pareto import Direction, non_dominated

MAIN_CMAP = "viridis"
METHOD_COLOURS = colormaps["tab10"].colors
DPI = 150


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure: Figure, path: str | os.PathLike) -> Path:
    """Write `figure` to `path` as PNG atomically; the previous file survives a failure."""
    png = BytesIO()
    figure.savefig(png, format="png", dpi=DPI)
    return atomic_write_bytes(Path(path), png.getvalue())


def _check_methods(methods: dict[str, dict[str, Any]], m: int) -> dict[str, dict[str, np.ndarray]]:
    """Return each method's points (P, m), main (P,) and weights (P, m) as float arrays."""
    if not methods:
        raise ValueError("methods must hold at least one method to plot")
    checked = {}
    for name, method in methods.items():
        missing = {"points", "main", "weights"} - set(method)
        if missing:
            raise ValueError(f"methods[{name!r}] lacks {sorted(missing)}")
        points = np.asarray(method["points"], dtype=np.float64)
        main = np.asarray(method["main"], dtype=np.float64)
        weights = np.asarray(method["weights"], dtype=np.float64)
        n_points = len(points)
        if points.shape != (n_points, m) or weights.shape != (n_points, m):
            raise ValueError(
                f"methods[{name!r}] points and weights must be (points, {m}) arrays, got "
                f"{points.shape} and {weights.shape}"
            )
        if main.shape != (n_points,):
            raise ValueError(
                f"methods[{name!r}] main must be a ({n_points},) vector, got {main.shape}"
            )
        checked[name] = {"points": points, "main": main, "weights": weights}
    return checked


def _main_norm(methods: dict[str, dict[str, np.ndarray]], base: dict | None) -> Normalize:
    """One colour scale for the main metric, shared by every method and the base model."""
    values = np.concatenate([method["main"] for method in methods.values()])
    if base is not None:
        values = np.append(values, base["main"])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Normalize(0.0, 1.0)
    return Normalize(values.min(), values.max())


def _draw_front(
    ax: Axes,
    axes_ij: tuple[int, int],
    methods: dict[str, dict[str, np.ndarray]],
    base: dict | None,
    norm: Normalize,
    direction: Direction,
    reference_point: np.ndarray | None,
    connect: bool,
) -> None:
    """Objective i against objective j, points coloured by main metric, non-dominated ringed.

    `connect` joins each method's points in grid order (meaningful when the grid is a line, m = 2).
    """
    i, j = axes_ij
    for colour, method in zip(cycle(METHOD_COLOURS), methods.values()):
        points = method["points"]
        front = non_dominated(points, direction)  # over all m objectives
        if connect:
            ax.plot(points[:, i], points[:, j], color=colour, alpha=0.5, linewidth=1)
        ax.scatter(
            points[:, i], points[:, j], c=method["main"], cmap=MAIN_CMAP, norm=norm,
            edgecolors=[colour], s=30, zorder=3,
        )
        ax.scatter(
            points[front, i], points[front, j], facecolors="none", edgecolors=[colour],
            s=110, linewidths=1.5, zorder=4,
        )
    if base is not None:
        ax.scatter(
            base["objectives"][i], base["objectives"][j], c=[base["main"]], cmap=MAIN_CMAP,
            norm=norm, marker="*", s=260, edgecolors="black", zorder=5,
        )
    if reference_point is not None:
        ax.scatter(reference_point[i], reference_point[j], marker="x", color="grey", s=50)


def _legend_handles(
    methods: dict[str, dict[str, np.ndarray]], base: dict | None, has_reference: bool
) -> list[Line2D]:
    """Legend entries: one per method (its edge colour), then the markers' meanings."""
    handles = [
        Line2D([], [], color=colour, marker="o", markerfacecolor="white", label=name)
        for colour, name in zip(cycle(METHOD_COLOURS), methods)
    ]
    handles.append(
        Line2D([], [], linestyle="none", marker="o", markersize=10, markerfacecolor="none",
               markeredgecolor="grey", label="non-dominated")
    )
    if base is not None:
        handles.append(
            Line2D([], [], linestyle="none", marker="*", markersize=14, markerfacecolor="white",
                   markeredgecolor="black", label="base")
        )
    if has_reference:
        handles.append(
            Line2D([], [], linestyle="none", marker="x", color="grey", label="reference")
        )
    return handles


def _draw_main_vs_weight(
    ax: Axes,
    methods: dict[str, dict[str, np.ndarray]],
    base: dict | None,
    main_label: str,
    connect: bool,
) -> None:
    """The main-objective metric against the first trade-off weight w_1, per method."""
    for colour, method in zip(cycle(METHOD_COLOURS), methods.values()):
        order = np.argsort(method["weights"][:, 0], kind="stable")
        ax.plot(
            method["weights"][order, 0], method["main"][order], color=colour, marker="o",
            markersize=3, linewidth=1, linestyle="-" if connect else "none",
        )
    if base is not None:
        ax.axhline(base["main"], color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel(main_label)
    ax.set_title(f"{main_label} vs $w_1$", fontsize="small")
    ax.tick_params(labelsize="small")


def plot_pareto(
    path: str | os.PathLike,
    objective_names: list[str],
    methods: dict[str, dict[str, Any]],
    base: dict | None,
    title: str,
    reference_point: np.ndarray | None = None,
    direction: Direction = "max",
    main_label: str = "main NDCG@10",
) -> Path:
    """Pareto fronts of every method and the base model, coloured by the main-objective metric.

    Args:
        path: PNG to write.
        objective_names: the m objective names (axis labels).
        methods: name -> {"points": (P, m), "main": (P,), "weights": (P, m)}, rows in grid order.
        base: {"objectives": m values, "main": float} for the base model, or None.
        title: figure title.
        reference_point: (m,) hypervolume reference, drawn as a grey cross when given.
        direction: "max" or "min", for which points are highlighted as non-dominated.
        main_label: colour-bar and side-panel label of the main metric.

    m = 2 draws the front, points joined in grid order, next to a main-vs-w_1 panel; m > 2 draws
    one scatter panel per objective pair plus the main-vs-w_1 panel. Non-dominated points (over
    all m objectives) are ringed in their method's colour; the base model is a star (a dashed line
    in the main-vs-w_1 panel).
    """
    m = len(objective_names)
    if m < 2:
        raise ValueError(f"objective_names must name at least 2 objectives, got {objective_names}")
    checked = _check_methods(methods, m)
    if base is not None and len(base["objectives"]) != m:
        raise ValueError(f"base['objectives'] must hold {m} values, got {base['objectives']}")
    if reference_point is not None:
        reference_point = np.asarray(reference_point, dtype=np.float64)
        if reference_point.shape != (m,):
            raise ValueError(f"reference_point must hold {m} values, got {reference_point.shape}")
    norm = _main_norm(checked, base)

    pairs = list(combinations(range(m), 2))
    connect = m == 2
    if connect:
        figure = _new_figure(10, 5)
        front_ax, main_ax = figure.subplots(1, 2, width_ratios=[2.2, 1])
        front_axes = [front_ax]
    else:
        n_cols = min(3, len(pairs) + 1)
        n_rows = -(-(len(pairs) + 1) // n_cols)
        figure = _new_figure(4.2 * n_cols, 3.8 * n_rows)
        grid = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
        front_axes, main_ax = list(grid[: len(pairs)]), grid[len(pairs)]
        for unused in grid[len(pairs) + 1 :]:
            unused.set_visible(False)

    for ax, (i, j) in zip(front_axes, pairs):
        _draw_front(ax, (i, j), checked, base, norm, direction, reference_point, connect)
        ax.set_xlabel(objective_names[i])
        ax.set_ylabel(objective_names[j])
    handles = _legend_handles(checked, base, reference_point is not None)
    front_axes[0].legend(handles=handles, fontsize="small")
    _draw_main_vs_weight(main_ax, checked, base, main_label, connect)
    figure.colorbar(
        ScalarMappable(norm=norm, cmap=MAIN_CMAP), ax=[*front_axes, main_ax], label=main_label
    )
    figure.suptitle(title)
    return _save_png(figure, path)


def plot_conflict_heatmap(path: str | os.PathLike, matrix: pd.DataFrame, title: str) -> Path:
    """Annotated heat map of a square objective-by-objective matrix with values in [-1, 1].

    The diverging colour map is centred at 0: blue for conflict (negative), red for agreement.
    """
    if not isinstance(matrix, pd.DataFrame) or matrix.empty:
        raise ValueError("matrix must be a non-empty pandas DataFrame")
    values = matrix.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    figure = _new_figure(1.1 * n_cols + 2.5, 0.9 * n_rows + 1.5)
    ax = figure.subplots()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    for row in range(n_rows):
        for col in range(n_cols):
            value = values[row, col]
            ax.text(
                col, row, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                fontsize="small", color="white" if abs(value) > 0.6 else "black",
            )
    ax.set_xticks(range(n_cols), [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(r) for r in matrix.index])
    figure.colorbar(image, ax=ax)
    ax.set_title(title)
    return _save_png(figure, path)


def plot_training_curves(
    path: str | os.PathLike, curves: dict[str, list[float]], title: str, ylabel: str
) -> Path:
    """One line per named curve, values against their step index (from 1)."""
    if not curves:
        raise ValueError("curves must hold at least one named curve")
    figure = _new_figure(7, 4.5)
    ax = figure.subplots()
    for name, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save_png(figure, path)


def plot_temperature_fronts(
    path: str | os.PathLike,
    objective_names: list[str],
    methods: dict[str, dict[str, dict[str, Any]]],
    base: dict | None,
    title: str,
    direction: Direction = "max",
    main_label: str = "main NDCG@10",
) -> Path:
    """One panel per method: its fronts at several temperatures, coloured by the main metric.

    Args:
        methods: method -> temperature label (e.g. "c=2" or "beta=0.67,1.5") -> {"points": (P, m),
            "main": (P,), "weights": (P, m)}; the first two objectives are drawn.
        base: the base model's point and main metric (a star), or None.

    Each temperature's points are joined in grid order with a line of its own style and labelled
    at its first point; all panels share one colour scale so the main metric compares across them.
    """
    m = len(objective_names)
    if m < 2:
        raise ValueError(f"objective_names must name at least 2 objectives, got {objective_names}")
    if not methods:
        raise ValueError("methods must hold at least one method to plot")
    checked = {name: _check_methods(fronts, m) for name, fronts in methods.items()}
    norm = _main_norm({f"{n}/{t}": f for n, fr in checked.items() for t, f in fr.items()}, base)
    n_cols = min(3, len(checked))
    n_rows = -(-len(checked) // n_cols)
    figure = _new_figure(4.6 * n_cols + 0.8, 4.2 * n_rows)
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    for ax, (name, fronts) in zip(axes, checked.items()):
        for style, (label, front) in zip(cycle(styles), fronts.items()):
            points = front["points"]
            ax.plot(points[:, 0], points[:, 1], color="grey", linestyle=style, linewidth=1, label=label)
            ax.scatter(points[:, 0], points[:, 1], c=front["main"], cmap=MAIN_CMAP, norm=norm, s=22, zorder=3)
            nd = non_dominated(points, direction)
            ax.scatter(points[nd, 0], points[nd, 1], facecolors="none", edgecolors="grey", s=70, zorder=4)
        if base is not None:
            ax.scatter(
                base["objectives"][0], base["objectives"][1], c=[base["main"]], cmap=MAIN_CMAP,
                norm=norm, marker="*", s=220, edgecolors="black", zorder=5, label="base",
            )
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(objective_names[0])
        ax.set_ylabel(objective_names[1])
        ax.legend(fontsize="x-small")
    for unused in axes[len(checked):]:
        unused.set_visible(False)
    figure.colorbar(ScalarMappable(norm=norm, cmap=MAIN_CMAP), ax=list(axes[: len(checked)]), label=main_label)
    figure.suptitle(title)
    return _save_png(figure, path)



def _case_axes(n_cases: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure with one panel per case, three to a row; the unused panels hidden."""
    if n_cases < 1:
        raise ValueError("cases must hold at least one case to plot")
    n_cols = min(3, n_cases)
    n_rows = -(-n_cases // n_cols)
    figure = _new_figure(width * n_cols, height * n_rows)
    axes = list(figure.subplots(n_rows, n_cols, squeeze=False).ravel())
    for unused in axes[n_cases:]:
        unused.set_visible(False)
    return figure, axes[:n_cases]


def plot_action_probabilities(
    path: str | os.PathLike, taus: np.ndarray, cases: dict[str, dict[str, np.ndarray]], title: str
) -> Path:
    """MOPO's Figure 4: one panel per case, each action's probability against tau, MOPO's policy
    (thin, dots) over the exact optimum (wide, pale), one colour per action.

    Args:
        taus: (T,) the swept KL weights (log-scaled axis).
        cases: case -> {"mopo": (T, A), "exact": (T, A)} action probabilities per tau.
    """
    taus = np.asarray(taus, dtype=np.float64)
    figure, axes = _case_axes(len(cases), 4.2, 3.4)
    n_actions = 0
    for ax, (name, case) in zip(axes, cases.items()):
        mopo, exact = np.asarray(case["mopo"]), np.asarray(case["exact"])
        if mopo.shape != exact.shape or mopo.shape[0] != len(taus):
            raise ValueError(
                f"cases[{name!r}]: mopo and exact must be ({len(taus)}, actions) arrays, got "
                f"{mopo.shape} and {exact.shape}"
            )
        n_actions = max(n_actions, mopo.shape[1])
        for a, colour in zip(range(mopo.shape[1]), cycle(METHOD_COLOURS)):
            ax.plot(taus, exact[:, a], color=colour, linewidth=5, alpha=0.3)  # visible under MOPO's
            ax.plot(taus, mopo[:, a], color=colour, marker="o", markersize=3, linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(r"$\tau$")
        ax.set_ylabel(r"$\pi(y)$")
        ax.set_title(name.replace("_", " "), fontsize="medium")
    handles = [
        Line2D([], [], color=c, linewidth=3, label=f"action {a}")
        for a, c in zip(range(n_actions), cycle(METHOD_COLOURS))
    ]
    handles += [
        Line2D([], [], color="black", marker="o", markersize=3, label="MOPO"),
        Line2D([], [], color="black", linewidth=5, alpha=0.3, label="exact optimum"),
    ]
    axes[0].legend(handles=handles, fontsize="x-small")
    figure.suptitle(title)
    return _save_png(figure, path)


def plot_policy_fronts(
    path: str | os.PathLike, objective_names: list[str], cases: dict[str, dict[str, Any]], title: str
) -> Path:
    """One panel per case in the plane of the first two objectives' expected win rates: MOPO's
    policies over the tau sweep (dots, solid) on the exact optima's (rings, dashed), the reference
    policy (star) and the secondary objective's lower bound b (dotted).

    Args:
        cases: case -> {"mopo": (T, m), "exact": (T, m), "reference": (m,), "threshold": b}.
    """
    if len(objective_names) < 2:
        raise ValueError(f"objective_names must name at least 2 objectives, got {objective_names}")
    figure, axes = _case_axes(len(cases), 4.2, 3.8)
    for ax, (name, case) in zip(axes, cases.items()):
        mopo, exact = np.asarray(case["mopo"]), np.asarray(case["exact"])
        ax.plot(exact[:, 0], exact[:, 1], color="grey", linestyle="--", marker="o", markersize=9,
                markerfacecolor="none", label="exact optimum")  # fmt: skip
        ax.plot(mopo[:, 0], mopo[:, 1], color=METHOD_COLOURS[0], marker="o", markersize=3, label="MOPO")
        ax.scatter(case["reference"][0], case["reference"][1], marker="*", s=160, color="black",
                   zorder=5, label="reference")  # fmt: skip
        ax.axhline(case["threshold"], color="black", linestyle=":", linewidth=1, label="lower bound b")
        ax.set_xlabel(f"E[p] {objective_names[0]}")
        ax.set_ylabel(f"E[p] {objective_names[1]}")
        ax.set_title(name.replace("_", " "), fontsize="medium")
    axes[0].legend(fontsize="x-small")
    figure.suptitle(title)
    return _save_png(figure, path)
