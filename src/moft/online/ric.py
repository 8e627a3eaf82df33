"""Rewards-in-Context (RiC; Yang et al. 2024), the MO-ODPO paper's prompt-based baseline.

RiC conditions the policy on the REWARDS a response should reach instead of on weights. Training
is supervised only:

1. **Offline SFT**: every training response ``y`` to a prompt ``x`` is scored by the objectives'
   reward models (normalised like every online method's, :class:`moft.online.rewards.RewardSet`)
   and the policy learns ``log pi(y | q(r(x, y)) + x)``, where ``q(r)`` writes the reward values
   into the same instruction template as MO-ODPO's weights (``llm.prefix``), rounded to
   ``llm.ric.decimals``.
2. **Online rounds** (RiC's online stage with multi-objective rejection sampling): for sampled
   training prompts, a trade-off ``w ~ Dir(alpha)`` is mapped to desired rewards ``f(w)``, the
   policy samples responses to ``q(f(w)) + x``, the samples are scored, the round keeps the
   non-empty samples on the Pareto front of its own rewards (none of them dominated by another
   sample of the round; an empty answer, which a length reward would keep, is no answer) and
   the policy is fine-tuned on the augmented set: the offline examples and every round's kept
   samples, relabelled with the rewards they actually reached (fine-tuning on the round's few
   kept samples alone over-fits them: with two kept samples SmolLM2 learnt to answer nothing).
3. **Inference** at ``w``: the prompt states ``f(w)``, RiC's preference-to-reward mapping with
   ``N`` objectives and the training rewards' range ``[lo_j, hi_j]``::

       f_j(w) = hi_j                                   if w_j >= 1 / N
       f_j(w) = lo_j + N w_j (hi_j - lo_j)             otherwise

   (an objective with at least its fair share of weight is asked for its best value; the others
   are lowered in proportion to their weight).

The trained policy is served through :class:`RicFront`, an :class:`OnlineFront` whose prefix
writes ``f(w)``; its CE is measured against the anchor on the same conditioned prompt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from moft.config import MoftConfig, OnlineSettings, RicSettings
from moft.llm.methods import PolicyFactory
from moft.llm.train import MAX_GRAD_NORM, LMPolicy
from moft.methods import Accounting
from moft.metrics.pareto import non_dominated
from moft.models.lm import Prompt, encode_pairs, sequence_logprobs, trainable_parameters
from moft.online.front import OnlineFront
from moft.online.mo_odpo import dirichlet_sampler
from moft.online.prefix import WeightPrefix, check_simplex
from moft.online.rollout import OnlineTask, conditioned_prompts, new_online_policy, sample_responses, score_responses

RIC = "ric"


def ric_targets(w: Sequence[float] | np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """RiC's preference-to-reward mapping ``f(w)`` (module docstring), ``(m,)``."""
    v = check_simplex(w, "w")
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if low.shape != v.shape or high.shape != v.shape:
        raise ValueError(f"w has {v.size} objectives but the reward range has {low.size} / {high.size}")
    n = v.size
    return np.where(v >= 1.0 / n - 1e-12, high, low + n * v * (high - low))


@dataclass(frozen=True)
class RewardPrefix:
    """The instruction ``q(r)`` that states reward values (RiC), in the template of
    :class:`WeightPrefix` (``llm.prefix``: template, item, separator, position), plus the range of
    the training rewards that :func:`ric_targets` maps ``w`` into."""

    template: str
    item: str
    separator: str
    position: str
    decimals: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        WeightPrefix(self.template, self.item, self.separator, 0.1, self.position)  # validates the formats
        if len(self.low) != len(self.high) or not all(lo <= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"reward range low={self.low} high={self.high}: one lo <= hi per objective")

    @classmethod
    def from_weight_prefix(cls, prefix: WeightPrefix, decimals: int, low, high) -> RewardPrefix:
        return cls(prefix.template, prefix.item, prefix.separator, prefix.position, decimals,
                   tuple(float(x) for x in low), tuple(float(x) for x in high))

    def render(self, names: Sequence[str], values: Sequence[float] | np.ndarray) -> str:
        """``q(r)``: one entry per objective with its reward value."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (len(names),):
            raise ValueError(f"reward values have shape {v.shape}, expected one per objective {list(names)}")
        if not np.isfinite(v).all():
            raise ValueError(f"reward values {v.tolist()} are not finite")
        items = []
        for n, x in zip(names, v):
            text = f"{x:.{self.decimals}f}"
            items.append(self.item.format(name=n, weight="0" if float(text) == 0 else text))  # no "-0.0"
        return self.template.format(weights=self.separator.join(items))

    def targets(self, w: Sequence[float] | np.ndarray) -> np.ndarray:
        return ric_targets(w, np.asarray(self.low), np.asarray(self.high))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardPrefix:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown RiC prefix settings {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**{**data, "low": tuple(data["low"]), "high": tuple(data["high"])})


class RicFront(OnlineFront):
    """A RiC policy: at ``w`` every prompt states the rewards ``f(w)``."""

    prefix_type = RewardPrefix

    def values(self, w: np.ndarray) -> np.ndarray:
        return self.prefix.targets(w)


def sft_loss(policy: LMPolicy, inputs: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
    """Mean per-token negative log-likelihood of each response given its conditioned prompt
    (the policy's tokenisation, eos included), averaged over the batch; with gradients."""
    llm = policy.llm
    batch = encode_pairs(policy.tokenizer, list(inputs), list(responses), llm.max_prompt_tokens,
                         llm.max_response_tokens, llm.chat_template)
    batch = {k: v.to(policy.device) for k, v in batch.items()}
    return -sequence_logprobs(policy.model, **batch, average=True).mean()


def _sft(
    policy: LMPolicy,
    opt: torch.optim.Optimizer,
    inputs: list[Prompt],
    responses: list[str],
    steps: int,
    settings: RicSettings,
    rng: np.random.Generator,
    desc: str,
) -> list[float]:
    """``steps`` AdamW steps on batches of ``settings.batch_size`` drawn (seeded) from the examples."""
    params = policy.trainable()
    losses = []
    order: list[int] = []
    for _ in tqdm(range(steps), desc=desc, unit="step", leave=False, dynamic_ncols=True):
        if len(order) < settings.batch_size:
            order += rng.permutation(len(inputs)).tolist()
        idx, order = order[: settings.batch_size], order[settings.batch_size :]
        policy.train(True)
        loss = sft_loss(policy, [inputs[i] for i in idx], [responses[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        losses.append(loss.item())
    policy.train(False)
    return losses


def pareto_set(rewards: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``rewards (n, m)`` that no other row dominates (maximisation)."""
    return np.flatnonzero(non_dominated(rewards, "max"))


def fit_ric(
    task: OnlineTask, settings: RicSettings, online: OnlineSettings, prompts: Sequence[Prompt], texts: Sequence[str]
) -> RicFront:
    """Offline SFT on the training responses ``texts`` (to ``prompts``, one each) labelled with
    their rewards, then ``settings.online_rounds`` rounds of generation, rejection sampling and
    SFT. One job."""
    if not texts or len(texts) != len(prompts):
        raise ValueError(f"RiC needs one training prompt per response, got {len(prompts)} prompts, {len(texts)} responses")
    start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    policy = new_online_policy(task, settings.seed)
    prompts, texts = list(prompts), list(texts)
    rewards = task.rewards.score(prompts, texts)  # (N, m), normalised
    low, high = rewards.min(0), rewards.max(0)
    prefix = RewardPrefix.from_weight_prefix(task.prefix, settings.decimals, low, high)
    tokenizer = policy.tokenizer
    task.check_prompts(tokenizer, prefix)
    inputs = conditioned_prompts(prompts, rewards, task.names, prefix, tokenizer, task.cfg.llm)
    opt = torch.optim.AdamW(policy.trainable(), lr=settings.lr)
    history: list[dict[str, float]] = []
    losses = _sft(policy, opt, inputs, texts, settings.sft_steps, settings, rng, "ric sft")
    history += [{"stage": 0, "step": i + 1, "loss": x} for i, x in enumerate(losses)]
    for step, loss in enumerate(losses, 1):
        task.log({"sft_loss": loss}, step)
    sampler = dirichlet_sampler(task, online)
    step = len(losses)
    for round_ in range(1, settings.online_rounds + 1):
        idx = rng.choice(len(task.prompts), size=min(settings.online_prompts, len(task.prompts)), replace=False)
        batch = [task.prompts[i] for i in idx]
        w = sampler(rng, len(batch))
        targets = np.stack([prefix.targets(row) for row in w])
        conditioned = conditioned_prompts(batch, targets, task.names, prefix, tokenizer, task.cfg.llm)
        samples = sample_responses(policy, conditioned, online.samples_per_prompt, online, int(rng.integers(2**31 - 1)))
        got = score_responses(task.rewards, batch, samples)  # (n, k, m)
        flat = got.reshape(-1, got.shape[-1])
        k = online.samples_per_prompt
        answered = np.flatnonzero([bool(samples[i // k][i % k].strip()) for i in range(len(flat))])
        keep = answered[pareto_set(flat[answered])] if len(answered) else answered  # an empty answer is none
        kept_prompts = [batch[i // k] for i in keep]
        kept = [samples[i // k][i % k] for i in keep]
        relabelled = conditioned_prompts(kept_prompts, flat[keep], task.names, prefix, tokenizer, task.cfg.llm)
        inputs, texts = inputs + relabelled, texts + kept  # the augmented set: offline data and every round's kept samples
        losses = _sft(policy, opt, inputs, texts, settings.online_steps, settings, rng, f"ric round {round_}")
        metrics = {"kept": float(len(keep)), "sampled": float(len(flat)), "empty": float(len(flat) - len(answered)),
                   **{f"reward_{n}": float(flat[:, j].mean()) for j, n in enumerate(task.names)},
                   "online_loss": float(np.mean(losses))}
        step += len(losses)
        history.append({"stage": round_, "step": step, **metrics})
        task.log(metrics, step)
    accounting = Accounting(time.perf_counter() - start, 1, trainable_parameters(policy.model))
    return RicFront(policy, task.names, prefix, accounting, history, task.rewards.stats(), RIC)


def load_ric(path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> RicFront:
    return RicFront.load(path, cfg, policy_factory, method=RIC)
