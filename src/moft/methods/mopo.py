"""MOPO on the LTR track (SPEC 5.5, issue 6 part 3): a query's items are the actions, the
per-objective pairwise win rates come from the labels, and one scorer per grid point is cloned
onto ``pi_lambda`` (see :mod:`moft.mopo.targets` for the thresholds that make the front).

Each scorer has the baselines' architecture at a fixed ``w`` and the baselines' budget and model
selection (validation ``w . NDCG``), so MOPO's front, HV and accounting compare with theirs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from moft.config import MoftConfig
from moft.data.groups import GroupedItems
from moft.losses import listnet_dpo_loss
from moft.methods import FitContext
from moft.methods.baselines import GridModels
from moft.methods.common import ObjectiveLoss, accounting, architecture, train_fixed_weight
from moft.models.scorer import BaseScorer
from moft.mopo.targets import MopoTargets, mopo_targets


def group_tables(items: GroupedItems) -> tuple[np.ndarray, np.ndarray]:
    """Objective labels ``(C, A, m)`` (padded) and the item mask ``(C, A)`` of every group."""
    batch = items.batch(np.arange(len(items)))
    return batch.objectives.double().numpy(), batch.mask.numpy()


def with_targets(items: GroupedItems, table: np.ndarray) -> GroupedItems:
    """``items`` whose single objective column is the per-item MOPO target ``table (C, A)``."""
    flat = np.concatenate([table[g, : hi - lo] for g, (lo, hi) in enumerate(zip(items.offsets[:-1], items.offsets[1:]))])
    return dataclasses.replace(items, objectives=torch.tensor(flat, dtype=torch.float32)[:, None])


def ltr_signal(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(C, m) True where a group's labels of objective ``k`` are not all equal (else no preference)."""
    big = np.where(mask[..., None], labels, np.nan)
    return (np.nanmax(big, 1) > np.nanmin(big, 1))


class MOPO:
    name = "mopo"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: FitContext) -> GridModels:
        cfg = ctx.cfg
        start = time.perf_counter()
        labels, mask = group_tables(ctx.train)
        solved: MopoTargets = mopo_targets(
            labels, mask, ltr_signal(labels, mask), ctx.grid, cfg.finetune.mopo, cfg.objective_names, ctx.log
        )
        seconds = time.perf_counter() - start  # the solves are part of MOPO's cost
        loss = ObjectiveLoss(cfg, ctx.base.to(ctx.device).eval(), ctx.device)
        beta = float(cfg.objectives[0].beta)
        optim = cfg.finetune.baselines.optim
        models = []
        for i, (w, table) in enumerate(zip(ctx.grid, solved.targets)):
            job_ctx = dataclasses.replace(ctx, train=with_targets(ctx.train, table))
            wt = torch.as_tensor(w, dtype=torch.float32)

            def step_loss(model, batch, wt=wt):
                scores = model(batch.x, batch.mask, wt.to(batch.x.device).expand(batch.x.shape[0], -1))
                target = batch.objectives[..., 0]
                return listnet_dpo_loss(scores, loss.base_scores(batch), target, batch.mask, beta).mean()

            model, took = train_fixed_weight(job_ctx, w, optim, step_loss, desc=f"mopo {i + 1}/{len(ctx.grid)}")
            models.append(model)
            seconds += took
            ctx.log({"mopo_job_seconds": took}, i)
        extra = {"mopo": solved.summary(), "lo": solved.lo.tolist(), "hi": solved.hi.tolist()}
        return GridModels(
            self.name, np.asarray(ctx.grid), models, ctx.base, accounting(seconds, models), architecture(cfg), extra
        )

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> GridModels:
        return GridModels.load(path, base, len(cfg.objectives))

