"""MO-ODPO (Gupta et al., Algorithm 1; SPEC 5.4): online, prompt-conditioned multi-objective DPO.

Per prompt ``x``: ``w ~ Dir(alpha)`` quantised to 0.1, ``x' = p(w) + x``, two samples
``y_1, y_2 ~ pi_theta(. | x')``, rewards ``r_k(x, y_i)`` of the original prompt, overall scores
``s_i = sum_k w_k r_k(x, y_i)`` (eq. 1), ``(y+, y-)`` by ``s`` (eq. 2; equal scores are a tie and the
prompt is skipped), and the DPO loss against the frozen anchor ``pi_0`` (the reference model, i.e.
the policy with its LoRA disabled) on the same ``x'`` (eq. 3):

    L = -log sigmoid( beta (log pi_theta(y+|x') - log pi_0(y+|x')) - beta (log pi_theta(y-|x') - log pi_0(y-|x')) )

With ``k > 2`` samples the pair is the best and the worst by ``s``. With ``llm.online.relabel``
the same samples are also ordered and trained under further weights drawn from ``Dir(alpha)``, each
on its own conditioned prompt (hindsight relabelling, an extension: the paper uses one ``w`` per
sampled pair).
"""

from __future__ import annotations

import numpy as np
import torch

from moft.losses import dpo_loss
from moft.methods import Accounting
from moft.models.lm import trainable_parameters
from moft.config import OnlineSettings
from moft.online.front import OnlineFront
from moft.online.prefix import sample_weights
from moft.online.rollout import (
    OnlineTask,
    Rollout,
    WeightSampler,
    new_online_policy,
    train_online,
)


def preference_pairs(weighted: np.ndarray, tie_tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(chosen, rejected, keep)`` per prompt from the weighted rewards ``s (n, k)``: the indices
    of the best and the worst sample, and False where ``s+ - s- <= tie_tolerance`` (a tie)."""
    chosen, rejected = weighted.argmax(1), weighted.argmin(1)
    rows = np.arange(len(weighted))
    keep = weighted[rows, chosen] - weighted[rows, rejected] > tie_tolerance
    return chosen, rejected, keep


def mo_odpo_loss(
    batch: Rollout, logps: torch.Tensor, anchor: torch.Tensor, settings: OnlineSettings
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Mean DPO loss over the prompts whose samples do not tie (None when all tie), and metrics:
    ``ties``, ``pairs``, ``accuracy`` (share of pairs the implicit reward
    ``beta (log pi_theta - log pi_0)`` already orders like ``s``) and its mean ``margin``."""
    chosen, rejected, keep = preference_pairs(batch.weighted, settings.tie_tolerance)
    rows = np.flatnonzero(keep)
    metrics = {"ties": float(len(keep) - len(rows)), "pairs": float(len(rows))}
    if not len(rows):
        return None, metrics
    r = torch.as_tensor(rows, device=logps.device)
    c = torch.as_tensor(chosen[rows], device=logps.device)
    j = torch.as_tensor(rejected[rows], device=logps.device)
    losses = dpo_loss(logps[r, c], logps[r, j], anchor[r, c], anchor[r, j], settings.beta)
    with torch.no_grad():
        margin = settings.beta * ((logps[r, c] - anchor[r, c]) - (logps[r, j] - anchor[r, j]))
    metrics.update(accuracy=float((margin > 0).float().mean()), margin=float(margin.mean()))
    return losses.mean(), metrics


def dirichlet_sampler(task: OnlineTask, settings: OnlineSettings) -> WeightSampler:
    """Per-prompt ``w ~ Dir(alpha)`` quantised to the prefix's step."""
    m = len(task.names)
    return lambda rng, n: sample_weights(rng, settings.alpha, m, n, task.prefix.step)


def fit_mo_odpo(task: OnlineTask, settings: OnlineSettings) -> OnlineFront:
    """Train one prompt-conditioned LoRA policy with MO-ODPO. One job."""
    policy = new_online_policy(task, settings.seed)
    result = train_online(
        policy, task, settings, dirichlet_sampler(task, settings), True, mo_odpo_loss, "mo_odpo", relabel=settings.relabel
    )
    accounting = Accounting(result.seconds, 1, trainable_parameters(policy.model))
    return OnlineFront(policy, task.names, task.prefix, accounting, result.history, task.rewards.stats(), "mo_odpo")
