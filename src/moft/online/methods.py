"""The online methods behind the LM method interface (:class:`moft.llm.methods.LMMethod`), so the
pipeline's finetune and evaluate stages run them like the offline ones:

- ``mo_odpo``: MO-ODPO (prompt-conditioned online DPO, one model);
- ``odpo_soup``: one online-DPO model per objective, LoRA weights interpolated at ``w``;
- ``pmorl``: prompt-conditioned REINFORCE with a leave-one-out control variate;
- ``ric``: Rewards-in-Context (SFT on responses whose prompt states their rewards, online
  rejection-sampling rounds; steered by the rewards a trade-off maps to).

Each objective is scored online by its reward model: ``reward`` when the objective is
model-scored, else its ``eval_reward`` (a human-label objective such as HH-RLHF's harmlessness has
no scorer of its own; the configuration requires one of the two for online methods). The rewards
are normalised with statistics of the training split's responses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moft.config import MoftConfig
from moft.llm.methods import LMFitContext, PolicyFactory, TrainedLMFront
from moft.online.baselines import fit_odpo_soup, fit_pmorl, load_odpo_soup
from moft.online.front import OnlineFront
from moft.online.mo_odpo import fit_mo_odpo
from moft.online.ric import fit_ric, load_ric
from moft.online.rewards import RewardSet
from moft.online.rollout import OnlineTask


def objective_rewards(cfg: MoftConfig) -> list[str]:
    """The reward model that scores each objective's samples online: the one that scores its
    generation front (``eval_reward``, else ``reward``); every objective needs one."""
    from moft.llm.stages import _eval_rewards

    evals = _eval_rewards(cfg)
    missing = [n for n in cfg.objective_names if n not in evals]
    if missing:
        raise ValueError(
            f"objectives {missing} have neither `reward` nor `eval_reward`: the online methods score "
            "their samples with a reward model per objective"
        )
    return [evals[n] for n in cfg.objective_names]


def online_task(ctx: LMFitContext) -> OnlineTask:
    """The training prompts, reward set (normalised on the training responses) and prefix."""
    cfg = ctx.cfg
    prompts, responses, _, _ = ctx.train.flat()
    from moft.llm.stages import reward_model

    models = [reward_model(cfg, o, r) for o, r in zip(cfg.objective_names, objective_rewards(cfg))]
    if cfg.llm.online.normalise == "samples":
        prompts, responses = reference_samples(cfg, ctx.policy_factory, list(ctx.train.prompts))
    rewards = RewardSet.fit(cfg.objective_names, models, prompts, responses)
    prefix = cfg.llm.prefix.build()
    return OnlineTask(cfg, list(ctx.train.prompts), ctx.policy_factory, rewards, prefix, ctx.log)


def reference_samples(cfg: MoftConfig, policy_factory: PolicyFactory, prompts: list) -> tuple[list, list[str]]:
    """``llm.online.samples_per_prompt`` samples of the reference policy per training prompt (the
    rollouts' temperature and length, seeded), flattened as ``(prompts, responses)``."""
    from moft.llm.train import LMPolicy
    from moft.online.rollout import sample_responses
    from moft.training import resolve_device

    settings = cfg.llm.online
    model, tokenizer = policy_factory()
    policy = LMPolicy(model, tokenizer, cfg.llm, device=resolve_device(cfg.runtime.device))
    policy.model.to(policy.device)
    flat_prompts, flat = [], []
    for start in range(0, len(prompts), 8):
        batch = prompts[start : start + 8]
        for prompt, samples in zip(batch, sample_responses(policy, batch, settings.samples_per_prompt, settings,
                                                           settings.seed + start)):
            flat_prompts += [prompt] * len(samples)
            flat += samples
    return flat_prompts, flat


@dataclass(frozen=True)
class OnlineMethod:
    name: str
    fit_with: Callable[[OnlineTask, LMFitContext], TrainedLMFront]
    load_with: Callable[[Path, MoftConfig, PolicyFactory], TrainedLMFront]
    requires: tuple[str, ...] = ()

    def fit(self, ctx: LMFitContext) -> TrainedLMFront:
        return self.fit_with(online_task(ctx), ctx)

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> TrainedLMFront:
        return self.load_with(path, cfg, policy_factory)


def _front_loader(method: str) -> Callable[[Path, MoftConfig, PolicyFactory], OnlineFront]:
    return lambda path, cfg, factory: OnlineFront.load(path, cfg, factory, method=method)


def _fit_ric(task: OnlineTask, ctx: LMFitContext) -> TrainedLMFront:
    prompts, responses, _, _ = ctx.train.flat()
    return fit_ric(task, ctx.cfg.llm.ric, ctx.cfg.llm.online, prompts, responses)


ONLINE = (
    OnlineMethod("mo_odpo", lambda task, ctx: fit_mo_odpo(task, ctx.cfg.llm.online), _front_loader("mo_odpo")),
    OnlineMethod("odpo_soup", lambda task, ctx: fit_odpo_soup(task, ctx.cfg.llm.online), load_odpo_soup),
    OnlineMethod("pmorl", lambda task, ctx: fit_pmorl(task, ctx.cfg.llm.online), _front_loader("pmorl")),
    OnlineMethod("ric", _fit_ric, load_ric),
)
