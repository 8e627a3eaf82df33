"""Pieces every LTR method shares: the weighted listwise DPO loss on a batch, fixed-weight
training (the baselines' unit of work) and checkpoints of several scorers in one file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from moft.config import ModelConfig, MoftConfig, OptimConfig
from moft.data.groups import Batch
from moft.evaluation import group_metrics
from moft.losses import listnet_loss, multi_objective_losses, normalise_labels, scalarised_loss
from moft.methods import Accounting, FitContext
from moft.models.scorer import BaseScorer, HyperScorer
from moft.training import fit


def objective_targets(batch: Batch, label_norms: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised ListNet targets of every objective: (B, n, m) and validity (B, m)."""
    pairs = [
        normalise_labels(batch.objectives[..., j], batch.mask, kind)
        for j, kind in enumerate(label_norms)
    ]
    return torch.stack([t for t, _ in pairs], -1), torch.stack([v for _, v in pairs], -1)


class ObjectiveLoss:
    """Per-group listwise DPO losses of every objective for a scorer on a batch."""

    def __init__(self, cfg: MoftConfig, base: BaseScorer, device: str):
        self.base = base
        self.norms = [o.label_norm for o in cfg.objectives]
        self.betas = torch.tensor([o.beta for o in cfg.objectives], device=device)

    def base_scores(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            return self.base(batch.x, batch.mask)

    def group_losses(
        self, model: HyperScorer, batch: Batch, w: torch.Tensor, betas: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, m) losses and validity of ``model`` conditioned on per-group weights ``w`` (B, m).

        With per-group temperatures ``betas`` (B, m) the model is a temperature hypernetwork
        scored by eq. 19 and each objective's loss uses that group's temperature (eq. 20).
        """
        base_scores = self.base_scores(batch)
        targets, valid = objective_targets(batch, self.norms)
        if betas is None:
            scores, betas = model(batch.x, batch.mask, w, base_scores), self.betas
        else:
            scores = model.at_temperature(batch.x, batch.mask, w, betas, base_scores)
        return multi_objective_losses(scores, base_scores, targets, valid, batch.mask, betas), valid

    def weighted(
        self,
        model: HyperScorer,
        batch: Batch,
        w: torch.Tensor,
        cosine_lambda: float = 0.0,
        betas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sum_j w_j L_j (+ lambda G_w)``: the HyperDPO loss at ``w``, and DPO-LS's loss."""
        losses, valid = self.group_losses(model, batch, w, betas)
        return scalarised_loss(losses, valid, w, cosine_lambda)[0]

    def margin(
        self, model: HyperScorer, batch: Batch, w: np.ndarray, singles: list[HyperScorer]
    ) -> torch.Tensor:
        """MO-DPO (SPEC 5.3): objective ``i = argmax w`` on the margin-adjusted score
        ``r = (s_theta - s_base - sum_{i' != i} w_i' (s_{e_i'} - s_base)) / w_i``."""
        i = int(np.argmax(w))
        b = batch.x.shape[0]
        wt = torch.as_tensor(w, dtype=torch.float32, device=batch.x.device).expand(b, -1)
        base_scores = self.base_scores(batch)
        with torch.no_grad():
            others = sum(
                float(w[j]) * (singles[j](batch.x, batch.mask, wt, base_scores) - base_scores)
                for j in range(len(w))
                if j != i and w[j] > 0
            )
        r = (model(batch.x, batch.mask, wt, base_scores) - base_scores - others) / float(w[i])
        target, valid = normalise_labels(batch.objectives[..., i], batch.mask, self.norms[i])
        per_group = listnet_loss(self.betas[i] * r, target, batch.mask)
        return per_group[valid].mean() if valid.any() else per_group.sum() * 0.0


_INIT_LOCK = threading.Lock()


def new_scorer(ctx: FitContext, seed: int, temperature: bool = False) -> HyperScorer:
    """The architecture every method trains: HyperDPO's hypernetwork (fixed w for baselines).

    Seeding and initialisation hold a lock: concurrent jobs (Prefect runs methods in threads)
    share torch's global generator, and an interleaved draw would make runs irreproducible.
    """
    h = ctx.cfg.finetune.hyperdpo_temp if temperature else ctx.cfg.finetune.hyperdpo
    with _INIT_LOCK:
        torch.manual_seed(seed)
        model = HyperScorer(
            ctx.base, len(ctx.cfg.objectives), h.model, h.parametrization, h.conditioning, temperature
        )
    return model.to(ctx.device)


def fixed_weight_policy(model: HyperScorer, w: np.ndarray) -> Callable[[Batch], torch.Tensor]:
    weights = torch.as_tensor(np.asarray(w, dtype=np.float32))

    def policy(batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask, weights.to(batch.x.device).expand(batch.x.shape[0], -1))

    return policy


def train_fixed_weight(
    ctx: FitContext,
    w: np.ndarray,
    optim: OptimConfig,
    step_loss: Callable[[HyperScorer, Batch], torch.Tensor],
    desc: str,
) -> tuple[HyperScorer, float]:
    """Train one scorer at a fixed trade-off ``w``; select it by validation ``w . NDCG``.

    Returns the model and its wall time.
    """
    model = new_scorer(ctx, optim.seed)
    k = ctx.cfg.evaluate.k

    def validate() -> float:
        metrics = group_metrics(fixed_weight_policy(model, w), ctx.val, k, device=ctx.device)
        return float(np.dot(w, np.nan_to_num(np.nanmean(metrics.objectives, axis=0))))

    start = time.perf_counter()
    fit(model, ctx.train, optim, lambda batch, rng: step_loss(model, batch), validate, desc=desc, device=ctx.device)
    return model, time.perf_counter() - start


def save_scorers(path: Path, models: list[HyperScorer]) -> None:
    """Several scorers of one architecture in one safetensors file (base weights left out)."""
    state = {
        f"{i}.{k}": v.detach().cpu().contiguous()
        for i, model in enumerate(models)
        for k, v in model.state_dict().items()
        if not k.startswith("base.")
    }
    save_file(state, str(path))


def load_scorers(path: Path, n: int, build: Callable[[], HyperScorer]) -> list[HyperScorer]:
    state = load_file(str(path))
    models = []
    for i in range(n):
        model = build()
        part = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)}
        try:
            missing, unexpected = model.load_state_dict(part, strict=False)
        except RuntimeError as exc:
            raise ValueError(f"{path}: scorer {i} does not fit the architecture: {exc}") from None
        missing = [m for m in missing if not m.startswith("base.")]
        if missing or unexpected:
            raise ValueError(f"{path}: scorer {i}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        models.append(model.eval())
    return models


def architecture(cfg: MoftConfig) -> dict:
    h = cfg.finetune.hyperdpo
    return {"model": h.model.model_dump(), "parametrization": h.parametrization, "conditioning": h.conditioning}


def build_from(meta: dict, base: BaseScorer, m: int) -> Callable[[], HyperScorer]:
    arch = meta["architecture"]
    return lambda: HyperScorer(base, m, ModelConfig(**arch["model"]), arch["parametrization"], arch["conditioning"])


def accounting(seconds: float, models: list[HyperScorer]) -> Accounting:
    return Accounting(seconds, len(models), sum(m.trainable_parameters() for m in models))
