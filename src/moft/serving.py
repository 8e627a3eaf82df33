"""A trained front as an MLflow pyfunc model whose ``predict`` takes the trade-off as params.

``predict(df, params={"weights": [...], "beta_scale": c})`` scores the items of ``df`` (a
``group_id`` column plus the model's feature columns) at that trade-off and returns per-item
scores and per-group ranks. The params schema in the signature is what makes MLflow pass the
params through (without one it silently drops them).
"""

from __future__ import annotations

import json
import warnings
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from moft.metrics.pareto import check_simplex


def bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class FrontModel(mlflow.pyfunc.PythonModel):
    """Loads the base scorer and the method's artefact; scores at any (weights, beta_scale)."""

    def load_context(self, context: Any) -> None:
        from moft.config import MoftConfig
        from moft.methods import get_method
        from moft.stages import load_base

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        cfg = MoftConfig.model_validate(meta["config"])
        self.base = load_base(Path(context.artifacts["base"]))
        self.front = get_method(meta["method"]).load(Path(context.artifacts["front"]), cfg, self.base)
        self.feature_cols: list[str] = json.loads(
            (Path(context.artifacts["base"]) / "meta.json").read_text()
        )["feature_cols"]
        self.m = len(cfg.objectives)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return score_frame(self.front, self.feature_cols, self.m, model_input, params or {})


def score_frame(front: Any, feature_cols: list[str], m: int, frame: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Score ``frame`` at the trade-off in ``params``; bad requests raise a 400-style error."""
    import torch

    from moft.data.groups import GroupedItems

    try:
        weights = check_simplex(np.asarray(params.get("weights", [1.0 / m] * m), dtype=float), size=m)
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc)) from None
    beta_scale = float(params.get("beta_scale", 1.0))
    if not beta_scale > 0:
        raise bad_request(f"beta_scale must be > 0, got {beta_scale}")
    missing = [c for c in ["group_id", *feature_cols] if c not in frame.columns]
    if missing:
        raise bad_request(
            f"input lacks {len(missing)} of the model's columns (group_id + {len(feature_cols)} "
            f"features), e.g. {missing[:5]}"
        )
    frame = frame.reset_index(drop=True)
    order = np.argsort(pd.factorize(frame["group_id"])[0], kind="stable")
    items = frame.iloc[order].reset_index(drop=True)
    items["label_main"] = 0.0
    grouped = GroupedItems.from_frame(items, feature_cols, [])
    try:
        policy = front.policy(weights, beta_scale)
    except ValueError as exc:  # e.g. a per-grid-point baseline asked for an untrained trade-off
        raise bad_request(str(exc)) from None
    scores = np.zeros(len(items))
    with torch.no_grad():
        for idx in grouped.batches(64):
            batch = grouped.batch(idx)
            s = policy(batch).numpy()
            for row, g in enumerate(idx):
                lo, hi = grouped.offsets[g], grouped.offsets[g + 1]
                scores[lo:hi] = s[row, : hi - lo]
    out = pd.DataFrame({"group_id": items["group_id"].astype(str), "score": scores})
    out["rank"] = out.groupby("group_id", sort=False)["score"].rank(ascending=False, method="first").astype(int)
    out.index = order
    return out.sort_index()


def log_front_model(
    model_dir: Path, base_dir: Path, method: str, cfg: Any, registered_name: str | None
) -> None:
    """Log (and optionally register) the front in the active run under artifact path ``model``."""
    feature_cols = json.loads((base_dir / "meta.json").read_text())["feature_cols"]
    m = len(cfg.objectives)
    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / "front_meta.json"
        meta.write_text(json.dumps({"method": method, "config": cfg.model_dump(mode="json")}))
        example = pd.DataFrame([[0] + [0.0] * len(feature_cols)], columns=["group_id", *feature_cols])
        example["group_id"] = example["group_id"].astype(str)
        output = pd.DataFrame({"group_id": ["0"], "score": [0.0], "rank": [1]})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
            signature = infer_signature(
                example, output, params={"weights": [1.0 / m] * m, "beta_scale": 1.0}
            )
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                input_example=(example, {"weights": [1.0 / m] * m, "beta_scale": 1.0}),
                artifacts={"front": str(model_dir), "base": str(base_dir), "meta": str(meta)},
                signature=signature,
                pip_requirements=[f"moft @ file://{Path(__file__).resolve().parents[2]}"],
                registered_model_name=registered_name,
            )


def resolve_model_uri(model: str) -> str:
    """A model reference as MLflow understands it: ``models:/...``, ``runs:/...`` and paths pass
    through; a bare run id means that run's logged ``model``."""
    import re

    if "://" in model or model.startswith(("models:/", "runs:/")) or Path(model).exists():
        return model
    if re.fullmatch(r"[0-9a-f]{32}", model):
        return f"runs:/{model}/model"
    raise ValueError(
        f"--model {model!r} is neither a models:/<name>@<alias> or models:/<name>/<version> URI, "
        "a runs:/<run id>/model URI, a run id, nor an existing model directory"
    )


def score_file(
    model: str,
    input_path: Path,
    weights: list[float] | None,
    beta_scale: float = 1.0,
    output: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``moft score``: rank every group of a LETOR file at one trade-off with a logged model.

    Returns (items, rankings): one row per item (``group_id``, ``item`` = its position in the
    group in the file, ``label`` as in the file, ``score``, ``rank``) and one row per group (the
    item positions best first). With ``output`` both are written atomically as CSV: the items to
    ``output`` and the rankings next to it as ``<stem>.rankings.csv``.
    """
    from moft.data.letor import read_letor
    from moft.io import atomic_write_text
    from moft.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    uri = resolve_model_uri(model)
    frame = read_letor(input_path)
    pyfunc = mlflow.pyfunc.load_model(uri)
    params: dict[str, Any] = {"beta_scale": float(beta_scale)}
    if weights is not None:
        params["weights"] = [float(w) for w in weights]
    schema = pyfunc.metadata.get_input_schema()
    needed = schema.input_names() if schema is not None else [c for c in frame.columns if c != "label"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        have = sum(c.startswith("f") for c in frame.columns)
        raise ValueError(
            f"{input_path} has {have} features but the model reads {len(needed) - 1} "
            f"(group_id + features up to {needed[-1]}); missing {len(missing)}, e.g. {missing[:5]}"
        )
    scored = pyfunc.predict(frame[needed], params=params)
    items = pd.DataFrame({
        "group_id": frame["group_id"].astype(str),
        "item": frame.groupby("group_id", sort=False).cumcount(),
        "label": frame["label"],
        "score": scored["score"].to_numpy(),
        "rank": scored["rank"].to_numpy(),
    })
    rankings = (
        items.sort_values(["rank"], kind="stable")
        .groupby("group_id", sort=False)["item"]
        .apply(lambda s: " ".join(map(str, s)))
        .reindex(items["group_id"].unique())
        .rename("ranking")
        .reset_index()
    )
    if output is not None:
        output = Path(output)
        atomic_write_text(output, items.to_csv(index=False, float_format="%.6f"))
        atomic_write_text(output.with_name(f"{output.stem}.rankings.csv"), rankings.to_csv(index=False))
    return items, rankings
