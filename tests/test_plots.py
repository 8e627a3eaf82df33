import numpy as np
import pandas as pd
import pytest

from moft.metrics.pareto import weight_grid
from moft.plots import plot_conflict_heatmap, plot_pareto, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_methods(m, rng):
    """Two methods on the same grid: points (P, m), main (P,), weights (P, m)."""
    weights = weight_grid(m, n_points=11, seed=0)
    return {
        name: {
            "points": 0.3 + 0.4 * weights + rng.normal(0.0, 0.02, size=weights.shape) - offset,
            "main": 0.45 - 0.05 * weights[:, 0] + rng.normal(0.0, 0.01, size=len(weights)),
            "weights": weights,
        }
        for name, offset in [("hyperdpo", 0.0), ("dpo_ls", 0.05)]
    }


def assert_only_png(directory, path):
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in directory.iterdir()) == [path.name]


@pytest.mark.parametrize("m", [2, 3])
def test_plot_pareto_writes_one_png(tmp_path, m):
    methods = fake_methods(m, np.random.default_rng(m))
    base = {"objectives": [0.4] * m, "main": 0.47}
    names = [f"objective_{j}" for j in range(m)]

    path = plot_pareto(
        tmp_path / "pareto.png", names, methods, base, "test front", reference_point=[0.0] * m
    )

    assert path == tmp_path / "pareto.png"
    assert_only_png(tmp_path, path)


def test_plot_pareto_overwrites_and_accepts_min_direction_without_base(tmp_path):
    methods = fake_methods(2, np.random.default_rng(0))
    target = tmp_path / "pareto.png"
    target.write_bytes(b"old")

    plot_pareto(target, ["a", "b"], methods, None, "losses", direction="min")

    assert_only_png(tmp_path, target)


def test_plot_pareto_names_a_bad_method(tmp_path):
    methods = fake_methods(2, np.random.default_rng(0))
    methods["dpo_ls"]["main"] = methods["dpo_ls"]["main"][:3]
    with pytest.raises(ValueError, match=r"methods\['dpo_ls'\] main"):
        plot_pareto(tmp_path / "pareto.png", ["a", "b"], methods, None, "bad")
    assert list(tmp_path.iterdir()) == []


def test_plot_conflict_heatmap(tmp_path):
    names = ["quality", "freshness", "diversity"]
    matrix = pd.DataFrame(
        [[1.0, -0.7, 0.2], [-0.7, 1.0, np.nan], [0.2, np.nan, 1.0]], index=names, columns=names
    )
    path = plot_conflict_heatmap(tmp_path / "conflict.png", matrix, "label correlation")
    assert_only_png(tmp_path, path)


def test_plot_training_curves(tmp_path):
    curves = {"hyperdpo": [1.0, 0.8, 0.6, 0.55], "dpo_ls": [1.0, 0.9, 0.85]}
    path = plot_training_curves(tmp_path / "curves.png", curves, "training loss", "loss")
    assert_only_png(tmp_path, path)
