"""The online baselines of MO-ODPO (paper section 4.2), on the same rollouts as MO-ODPO.

- **ODPO soups**: one online-DPO LoRA model per objective (``w = e_j``: the pair is ordered by
  objective ``j``'s reward alone, prompts carry no prefix), then ``theta_w = sum_j w_j theta_j``
  over the LoRA weights at inference (:class:`moft.llm.methods.Soup`). One job training its ``m``
  models side by side.
- **P-MORL** (prompt-conditioned RLFT, Jang et al. 2023, with the paper's weight prefix):
  REINFORCE with a control variate on the KL-regularised weighted reward (paper 4.3: REINFORCE
  with control variate, Williams 1992 / Ahmadian et al. 2024; KL coefficient 0.01 as for DPO).
  For sample ``i`` of a prompt with ``k`` samples,

      R_i = w . r(x, y_i) - beta (log pi_theta(y_i|x') - log pi_0(y_i|x'))      (R held constant)
      b_i = (1 / (k - 1)) sum_{j != i} R_j                                     (leave-one-out mean)
      L   = -(1 / nk) sum_i (R_i - b_i) log pi_theta(y_i | x')

  The leave-one-out mean of the other samples of the same prompt is an unbiased baseline (it does
  not depend on ``y_i``), unlike the plain per-prompt mean. Inference as MO-ODPO's
  (:class:`OnlineFront`). One job.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from moft.config import MoftConfig
from moft.llm.methods import GridAdapters, PolicyFactory, Soup
from moft.methods import Accounting
from moft.models.lm import trainable_parameters
from moft.online.front import OnlineFront
from moft.online.mo_odpo import dirichlet_sampler, mo_odpo_loss
from moft.config import OnlineSettings
from moft.online.rollout import OnlineTask, Rollout, new_online_policy, train_online

ODPO_SOUP = "odpo_soup"


def reinforce_loss(
    logps: torch.Tensor, anchor: torch.Tensor, rewards: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """P-MORL's loss (module docstring) on ``(n, k)`` log-probs, anchor log-probs and weighted
    rewards; returns ``(loss, advantages R - b (n, k))``."""
    k = logps.shape[1]
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs >= 2 samples per prompt, got {k}")
    regularised = rewards.to(logps) - beta * (logps.detach() - anchor)  # R, (n, k)
    baseline = (regularised.sum(1, keepdim=True) - regularised) / (k - 1)  # b, (n, k)
    advantages = regularised - baseline
    return -(advantages * logps).mean(), advantages


def pmorl_loss(
    batch: Rollout, logps: torch.Tensor, anchor: torch.Tensor, settings: OnlineSettings
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`reinforce_loss` on a rollout's weighted rewards ``w . r``."""
    rewards = torch.as_tensor(batch.weighted, dtype=torch.float32, device=logps.device)
    loss, advantages = reinforce_loss(logps, anchor, rewards, settings.beta)
    return loss, {"advantage_std": float(advantages.std())}


def fit_pmorl(task: OnlineTask, settings: OnlineSettings) -> OnlineFront:
    """Train one prompt-conditioned LoRA policy with REINFORCE (P-MORL). One job."""
    policy = new_online_policy(task, settings.seed)
    result = train_online(policy, task, settings, dirichlet_sampler(task, settings), True, pmorl_loss, "pmorl")
    accounting = Accounting(result.seconds, 1, trainable_parameters(policy.model))
    return OnlineFront(policy, task.names, task.prefix, accounting, result.history, task.rewards.stats(), "pmorl")


def fit_odpo_soup(task: OnlineTask, settings: OnlineSettings) -> Soup:
    """One online-DPO model per objective (``settings.soup_steps`` steps each, by default
    ``steps / m``: the soup costs what one MO-ODPO model does), each on its own policy from the
    same initial adapter and seed, trained concurrently (one thread each, the job's torch
    threads split between them); the soup interpolates their LoRA weights at ``w``. One job of
    ``m`` models: training them side by side keeps the job from being the pipeline's critical
    path when the other jobs are done and cores would stand idle."""
    m = len(task.names)
    units = np.eye(m)
    each = settings.model_copy(update={"steps": settings.soup_steps or math.ceil(settings.steps / m)})

    def single(j: int):
        policy = new_online_policy(task, settings.seed)
        vertex = units[j]
        result = train_online(
            policy,
            task,
            each,
            lambda rng, n: np.tile(vertex, (n, 1)),
            False,
            mo_odpo_loss,
            f"{ODPO_SOUP} {j + 1}/{m}",
            metric_prefix=f"job{j}_",
        )
        return policy, result

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // m))  # process-wide: m trainings share the job's cores
    try:
        with ThreadPoolExecutor(max_workers=m, thread_name_prefix=ODPO_SOUP) as pool:
            trained = list(pool.map(single, range(m)))
    finally:
        torch.set_num_threads(threads)
    states = [policy.adapter_state() for policy, _ in trained]
    history = [{"job": j, "w": units[j].tolist(), "seconds": r.seconds, "history": r.history}
               for j, (_, r) in enumerate(trained)]
    policy = trained[0][0]
    accounting = Accounting(sum(r.seconds for _, r in trained), m, m * trainable_parameters(policy.model))
    cfg = task.cfg
    singles = GridAdapters(ODPO_SOUP, units, states, policy, task.names, cfg.llm.lora, accounting, history)
    return Soup(singles, name=ODPO_SOUP)


def load_odpo_soup(path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> Soup:
    """A soup saved by ``Soup.save`` (its single models' adapters)."""
    return Soup(GridAdapters.load(path, cfg, policy_factory, ODPO_SOUP), name=ODPO_SOUP)
