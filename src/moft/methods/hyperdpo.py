"""HyperDPO (SPEC 5.2): one weight-conditioned scorer for the whole front.

Loss: ``E_{w ~ Dir(alpha)} [ sum_j w_j L_j(s_theta(., w)) + lambda G_w ]`` with ``L_j`` the
listwise DPO loss against the frozen base scorer; model selection by validation hypervolume
over the evaluation grid.

The temperature hypernetwork (``hyperdpo_temp``, Algorithm 2) is the same method with the
network also conditioned on ``beta / |beta|_1`` and ``beta ~ Unif(box)`` drawn per group; its
scores at any temperature vector come from eq. 19, so one model serves every (w, beta).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from moft.config import ModelConfig, MoftConfig
from moft.data.groups import Batch
from moft.evaluation import Policy, front_metrics
from moft.io import atomic_write_json, read_json
from moft.methods import Accounting, FitContext, temperature_scaled
from moft.methods.common import ObjectiveLoss, new_scorer
from moft.models.scorer import BaseScorer, HyperScorer
from moft.training import fit


def sample_weights(
    rng: np.random.Generator, alpha: float | list[float], m: int, n: int, per_group: bool
) -> np.ndarray:
    """(n, m) weight vectors from Dir(alpha): one per group, or one shared by the whole step.

    Drawn from the fit's own numpy generator, not torch's global one, so that concurrent jobs
    stay reproducible.
    """
    conc = np.asarray(alpha if isinstance(alpha, list) else [alpha] * m, dtype=np.float64)
    w = rng.dirichlet(conc, size=n if per_group else 1)
    return np.repeat(w, n, axis=0) if not per_group else w


def sample_temperatures(
    rng: np.random.Generator, betas: np.ndarray, low: float, high: float, n: int
) -> np.ndarray:
    """(n, m) temperature vectors ``beta_j * u_j`` with ``u ~ Unif([low, high]^m)`` (D(beta))."""
    return betas[None, :] * rng.uniform(low, high, size=(n, len(betas)))


def default_eval_betas(m: int, low: float, high: float) -> list[list[float]]:
    """The box centre and, per objective, that objective hot (``high``) and the others ``low``."""
    centre = [1.0] * m
    corners = [[high if i == j else low for i in range(m)] for j in range(m)]
    return [centre, *corners]


@dataclass
class TrainedHyperDPO:
    model: HyperScorer
    base: BaseScorer
    model_cfg: ModelConfig
    accounting: Accounting
    history: list[dict[str, float]] = field(default_factory=list)
    name: str = "hyperdpo"
    betas: np.ndarray | None = None  # the configured temperatures (temperature hypernetwork)
    eval_betas: list[list[float]] = field(default_factory=list)  # factors of ``betas``

    def scores(self, w: np.ndarray) -> Policy:
        if self.model.temperature:
            return self.at_temperature(w, self.betas)
        weights = torch.as_tensor(np.asarray(w, dtype=np.float32))

        def policy(batch: Batch) -> torch.Tensor:
            wb = weights.to(batch.x.device).expand(batch.x.shape[0], -1)
            return self.model(batch.x, batch.mask, wb)

        return policy

    def at_temperature(self, w: np.ndarray, betas: np.ndarray) -> Policy:
        """Scores at weights ``w`` and the absolute temperature vector ``betas`` (eq. 19)."""
        betas = np.asarray(betas, dtype=np.float32)
        if betas.shape != (self.model.n_objectives,) or not np.all(betas > 0):
            raise ValueError(f"temperatures must be {self.model.n_objectives} values > 0, got {betas.tolist()}")
        weights = torch.as_tensor(np.asarray(w, dtype=np.float32))
        temps = torch.as_tensor(betas)

        def policy(batch: Batch) -> torch.Tensor:
            b = batch.x.shape[0]
            with torch.no_grad():
                base_scores = self.base(batch.x, batch.mask)
            return self.model.at_temperature(
                batch.x,
                batch.mask,
                weights.to(batch.x.device).expand(b, -1),
                temps.to(batch.x.device).expand(b, -1),
                base_scores,
            )

        return policy

    def temperature_fronts(self) -> dict[str, Callable[[np.ndarray], Policy]]:
        """Label -> policy(w) at every evaluation temperature (temperature hypernetwork only)."""
        if not self.model.temperature:
            return {}
        assert self.betas is not None
        return {
            ",".join(f"{f:g}" for f in factors): (
                lambda w, b=self.betas * np.asarray(factors): self.at_temperature(w, b)
            )
            for factors in self.eval_betas
        }

    def policy(self, w: np.ndarray, beta_scale: float = 1.0) -> Policy:
        return temperature_scaled(self.base, self.scores(w), beta_scale)

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.model.state_dict().items()
            if not k.startswith("base.")  # the base scorer is saved by its own stage
        }
        save_file(state, str(out_dir / "model.safetensors"))
        atomic_write_json(
            out_dir / "meta.json",
            {
                "method": self.name,
                "parametrization": self.model.parametrization,
                "conditioning": self.model.conditioning,
                "temperature": self.model.temperature,
                "betas": None if self.betas is None else self.betas.tolist(),
                "eval_betas": self.eval_betas,
                "n_objectives": self.model.n_objectives,
                "model": self.model_cfg.model_dump(),
                "accounting": self.accounting.to_json(),
                "history": self.history,
            },
        )


class HyperDPO:
    name = "hyperdpo"
    requires: tuple[str, ...] = ()
    temperature = False

    def fit(self, ctx: FitContext) -> TrainedHyperDPO:
        hcfg = ctx.cfg.finetune.hyperdpo_temp if self.temperature else ctx.cfg.finetune.hyperdpo
        m = len(ctx.cfg.objectives)
        model = new_scorer(ctx, hcfg.optim.seed, self.temperature)
        base = ctx.base.to(ctx.device).eval()
        objective_loss = ObjectiveLoss(ctx.cfg, base, ctx.device)
        ref = np.asarray(ctx.cfg.evaluate.reference_point or [0.0] * m)
        per_group = hcfg.weight_sampling == "group"
        betas = np.asarray([o.beta for o in ctx.cfg.objectives], dtype=np.float64)

        def step_loss(batch: Batch, rng: np.random.Generator) -> torch.Tensor:
            b = batch.x.shape[0]
            w = sample_weights(rng, hcfg.alpha, m, b, per_group)
            w = torch.as_tensor(w, dtype=torch.float32, device=batch.x.device)
            temps = None
            if self.temperature:
                t = sample_temperatures(rng, betas, hcfg.beta_low, hcfg.beta_high, b)
                temps = torch.as_tensor(t, dtype=torch.float32, device=batch.x.device)
            return objective_loss.weighted(model, batch, w, hcfg.cosine_lambda, temps)

        trained = TrainedHyperDPO(
            model,
            base,
            hcfg.model,
            Accounting(0.0, 1, model.trainable_parameters()),
            name=self.name,
            betas=betas if self.temperature else None,
            eval_betas=eval_betas(ctx.cfg) if self.temperature else [],
        )

        def validate() -> float:
            # the temperature hypernetwork is selected on its mean front over the evaluation
            # temperatures, so that one temperature is not bought with the others
            policies = list(trained.temperature_fronts().values()) or [trained.policy]
            return float(np.mean([
                front_metrics(p, ctx.val, ctx.grid, ctx.cfg.evaluate.k, ctx.device).hypervolume(ref)
                for p in policies
            ]))

        start = time.perf_counter()
        result = fit(model, ctx.train, hcfg.optim, step_loss, validate, ctx.log, self.name, ctx.device)
        trained.accounting = Accounting(time.perf_counter() - start, 1, model.trainable_parameters())
        trained.history = result.history
        return trained

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> TrainedHyperDPO:
        meta = read_json(path / "meta.json")
        model_cfg = ModelConfig(**meta["model"])
        model = HyperScorer(
            base,
            meta["n_objectives"],
            model_cfg,
            meta["parametrization"],
            meta["conditioning"],
            meta.get("temperature", False),
        )
        state = load_file(str(path / "model.safetensors"))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches raise even with strict=False
            raise ValueError(f"{path / 'model.safetensors'} does not fit the architecture in "
                             f"{path / 'meta.json'}: {str(exc).splitlines()[-1].strip()}") from None
        missing = [k for k in missing if not k.startswith("base.")]
        if missing or unexpected:
            raise ValueError(
                f"{path / 'model.safetensors'} does not match a {meta['parametrization']} "
                f"hypernetwork: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.eval()
        betas = meta.get("betas")
        return TrainedHyperDPO(
            model,
            base,
            model_cfg,
            Accounting(**meta["accounting"]),
            meta["history"],
            name=meta.get("method", self.name),
            betas=None if betas is None else np.asarray(betas, dtype=np.float64),
            eval_betas=meta.get("eval_betas", []),
        )


class HyperDPOTemp(HyperDPO):
    """The temperature hypernetwork (HyperDPO Algorithm 2)."""

    name = "hyperdpo_temp"
    temperature = True


def eval_betas(cfg: MoftConfig) -> list[list[float]]:
    t = cfg.finetune.hyperdpo_temp
    return t.eval_betas or default_eval_betas(len(cfg.objectives), t.beta_low, t.beta_high)
