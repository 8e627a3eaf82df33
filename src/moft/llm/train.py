"""What every LM method shares: a policy (one base model, LoRA, optional HPT), its group
log-probabilities, the listwise DPO losses on them and one training loop.

Scores are sequence log-probabilities ``s(y | x)`` (SPEC 5.1); the reference scores are
``groups.ref_logps``, computed once by the base stage and never recomputed here. Losses come
from :mod:`moft.losses`, the module the LTR methods use, so both tracks optimise the same thing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from peft import PeftModel
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from moft.config import LLMConfig, LLMTrainSettings, LoraSettings, MoftConfig
from moft.llm.data import PreferenceGroups
from moft.losses import multi_objective_losses, scalarised_loss
from moft.models.hpt import HyperPromptTuning, generate_with_prefix, shared_forward_logprobs
from moft.models.lm import (
    GLOBAL_RNG_LOCK,
    Prompt,
    add_lora,
    check_state_layout,
    encode_groups,
    load_lora_state,
    lora_state,
    shared_prefix_logprobs,
)
from moft.training import MetricLogger, no_log

MAX_GRAD_NORM = 1.0  # TRL's DPO default (max_grad_norm)
PROMPT_KEY = "prompt."  # prefix of the plain prompt-tuning weights in an adapter state


def new_lora(model: PreTrainedModel, lora: LoraSettings, seed: int) -> PeftModel:
    """Wrap ``model`` with the configured LoRA adapter, initialised from ``seed``.

    PEFT draws LoRA's ``A`` from torch's global generator: the draw is seeded and forked (the
    caller's generator is left untouched) under a lock, so concurrent jobs stay reproducible.
    """
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return add_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)


@dataclass
class LMPolicy:
    """A causal LM with LoRA (and, for HyperDPO, an HPT prefix) that scores preference groups.

    Fronts that hold several adapters share one base model and load the adapter they need per
    call (``adapter=``); ``lock`` serialises those calls, so one policy may serve several fronts
    (DPO Soup scores with its single models' policy) from several threads.
    """

    model: nn.Module  # a PeftModel for training; a plain model scores as the reference policy
    tokenizer: PreTrainedTokenizerBase
    llm: LLMConfig
    device: str = "cpu"
    hpt: HyperPromptTuning | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def conditioned(self) -> bool:
        """Whether the policy reads the trade-off ``w`` (an HPT prefix); fixed-weight policies
        (LoRA, optionally with plain prompt tuning) have their trade-off in their weights."""
        return self.hpt is not None and self.hpt.config.conditioned

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of what a fixed-weight model trains: the LoRA weights and, with plain
        prompt tuning, the prefix (``prompt.<key>``); the unit that DPO Soup interpolates."""
        state = lora_state(self.model)
        if self.hpt is not None and not self.conditioned:
            state.update({f"{PROMPT_KEY}{k}": v.detach().clone() for k, v in self.hpt.state_dict().items()})
        return state

    def load_adapter(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load an :meth:`adapter_state` (layout checked) into the model and the prefix."""
        prompt = {k[len(PROMPT_KEY):]: v for k, v in state.items() if k.startswith(PROMPT_KEY)}
        lora = {k: v for k, v in state.items() if not k.startswith(PROMPT_KEY)}
        has_prompt = self.hpt is not None and not self.conditioned
        if bool(prompt) != has_prompt:
            raise KeyError(
                f"adapter state {'has' if prompt else 'lacks'} prompt-tuning keys ({PROMPT_KEY}*) but the "
                f"policy {'has' if has_prompt else 'has no'} plain prompt-tuning prefix"
            )
        load_lora_state(self.model, lora)
        if prompt:
            assert self.hpt is not None
            check_state_layout(self.hpt.state_dict(), prompt, "prompt-tuning state")
            self.hpt.load_state_dict({k: v.to(self.hpt.prefix.device) for k, v in prompt.items()})

    def trainable(self) -> list[nn.Parameter]:
        modules = [self.model] + ([self.hpt] if self.hpt is not None else [])
        seen = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}
        return list(seen.values())

    def param_groups(self, lr: float, prefix_lr: float | None = None) -> list[dict]:
        """Optimizer groups: the LoRA parameters at ``lr``, the prefix (HPT or plain prompt
        tuning) at ``prefix_lr`` (``lr`` when None); empty groups left out."""
        prefix = [p for p in self.hpt.parameters() if p.requires_grad] if self.hpt is not None else []
        ids = {id(p) for p in prefix}
        rest = [p for p in self.trainable() if id(p) not in ids]
        groups = [{"params": rest, "lr": lr}, {"params": prefix, "lr": prefix_lr or lr}]
        return [g for g in groups if g["params"]]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        if self.hpt is not None:
            self.hpt.train(mode)

    def group_logprobs(
        self, groups: PreferenceGroups, idx: np.ndarray, w: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sequence log-probs ``(B, k)`` of the groups ``idx`` (0 on padding), with gradients.

        ``w`` conditions the HPT prefix: one vector ``(m,)`` or one per group ``(B, m)``; a
        policy without HPT has its trade-off in its weights and takes no ``w``.
        """
        _, responses, rows, slots = groups.flat(idx)
        if not self.conditioned and w is not None:
            raise ValueError("this policy has no HPT prefix: its trade-off is fixed, pass w=None")
        if self.conditioned and w is None:
            raise ValueError("an HPT policy needs the trade-off w")
        # each group's prompt (and prefix) runs once for all its responses
        own = [groups.prompts[g] for g in np.asarray(idx)]
        batch = encode_groups(self.tokenizer, own, responses, rows.tolist(), self.llm.max_prompt_tokens,
                              self.llm.max_response_tokens, self.llm.chat_template)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.hpt is None:
            values = shared_prefix_logprobs(self.model, **batch)
        else:
            if w is not None:  # one vector, or one per group
                w = torch.as_tensor(w, dtype=torch.float32, device=self.device)
            values = shared_forward_logprobs(self.model, self.hpt, **batch, w=w)
        return groups.unflat(values, rows, slots, len(idx))

    def logprobs(
        self,
        groups: PreferenceGroups,
        w: np.ndarray | torch.Tensor | None = None,
        batch_size: int = 8,
        adapter: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Log-probs ``(G, k)`` of every group, on the CPU, without gradients, ``batch_size``
        groups per forward; ``adapter`` (an :meth:`adapter_state`) is loaded first."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = torch.zeros(groups.mask.shape, dtype=torch.float32)
        with self.lock, torch.no_grad():
            if adapter is not None:
                self.load_adapter(adapter)
            self.train(False)
            for idx in groups.batches(batch_size):
                out[torch.as_tensor(idx)] = self.group_logprobs(groups, idx, w).float().cpu()
        return out

    def generate(
        self,
        prompts: Sequence[Prompt],
        w: np.ndarray | torch.Tensor | None = None,
        adapter: Mapping[str, torch.Tensor] | None = None,
    ) -> list[str]:
        """One response per prompt with ``llm.generation``'s settings (greedy or seeded sampling)."""
        g = self.llm.generation
        with self.lock:
            if adapter is not None:
                self.load_adapter(adapter)
            self.train(False)
            return generate_with_prefix(
                self.model,
                self.hpt,
                self.tokenizer,
                list(prompts),
                None if w is None else torch.as_tensor(w, dtype=torch.float32),
                max_new_tokens=g.max_new_tokens,
                do_sample=g.do_sample,
                temperature=g.temperature,
                seed=g.seed,
                chat_template=self.llm.chat_template,
                max_prompt_tokens=self.llm.max_prompt_tokens,
            )


# --------------------------------------------------------------------------------------------
# Losses on LM scores


def objective_betas(cfg: MoftConfig, device: str = "cpu") -> torch.Tensor:
    """The DPO temperatures ``beta_j``, shape ``(m,)``."""
    return torch.tensor([o.beta for o in cfg.objectives], dtype=torch.float32, device=device)


def reference_scores(groups: PreferenceGroups, idx: np.ndarray | None = None) -> torch.Tensor:
    """``groups.ref_logps`` of the groups ``idx`` (all by default): ``(B, k)``."""
    if groups.ref_logps is None:
        raise ValueError(
            "preference groups have no reference log-probs (ref_logps): the base stage computes "
            "them with the reference policy before fine-tuning"
        )
    return groups.ref_logps if idx is None else groups.ref_logps[torch.as_tensor(idx)]


def group_losses(
    scores: torch.Tensor,
    base_scores: torch.Tensor,
    groups: PreferenceGroups,
    idx: np.ndarray,
    betas: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Listwise DPO loss of every objective for the groups ``idx``: ``(B, m)`` and validity ``(B, m)``."""
    t = torch.as_tensor(idx)
    device = scores.device
    valid = groups.valid[t].to(device)
    losses = multi_objective_losses(
        scores,
        base_scores.to(device),
        groups.targets[t].to(device),
        valid,
        groups.mask[t].to(device),
        betas.to(device),
    )
    return losses, valid


def weighted_loss(
    policy: LMPolicy,
    groups: PreferenceGroups,
    idx: np.ndarray,
    w: torch.Tensor,
    betas: torch.Tensor,
    cosine_lambda: float = 0.0,
) -> torch.Tensor:
    """``sum_j w_j L_j (+ lambda G_w)`` on the groups ``idx`` with per-group weights ``w (B, m)``:
    HyperDPO's loss (w also conditions the HPT prefix) and, at a fixed w, DPO-LS's."""
    w = w.to(policy.device)
    scores = policy.group_logprobs(groups, idx, w if policy.conditioned else None)
    losses, valid = group_losses(scores, reference_scores(groups, idx), groups, idx, betas)
    return scalarised_loss(losses, valid, w, cosine_lambda)[0]


def margin_loss(
    policy: LMPolicy,
    groups: PreferenceGroups,
    idx: np.ndarray,
    w: np.ndarray,
    others: torch.Tensor,
    betas: torch.Tensor,
) -> torch.Tensor:
    """MO-DPO (SPEC 5.3): the listwise loss of objective ``i = argmax w`` on the margin-adjusted
    score ``r = (s_theta - s_base - others) / w_i``, where ``others (B, k)`` is
    ``sum_{i' != i} w_i' (s_{e_i'} - s_base)`` from the single-objective models."""
    i = int(np.argmax(w))
    scores = policy.group_logprobs(groups, idx)
    ref = reference_scores(groups, idx).to(scores.device)
    r = (scores - ref - others.to(scores.device)) / float(w[i])
    losses, valid = group_losses(r, torch.zeros_like(r), groups, idx, betas)  # beta_i * r
    unit = torch.zeros(len(idx), len(w), device=r.device)
    unit[:, i] = 1.0
    return scalarised_loss(losses, valid, unit)[0]


def validation_loss(
    policy: LMPolicy, groups: PreferenceGroups, weights: np.ndarray, betas: torch.Tensor, batch_size: int = 8
) -> float:
    """Mean over the rows ``w`` of ``weights (P, m)`` of the w-weighted listwise DPO loss on all of
    ``groups`` (lower is better). An HPT policy is scored at each ``w``; a fixed-weight policy,
    whose scores do not depend on ``w``, is scored once."""
    idx = np.arange(len(groups))
    ref = reference_scores(groups)
    fixed = None if policy.conditioned else policy.logprobs(groups, None, batch_size)
    totals = []
    for w in np.asarray(weights, dtype=np.float32):
        scores = fixed if fixed is not None else policy.logprobs(groups, w, batch_size)
        losses, valid = group_losses(scores, ref, groups, idx, betas.cpu())
        wt = torch.as_tensor(w).expand(len(groups), -1)
        totals.append(scalarised_loss(losses, valid, wt)[0].item())
    return float(np.mean(totals))


# --------------------------------------------------------------------------------------------
# The training loop


@dataclass
class LMTrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per validation
    steps: int = 0
    best_step: int = 0
    best_val_loss: float = math.inf
    seconds: float = 0.0


def train_lm(
    policy: LMPolicy,
    groups: PreferenceGroups,
    settings: LLMTrainSettings,
    step_loss: Callable[[np.ndarray, np.random.Generator], torch.Tensor],
    validate: Callable[[], float],
    log: MetricLogger = no_log,
    desc: str = "train",
    prefix: str = "",
) -> LMTrainResult:
    """AdamW on ``policy``'s trainable parameters (the prefix at ``settings.prefix_lr``) over
    shuffled batches of ``batch_pairs`` groups.

    ``step_loss(idx, rng)`` maps the group indices of a batch to a scalar loss (``rng``, the
    loop's own generator seeded by ``settings.seed``, also serves weight sampling).
    ``validate()`` returns a lower-is-better loss, called after every epoch and once more when
    ``max_steps`` ends an epoch early, or with ``settings.validate_every`` at the start and every
    that many steps (and at the end); the parameters with the best one are restored at the end.
    Per-step ``{prefix}train_loss`` and per-validation ``{prefix}val_loss`` go to ``log``.
    """
    if not len(groups):
        raise ValueError("no training groups: the training split is empty")
    rng = np.random.default_rng(settings.seed)
    params = policy.trainable()
    if not params:
        raise ValueError("the policy has no trainable parameters (LoRA/HPT missing or frozen)")
    opt = torch.optim.AdamW(
        policy.param_groups(settings.lr, settings.prefix_lr), lr=settings.lr, weight_decay=settings.weight_decay
    )
    per_epoch = math.ceil(len(groups) / settings.batch_pairs)
    total = per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    result = LMTrainResult()
    best = [p.detach().clone() for p in params]
    start = time.perf_counter()

    def checkpoint(epoch: int, losses: list[float]) -> None:
        nonlocal best
        policy.train(False)
        val = validate()
        train_loss = float(np.mean(losses)) if losses else float("nan")
        result.history.append({"epoch": epoch, "step": result.steps, "train_loss": train_loss, "val_loss": val})
        log({f"{prefix}val_loss": val}, result.steps)
        if val < result.best_val_loss:
            result.best_val_loss, result.best_step = val, result.steps
            best = [p.detach().clone() for p in params]

    every = settings.validate_every
    if every is not None:
        checkpoint(0, [])  # the starting policy competes too: training must beat it on validation
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    for epoch in range(1, settings.epochs + 1):
        losses: list[float] = []
        for idx in groups.batches(settings.batch_pairs, rng):
            policy.train(True)
            loss = step_loss(idx, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            opt.step()
            result.steps += 1
            losses.append(loss.item())
            log({f"{prefix}train_loss": losses[-1]}, result.steps)
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if every is not None and result.steps % every == 0:
                checkpoint(epoch, losses)
            if result.steps == total:
                break
        if every is None or (result.steps == total and result.steps % every):
            checkpoint(epoch, losses)  # per epoch, or at the end of training unless just validated
        if result.steps == total:
            break
    bar.close()
    with torch.no_grad():
        for p, b in zip(params, best):
            p.copy_(b)
    policy.train(False)
    result.seconds = time.perf_counter() - start
    return result
