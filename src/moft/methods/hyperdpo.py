"""HyperDPO (SPEC 5.2): one weight-conditioned scorer for the whole front.

Loss: ``E_{w ~ Dir(alpha)} [ sum_j w_j L_j(s_theta(., w)) + lambda G_w ]`` with ``L_j`` the
listwise DPO loss against the frozen base scorer; model selection by validation hypervolume
over the evaluation grid.
"""

from __future__ import annotations

import time
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


@dataclass
class TrainedHyperDPO:
    model: HyperScorer
    base: BaseScorer
    model_cfg: ModelConfig
    accounting: Accounting
    history: list[dict[str, float]] = field(default_factory=list)
    name: str = "hyperdpo"

    def scores(self, w: np.ndarray) -> Policy:
        weights = torch.as_tensor(np.asarray(w, dtype=np.float32))

        def policy(batch: Batch) -> torch.Tensor:
            wb = weights.to(batch.x.device).expand(batch.x.shape[0], -1)
            return self.model(batch.x, batch.mask, wb)

        return policy

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
                "n_objectives": self.model.n_objectives,
                "model": self.model_cfg.model_dump(),
                "accounting": self.accounting.to_json(),
                "history": self.history,
            },
        )


class HyperDPO:
    name = "hyperdpo"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: FitContext) -> TrainedHyperDPO:
        hcfg = ctx.cfg.finetune.hyperdpo
        m = len(ctx.cfg.objectives)
        model = new_scorer(ctx, hcfg.optim.seed)
        base = ctx.base.to(ctx.device).eval()
        objective_loss = ObjectiveLoss(ctx.cfg, base, ctx.device)
        ref = np.asarray(ctx.cfg.evaluate.reference_point or [0.0] * m)
        per_group = hcfg.weight_sampling == "group"

        def step_loss(batch: Batch, rng: np.random.Generator) -> torch.Tensor:
            w = sample_weights(rng, hcfg.alpha, m, batch.x.shape[0], per_group)
            w = torch.as_tensor(w, dtype=torch.float32, device=batch.x.device)
            return objective_loss.weighted(model, batch, w, hcfg.cosine_lambda)

        trained = TrainedHyperDPO(
            model, base, hcfg.model, Accounting(0.0, 1, model.trainable_parameters())
        )

        def validate() -> float:
            front = front_metrics(trained.policy, ctx.val, ctx.grid, ctx.cfg.evaluate.k, ctx.device)
            return front.hypervolume(ref)

        start = time.perf_counter()
        result = fit(model, ctx.train, hcfg.optim, step_loss, validate, ctx.log, "hyperdpo", ctx.device)
        trained.accounting = Accounting(time.perf_counter() - start, 1, model.trainable_parameters())
        trained.history = result.history
        return trained

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> TrainedHyperDPO:
        meta = read_json(path / "meta.json")
        model_cfg = ModelConfig(**meta["model"])
        model = HyperScorer(
            base, meta["n_objectives"], model_cfg, meta["parametrization"], meta["conditioning"]
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
        return TrainedHyperDPO(
            model, base, model_cfg, Accounting(**meta["accounting"]), meta["history"]
        )
