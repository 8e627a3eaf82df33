"""The baselines of SPEC 5.3, on HyperDPO's architecture with ``w`` fixed, same grid and budget
accounting:

- ``single_objective``: one model per objective (``w = e_j``), trained once and shared by
  DPO Soup and MO-DPO (a prerequisite, not a front of its own);
- ``dpo_ls``: one model per grid point trained on ``sum_j w_j L_j``;
- ``dpo_soup``: parameter interpolation ``theta_w = sum_j w_j theta_{e_j}`` of the single models;
- ``mo_dpo``: one margin-adjusted model per grid point (objective ``argmax w``); at a vertex the
  margin vanishes and the loss is the single-objective one, so the single model is reused there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moft.evaluation import Policy
from moft.io import atomic_write_json, read_json
from moft.methods import Accounting, FitContext, temperature_scaled
from moft.methods.common import (
    ObjectiveLoss,
    accounting,
    architecture,
    build_from,
    fixed_weight_policy,
    load_scorers,
    save_scorers,
    train_fixed_weight,
)
from moft.config import MoftConfig
from moft.models.scorer import BaseScorer, HyperScorer


def grid_index(grid: np.ndarray, w: np.ndarray, method: str) -> int:
    hits = np.flatnonzero(np.all(np.isclose(grid, np.asarray(w)[None, :], atol=1e-6), axis=1))
    if not len(hits):
        raise ValueError(f"{method} has one model per trained weight vector; {list(w)} is not one of {grid.tolist()}")
    return int(hits[0])


@dataclass
class GridModels:
    """One fixed-weight scorer per weight vector of ``grid``."""

    name: str
    grid: np.ndarray  # (P, m)
    models: list[HyperScorer]
    base: BaseScorer
    accounting: Accounting
    arch: dict
    extra: dict = field(default_factory=dict)  # method-specific facts kept in meta.json (e.g. MOPO's multipliers)

    def policy(self, w: np.ndarray, beta_scale: float = 1.0) -> Policy:
        model = self.models[grid_index(self.grid, w, self.name)]
        return temperature_scaled(self.base, fixed_weight_policy(model, w), beta_scale)

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_scorers(out_dir / "models.safetensors", self.models)
        atomic_write_json(
            out_dir / "meta.json",
            {
                "method": self.name,
                "grid": self.grid.tolist(),
                "architecture": self.arch,
                "accounting": self.accounting.to_json(),
                "extra": self.extra,
            },
        )

    @classmethod
    def load(cls, path: Path, base: BaseScorer, m: int) -> GridModels:
        meta = read_json(path / "meta.json")
        grid = np.asarray(meta["grid"], dtype=np.float64)
        models = load_scorers(path / "models.safetensors", len(grid), build_from(meta, base, m))
        return cls(
            meta["method"], grid, models, base, Accounting(**meta["accounting"]), meta["architecture"],
            meta.get("extra", {}),
        )


def _weights(w: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(w, dtype=torch.float32, device=device).expand(batch_size, -1)


def train_scalarised(ctx: FitContext, grid: np.ndarray, name: str) -> GridModels:
    """One model per row of ``grid`` on ``sum_j w_j L_j`` (the HyperDPO loss at that fixed w)."""
    loss = ObjectiveLoss(ctx.cfg, ctx.base.to(ctx.device).eval(), ctx.device)
    optim = ctx.cfg.finetune.baselines.optim
    models, seconds = [], 0.0
    for i, w in enumerate(grid):
        model, took = train_fixed_weight(
            ctx, w, optim,
            lambda model, batch, w=w: loss.weighted(model, batch, _weights(w, batch.x.shape[0], batch.x.device)),
            desc=f"{name} {i + 1}/{len(grid)}",
        )
        models.append(model)
        seconds += took
        ctx.log({f"{name}_job_seconds": took}, i)
    return GridModels(name, np.asarray(grid), models, ctx.base, accounting(seconds, models), architecture(ctx.cfg))


class SingleObjective:
    name = "single_objective"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: FitContext) -> GridModels:
        return train_scalarised(ctx, np.eye(len(ctx.cfg.objectives)), self.name)

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> GridModels:
        return GridModels.load(path, base, len(cfg.objectives))


class DPOLS:
    name = "dpo_ls"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: FitContext) -> GridModels:
        return train_scalarised(ctx, ctx.grid, self.name)

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> GridModels:
        return GridModels.load(path, base, len(cfg.objectives))


def interpolate(models: list[HyperScorer], w: np.ndarray) -> dict[str, torch.Tensor]:
    """``sum_j w_j theta_j`` over every tensor of the models' states (the soup)."""
    states = [m.state_dict() for m in models]
    return {
        key: sum(float(wj) * s[key] for wj, s in zip(w, states)) if states[0][key].is_floating_point() else states[0][key]
        for key in states[0]
    }


@dataclass
class Soup:
    singles: GridModels
    name: str = "dpo_soup"

    @property
    def accounting(self) -> Accounting:
        return self.singles.accounting

    @property
    def base(self) -> BaseScorer:
        return self.singles.base

    def model_at(self, w: np.ndarray) -> HyperScorer:
        meta = {"architecture": self.singles.arch}
        model = build_from(meta, self.base, len(w))()
        model.load_state_dict(interpolate(self.singles.models, w))
        return model.eval()

    def policy(self, w: np.ndarray, beta_scale: float = 1.0) -> Policy:
        return temperature_scaled(self.base, fixed_weight_policy(self.model_at(w), w), beta_scale)

    def save(self, out_dir: Path) -> None:
        self.singles.save(out_dir)  # the soup is its ingredients
        meta = read_json(out_dir / "meta.json")
        atomic_write_json(out_dir / "meta.json", {**meta, "method": self.name})


class DPOSoup:
    name = "dpo_soup"
    requires: tuple[str, ...] = ("single_objective",)

    def fit(self, ctx: FitContext) -> Soup:
        return Soup(ctx.prerequisites["single_objective"])

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> Soup:
        return Soup(GridModels.load(path, base, len(cfg.objectives)))


class MODPO:
    name = "mo_dpo"
    requires: tuple[str, ...] = ("single_objective",)

    def fit(self, ctx: FitContext) -> GridModels:
        singles: GridModels = ctx.prerequisites["single_objective"]
        loss = ObjectiveLoss(ctx.cfg, ctx.base.to(ctx.device).eval(), ctx.device)
        optim = ctx.cfg.finetune.baselines.optim
        models, seconds, trained = [], singles.accounting.train_seconds, 0
        for i, w in enumerate(ctx.grid):
            if np.isclose(w.max(), 1.0):  # a vertex: no margin, the single-objective model
                models.append(singles.models[int(np.argmax(w))])
                continue
            model, took = train_fixed_weight(
                ctx, w, optim,
                lambda model, batch, w=w: loss.margin(model, batch, w, singles.models),
                desc=f"mo_dpo {i + 1}/{len(ctx.grid)}",
            )
            models.append(model)
            seconds += took
            trained += 1
            ctx.log({"mo_dpo_job_seconds": took}, i)
        n_single = len(singles.models)
        acc = Accounting(
            seconds,
            n_single + trained,
            singles.accounting.trainable_params + trained * models[0].trainable_parameters(),
        )
        return GridModels(self.name, np.asarray(ctx.grid), models, ctx.base, acc, architecture(ctx.cfg))

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> GridModels:
        return GridModels.load(path, base, len(cfg.objectives))


