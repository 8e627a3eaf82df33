"""What the online methods share: settings, one rollout (condition, sample, score), the policy and
anchor log-probs of the samples, and the training loop.

One step of every online method (MO-ODPO, ODPO single models, P-MORL) on a batch of prompts ``x``:

1. weights ``w`` per prompt (``Dir(alpha)`` quantised, or a fixed vertex ``e_j``);
2. ``x' = p(w) + x`` (:mod:`moft.online.prefix`; unconditioned methods read ``x``);
3. ``k`` samples ``y ~ pi_theta(. | x')`` from the current policy, one batched seeded call;
4. rewards ``r(x, y)`` of the ORIGINAL prompt, normalised, ``(n, k, m)``; ``s = w . r``;
5. ``log pi_theta(y | x')`` (with gradients, LoRA only) and ``log pi_0(y | x')`` of the anchor
   (the same model with the adapter disabled), ``(n, k)`` each;
6. the method's loss on them, one AdamW step.

Log-probs go through :meth:`moft.llm.train.LMPolicy.group_logprobs` on a
:class:`~moft.llm.data.PreferenceGroups` of the samples, so online and offline methods share one
tokenisation (``encode_pairs``) and one scorer (``sequence_logprobs``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from moft.config import LLMConfig, MoftConfig, OnlineSettings
from moft.llm.data import PreferenceGroups
from moft.llm.methods import PolicyFactory
from moft.llm.train import MAX_GRAD_NORM, LMPolicy, new_lora
from moft.metrics.pareto import trade_off_share
from moft.models.hpt import generate_with_prefix
from moft.models.lm import Prompt
from moft.online.prefix import PromptBudget, PromptCutWarning, WeightPrefix, conditioned_prompt, prompt_budget
from moft.online.rewards import RewardSet
from moft.training import MetricLogger, no_log, resolve_device


@dataclass
class OnlineTask:
    """What every online method trains on: the configuration (``llm`` for the model, LoRA,
    token budgets and generation; ``runtime.device``), the TRAINING prompts, a factory of fresh
    reference policies, the objectives' rewards and the weight prefix."""

    cfg: MoftConfig
    prompts: list[Prompt]
    policy_factory: PolicyFactory
    rewards: RewardSet
    prefix: WeightPrefix = field(default_factory=WeightPrefix)
    log: MetricLogger = no_log

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("no training prompts: the online methods sample responses to them")
        if self.rewards.names != self.cfg.objective_names:
            raise ValueError(
                f"reward columns {self.rewards.names} do not match the objectives {self.cfg.objective_names}"
            )

    @property
    def names(self) -> list[str]:
        return self.cfg.objective_names

    def check(self, settings: OnlineSettings) -> None:
        """Settings that only make sense against the configuration."""
        llm = self.cfg.llm
        if settings.max_new_tokens >= llm.max_response_tokens:
            raise ValueError(
                f"online max_new_tokens={settings.max_new_tokens} must be < llm.max_response_tokens="
                f"{llm.max_response_tokens} (a sample and its eos are scored whole)"
            )
        if isinstance(settings.alpha, list) and len(settings.alpha) != len(self.names):
            raise ValueError(f"online alpha has {len(settings.alpha)} values for {len(self.names)} objectives")
        if settings.relabel_weights == "rotate" and settings.relabel > len(self.names) - 1:
            raise ValueError(
                f"online relabel={settings.relabel} with relabel_weights=rotate: {len(self.names)} objectives "
                f"have only {len(self.names) - 1} other rotations of w"
            )

    def check_prompts(self, tokenizer: PreTrainedTokenizerBase, prefix: WeightPrefix | None = None) -> PromptBudget:
        """How the instruction (``prefix``, default the task's) fits the training prompts into
        ``llm.max_prompt_tokens``; a :class:`PromptCutWarning` when it cuts a question."""
        return warn_cut_prompts(self.prompts, self.names, prefix or self.prefix, tokenizer, self.cfg.llm,
                                "training prompts")

    def condition(
        self, prompts: Sequence[Prompt], weights: np.ndarray, tokenizer: PreTrainedTokenizerBase
    ) -> list[Prompt]:
        """``x'`` for every prompt, row ``i`` of ``weights (n, m)`` for prompt ``i``."""
        return conditioned_prompts(prompts, weights, self.names, self.prefix, tokenizer, self.cfg.llm)


def conditioned_prompts(
    prompts: Sequence[Prompt],
    weights: np.ndarray,
    names: Sequence[str],
    prefix: WeightPrefix,
    tokenizer: PreTrainedTokenizerBase,
    llm: LLMConfig,
) -> list[Prompt]:
    """``x' = p(w_i) + x_i`` per prompt (``weights (n, m)``), fitted to ``llm.max_prompt_tokens``."""
    return [
        conditioned_prompt(p, names, w, prefix, tokenizer, llm.max_prompt_tokens, llm.chat_template)
        for p, w in zip(prompts, weights, strict=True)
    ]


def warn_cut_prompts(
    prompts: Sequence[Prompt],
    names: Sequence[str],
    prefix: WeightPrefix,
    tokenizer: PreTrainedTokenizerBase,
    llm: LLMConfig,
    what: str,
) -> PromptBudget:
    """:func:`moft.online.prefix.prompt_budget` of ``prompts``, warned about when a question is cut."""
    budget = prompt_budget(prompts, names, prefix, tokenizer, llm.max_prompt_tokens, llm.chat_template)
    if budget.cut:
        warnings.warn(PromptCutWarning(budget.message(what)), stacklevel=3)
    return budget


def new_online_policy(task: OnlineTask, seed: int) -> LMPolicy:
    """A fresh reference policy with the configured LoRA (no virtual-token prefix: the online
    methods condition through text), on the configured device, in eval mode."""
    model, tokenizer = task.policy_factory()
    policy = LMPolicy(new_lora(model, task.cfg.llm.lora, seed), tokenizer, task.cfg.llm)
    policy.device = resolve_device(task.cfg.runtime.device)
    policy.model.to(policy.device)
    policy.train(False)
    return policy


# --------------------------------------------------------------------------------------------
# One rollout


@dataclass
class Rollout:
    """``n`` prompts, their conditioning and ``k`` scored samples each."""

    prompts: list[Prompt]  # x: what the reward models read
    inputs: list[Prompt]  # x': what the policy reads
    weights: np.ndarray  # (n, m)
    responses: list[list[str]]  # (n, k)
    rewards: np.ndarray  # (n, k, m), normalised

    @property
    def weighted(self) -> np.ndarray:
        """``s = w . r`` per sample, ``(n, k)`` (paper eq. 1)."""
        return np.einsum("nkm,nm->nk", self.rewards, self.weights)


def sample_responses(
    policy: LMPolicy, inputs: Sequence[Prompt], k: int, settings: OnlineSettings, seed: int
) -> list[list[str]]:
    """``k`` samples per input from the current policy, ``(n, k)``, in one batched generation
    seeded by ``seed`` (the global RNG is left untouched)."""
    llm = policy.llm
    with policy.lock:
        policy.train(False)
        texts = generate_with_prefix(
            policy.model,
            None,
            policy.tokenizer,
            list(inputs),
            max_new_tokens=settings.max_new_tokens,
            do_sample=True,
            temperature=settings.temperature,
            seed=seed,
            chat_template=llm.chat_template,
            max_prompt_tokens=llm.max_prompt_tokens,
            num_samples=k,
        )
    return [texts[i * k : (i + 1) * k] for i in range(len(inputs))]


def score_responses(
    rewards: RewardSet, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]]
) -> np.ndarray:
    """Normalised rewards ``(n, k, m)`` of every sample against its ORIGINAL prompt ``x``."""
    k = len(responses[0])
    flat_prompts = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat = [r for rs in responses for r in rs]
    return rewards.score(flat_prompts, flat).reshape(len(prompts), k, -1)


def relabelled(batch: Rollout, task: OnlineTask, extra: np.ndarray, tokenizer: PreTrainedTokenizerBase) -> Rollout:
    """``batch`` followed by its samples again under other weights: ``extra (r, n, m)`` holds
    ``r`` weight vectors per prompt; copy ``j`` conditions prompt ``i`` on ``extra[j, i]`` and keeps
    its samples and rewards (only ``s = w . r``, and so the pair's order, changes)."""
    n = len(batch.prompts)
    if extra.ndim != 3 or extra.shape[1:] != batch.weights.shape:
        raise ValueError(f"extra weights must be (r, {n}, {batch.weights.shape[1]}), got {extra.shape}")
    weights = np.concatenate([batch.weights, *extra])
    prompts = batch.prompts * (1 + len(extra))
    inputs = batch.inputs + [p for w in extra for p in task.condition(batch.prompts, w, tokenizer)]
    return Rollout(prompts, inputs, weights, batch.responses * (1 + len(extra)),
                   np.concatenate([batch.rewards] * (1 + len(extra))))


def rollout(
    policy: LMPolicy,
    task: OnlineTask,
    prompts: Sequence[Prompt],
    weights: np.ndarray,
    conditioned: bool,
    settings: OnlineSettings,
    seed: int,
) -> Rollout:
    """Condition (when ``conditioned``), sample and score one batch of prompts."""
    prompts = list(prompts)
    inputs = task.condition(prompts, weights, policy.tokenizer) if conditioned else prompts
    responses = sample_responses(policy, inputs, settings.samples_per_prompt, settings, seed)
    return Rollout(prompts, inputs, np.asarray(weights, dtype=np.float64), responses,
                   score_responses(task.rewards, prompts, responses))


def response_groups(
    inputs: Sequence[Prompt], responses: Sequence[Sequence[str]], names: Sequence[str]
) -> PreferenceGroups:
    """The samples as :class:`PreferenceGroups` (one group per prompt, ``k`` responses), to be
    scored by :class:`LMPolicy`; they carry responses, not preferences (no valid targets)."""
    n, k, m = len(inputs), len(responses[0]), len(names)
    if any(len(r) != k for r in responses):
        raise ValueError(f"every prompt needs the same number of samples ({k})")
    return PreferenceGroups(
        prompt_ids=[str(i) for i in range(n)],
        prompts=list(inputs),
        responses=[list(r) for r in responses],
        targets=torch.zeros(n, k, m),
        valid=torch.zeros(n, m, dtype=torch.bool),
        mask=torch.ones(n, k, dtype=torch.bool),
        objectives=list(names),
    )


def sequence_scores(policy: LMPolicy, groups: PreferenceGroups) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log pi_theta(y | x'), log pi_0(y | x'))``, each ``(n, k)``: the policy's with gradients
    (train mode), the anchor's (adapter disabled, eval mode) without."""
    with policy.model.disable_adapter():
        anchor = policy.logprobs(groups, batch_size=len(groups)).to(policy.device)
    policy.train(True)
    return policy.group_logprobs(groups, np.arange(len(groups))), anchor


# --------------------------------------------------------------------------------------------
# The training loop

WeightSampler = Callable[[np.random.Generator, int], np.ndarray]  # (rng, n) -> (n, m) weights
OnlineLoss = Callable[
    [Rollout, torch.Tensor, torch.Tensor, OnlineSettings], tuple[torch.Tensor | None, dict[str, float]]
]  # (rollout, logps, anchor logps, settings) -> (loss or None when nothing to learn, metrics)


@dataclass
class OnlineResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per step
    steps: int = 0
    updates: int = 0  # steps with a loss (a step whose pairs all tie makes no update)
    seconds: float = 0.0


def prompt_batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of ``size`` prompt indices: epochs of seeded permutations (the last batch
    of an epoch may be smaller)."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n, size):
            yield order[start : start + size]


def relabel_weights(
    w: np.ndarray, r: int, settings: OnlineSettings, weights: WeightSampler, rng: np.random.Generator
) -> np.ndarray:
    """``(r, n, m)`` extra weights for relabelling the step's samples drawn under ``w (n, m)``:
    fresh draws of ``weights`` or, with ``relabel_weights: rotate``, ``w`` rotated by 1..r places."""
    if settings.relabel_weights == "rotate":
        return np.stack([np.roll(w, j, axis=1) for j in range(1, r + 1)])
    return np.stack([weights(rng, len(w)) for _ in range(r)])


def train_online(
    policy: LMPolicy,
    task: OnlineTask,
    settings: OnlineSettings,
    weights: WeightSampler,
    conditioned: bool,
    loss_fn: OnlineLoss,
    desc: str,
    metric_prefix: str = "",
    relabel: int = 0,
) -> OnlineResult:
    """``settings.steps`` online steps (module docstring) with AdamW on the policy's LoRA.

    ``relabel > 0`` (MO-ODPO's ``llm.online.relabel``; conditioned methods with an off-policy-safe
    loss only) trains each step's samples again under ``relabel`` more weight vectors per prompt
    (:func:`relabelled`); the rollout metrics stay those of the sampled batch.

    Per step the metrics ``loss`` (absent without an update), ``weighted_reward`` (mean
    ``w . r``), ``reward_<objective>`` (mean normalised reward), ``kl`` (mean
    ``log pi_theta - log pi_0`` of the samples, a sequence-level KL estimate) and the loss's own
    go to ``task.log`` with ``metric_prefix`` and into the returned history.
    """
    task.check(settings)
    if conditioned:
        task.check_prompts(policy.tokenizer)
    rng = np.random.default_rng(settings.seed)
    params = policy.trainable()
    if not params:
        raise ValueError("the policy has no trainable parameters (LoRA missing or frozen)")
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    batches = prompt_batches(len(task.prompts), settings.prompts_per_step, rng)
    result = OnlineResult()
    start = time.perf_counter()
    bar = tqdm(total=settings.steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    for step in range(1, settings.steps + 1):
        idx = next(batches)
        w = weights(rng, len(idx))
        seed = int(rng.integers(2**31 - 1))
        batch = rollout(policy, task, [task.prompts[i] for i in idx], w, conditioned, settings, seed)
        trained = batch
        if relabel:
            trained = relabelled(batch, task, relabel_weights(w, relabel, settings, weights, rng), policy.tokenizer)
        logps, anchor = sequence_scores(policy, response_groups(trained.inputs, trained.responses, task.names))
        loss, metrics = loss_fn(trained, logps, anchor, settings)
        logps, anchor = logps[: len(idx)], anchor[: len(idx)]
        if loss is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            opt.step()
            result.updates += 1
            metrics["loss"] = loss.item()
        policy.train(False)
        metrics.update(rollout_metrics(batch, logps, anchor, task.names))
        result.steps = step
        result.history.append({"step": step, **metrics})
        task.log({f"{metric_prefix}{k}": v for k, v in metrics.items()}, step)
        bar.update()
        if "loss" in metrics:
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", reward=f"{metrics['weighted_reward']:.3f}")
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


def rollout_metrics(
    batch: Rollout, logps: torch.Tensor, anchor: torch.Tensor, names: Sequence[str]
) -> dict[str, float]:
    """Mean weighted reward, mean normalised reward per objective, the share of sample pairs
    that trade the objectives off (``trade_offs``: the only pairs whose order depends on ``w``)
    and the KL estimate."""
    out = {"weighted_reward": float(batch.weighted.mean())}
    out.update({f"reward_{n}": float(batch.rewards[..., j].mean()) for j, n in enumerate(names)})
    out["trade_offs"] = trade_off_share(batch.rewards)
    out["kl"] = float((logps.detach() - anchor).mean())
    return out
