"""The LM methods of SPEC 5.2-5.3 behind one interface, mirroring :mod:`moft.methods`.

A method's ``fit`` turns an :class:`LMFitContext` into a :class:`TrainedLMFront`, whose
``logprobs(groups, w)`` and ``generate(prompts, w)`` give the policy at one trade-off ``w``:

- ``hyperdpo``: one LoRA + Hyper Prompt Tuning model; ``w`` enters only through the HPT prefix,
  drawn from ``Dir(alpha)`` per group (or per step) during training. One job.
- ``single_objective``: one LoRA model per objective (``w = e_j``), the prerequisite of DPO Soup
  and MO-DPO. ``m`` jobs.
- ``dpo_ls``: one LoRA model per grid point trained on ``sum_j w_j L_j``. ``P`` jobs, vertices
  included (as on the LTR track).
- ``dpo_soup``: the single models' adapters interpolated at ``w``. No job of its own; its cost is
  the single models' cost.
- ``mo_dpo``: one margin-adjusted LoRA model per interior grid point (objective ``argmax w``);
  at a vertex the margin vanishes and the single model is reused. ``m`` + interior jobs.

Every method builds one base model of its own (DPO Soup scores with its single models') and swaps
LoRA states on it instead of holding one model per grid point. Fixed-weight models have LoRA and,
as in the paper ("baseline methods will also be augmented with the prompt tuning of k=8 on top of
LoRA"), a plain prompt-tuning prefix of the same ``k`` tokens that ignores ``w``
(``llm.baseline_prompt_tuning``); it starts from the same ``P`` as HyperDPO's HPT prefix, so all
methods start from the same policy and are compared on one architecture. The base stage computes the
reference log-probs ``groups.ref_logps`` with :meth:`moft.llm.train.LMPolicy.logprobs` on the plain
model, so that they share the methods' tokenisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from moft.config import LoraSettings, MoftConfig
from moft.io import atomic_dir, atomic_write_json, read_json
from moft.llm.data import PreferenceGroups
from moft.llm.train import (
    LMPolicy,
    margin_loss,
    new_lora,
    objective_betas,
    reference_scores,
    train_lm,
    validation_loss,
    weighted_loss,
)
from moft.losses import listnet_dpo_loss
from moft.methods import Accounting
from moft.methods.baselines import grid_index
from moft.methods.hyperdpo import sample_weights
from moft.models.hpt import HPT_META, HyperPromptTuning, load_hyper_lm, save_hyper_lm
from moft.models.lm import (
    Prompt,
    check_state_layout,
    interpolate_lora,
    trainable_parameters,
)
from moft.mopo.targets import mopo_targets
from moft.training import MetricLogger, no_log, resolve_device

PolicyFactory = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]
ADAPTERS_FILE = "adapters.safetensors"
META_FILE = "meta.json"


@dataclass
class LMFitContext:
    cfg: MoftConfig
    train: PreferenceGroups  # with ref_logps
    val: PreferenceGroups  # with ref_logps
    policy_factory: PolicyFactory  # a fresh copy of the reference policy on the CPU
    grid: np.ndarray  # (P, m): the evaluation grid
    log: MetricLogger = no_log
    prerequisites: dict[str, TrainedLMFront] = field(default_factory=dict)  # e.g. single models


class TrainedLMFront(Protocol):
    """A trained method as a front over ``w``. A front whose policy reads a different prompt per
    ``w`` (a text prefix) also has ``reference_logprobs(groups, w)``: the frozen model's
    log-probs on that same prompt, which its CE and log-ratio are measured against instead of
    ``groups.ref_logps``."""

    name: str
    accounting: Accounting

    def logprobs(self, groups: PreferenceGroups, w: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        """Sequence log-probs ``(G, k)`` of the policy at trade-off ``w``, without gradients."""
        ...

    def generate(self, prompts: list[Prompt], w: np.ndarray) -> list[str]:
        """One response per prompt at trade-off ``w`` (``cfg.llm.generation`` settings)."""
        ...

    def save(self, out_dir: Path) -> None: ...


class LMMethod(Protocol):
    name: str
    requires: tuple[str, ...]  # methods whose fronts fit() receives as prerequisites

    def fit(self, ctx: LMFitContext) -> TrainedLMFront: ...

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> TrainedLMFront: ...


# --------------------------------------------------------------------------------------------
# Building policies


def new_policy(ctx: LMFitContext, seed: int, hyper: bool = False) -> LMPolicy:
    """A fresh reference policy with the configured LoRA, on the device, and a prefix: HPT when
    ``hyper``, else plain prompt tuning of the same ``k`` tokens when
    ``llm.baseline_prompt_tuning`` (the paper's fair comparison: both prefixes start from the
    same ``P``, so every method starts from the same policy)."""
    cfg = ctx.cfg
    model, tokenizer = ctx.policy_factory()
    return _on_device(_with_prefix(new_lora(model, cfg.llm.lora, seed), tokenizer, cfg, seed, hyper), cfg)


def _with_prefix(peft_model: Any, tokenizer: PreTrainedTokenizerBase, cfg: MoftConfig, seed: int, hyper: bool) -> LMPolicy:
    h, m = cfg.llm.hpt, len(cfg.objectives)
    hpt = None
    if hyper:
        hpt = HyperPromptTuning.for_model(
            peft_model, m, seed=seed, n_virtual=h.k, rank=h.r, mlp_hidden=h.hidden, init_std=h.init_std
        )
    elif cfg.llm.baseline_prompt_tuning:
        hpt = HyperPromptTuning.plain(peft_model, m, seed=seed, n_virtual=h.k)
    return LMPolicy(peft_model, tokenizer, cfg.llm, hpt=hpt)


def _on_device(policy: LMPolicy, cfg: MoftConfig) -> LMPolicy:
    policy.device = resolve_device(cfg.runtime.device)
    policy.model.to(policy.device)
    if policy.hpt is not None:
        policy.hpt.to(policy.device)
    policy.train(False)
    return policy


def read_saved(path: Path, meta_file: str, weights_file: str, writer: str) -> tuple[dict, Path, Path]:
    """``(meta, meta path, weights path)`` of a saved front; a missing file is named with ``writer``,
    what should have saved it."""
    meta_path, weights_path = path / meta_file, path / weights_file
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: {path} was not saved by {writer}")
    return read_json(meta_path), meta_path, weights_path


def _check_objectives(saved: list[str], cfg: MoftConfig, where: Path) -> None:
    if saved != cfg.objective_names:
        raise ValueError(
            f"{where}: trained for objectives {saved}, but the configuration has {cfg.objective_names}"
        )


# --------------------------------------------------------------------------------------------
# HyperDPO


@dataclass
class HyperLMFront:
    """HyperDPO's one model: LoRA + HPT, conditioned on ``w`` through the prefix."""

    policy: LMPolicy
    objectives: list[str]
    accounting: Accounting
    history: list[dict[str, float]] = field(default_factory=list)
    name: str = "hyperdpo"

    def logprobs(self, groups: PreferenceGroups, w: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        return self.policy.logprobs(groups, np.asarray(w, dtype=np.float32), batch_size)

    def generate(self, prompts: list[Prompt], w: np.ndarray) -> list[str]:
        return self.policy.generate(prompts, np.asarray(w, dtype=np.float32))

    def save(self, out_dir: Path) -> None:
        assert self.policy.hpt is not None
        meta = {
            "method": self.name,
            "objectives": self.objectives,
            "accounting": self.accounting.to_json(),
            "history": self.history,
        }
        save_hyper_lm(out_dir, self.policy.model, self.policy.hpt, meta)


class LMHyperDPO:
    name = "hyperdpo"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: LMFitContext) -> HyperLMFront:
        settings, h = ctx.cfg.llm.hyperdpo, ctx.cfg.finetune.hyperdpo
        m = len(ctx.cfg.objectives)
        policy = new_policy(ctx, settings.seed, hyper=True)
        betas = objective_betas(ctx.cfg, policy.device)
        per_group = h.weight_sampling == "group"

        def step_loss(idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
            w = torch.as_tensor(sample_weights(rng, h.alpha, m, len(idx), per_group), dtype=torch.float32)
            return weighted_loss(policy, ctx.train, idx, w, betas, h.cosine_lambda)

        result = train_lm(
            policy,
            ctx.train,
            settings,
            step_loss,
            lambda: validation_loss(policy, ctx.val, ctx.grid, betas),
            ctx.log,
            desc=self.name,
        )
        accounting = Accounting(result.seconds, 1, trainable_parameters(policy.model, policy.hpt))
        return HyperLMFront(policy, ctx.cfg.objective_names, accounting, result.history, self.name)

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> HyperLMFront:
        path = Path(path)
        model, tokenizer = policy_factory()
        model, hpt, meta = load_hyper_lm(path, model)
        if meta.get("method") != self.name:
            raise ValueError(
                f"{path / HPT_META}: written by method {meta.get('method')!r}, not {self.name!r}"
            )
        _check_objectives(meta["objectives"], cfg, path / HPT_META)
        policy = _on_device(LMPolicy(model, tokenizer, cfg.llm, hpt=hpt), cfg)
        accounting = Accounting(**meta["accounting"])
        return HyperLMFront(policy, meta["objectives"], accounting, meta["history"], self.name)


# --------------------------------------------------------------------------------------------
# Fixed-weight LoRA models: single objective, DPO-LS, MO-DPO, DPO Soup


@dataclass
class GridAdapters:
    """One adapter state (LoRA, and the prompt-tuning prefix when the baselines have one) per
    weight vector of ``grid``, swapped onto one shared base model."""

    name: str
    grid: np.ndarray  # (P, m)
    states: list[dict[str, torch.Tensor]]
    policy: LMPolicy
    objectives: list[str]
    lora: LoraSettings
    accounting: Accounting
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per trained job
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts (MOPO's multipliers)

    def adapter_at(self, w: np.ndarray) -> dict[str, torch.Tensor]:
        return self.states[grid_index(self.grid, w, self.name)]

    def logprobs(self, groups: PreferenceGroups, w: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        return self.policy.logprobs(groups, None, batch_size, adapter=self.adapter_at(w))

    def generate(self, prompts: list[Prompt], w: np.ndarray) -> list[str]:
        return self.policy.generate(prompts, adapter=self.adapter_at(w))

    def save(self, out_dir: Path, method: str | None = None) -> None:
        """``adapters.safetensors`` (keys ``<grid index>.<adapter key>``) and ``meta.json``, as one
        unit; ``method`` names the method that owns them (default: this front's)."""
        tensors = {
            f"{i}.{k}": v.detach().cpu().contiguous()
            for i, state in enumerate(self.states)
            for k, v in state.items()
        }
        meta = {
            "method": method or self.name,
            "grid": np.asarray(self.grid).tolist(),
            "objectives": self.objectives,
            "lora": self.lora.model_dump(),
            "prompt_tuning": self.policy.hpt is not None,
            "accounting": self.accounting.to_json(),
            "history": self.history,
            "extra": self.extra,
        }
        with atomic_dir(Path(out_dir)) as tmp:
            save_file(tensors, str(tmp / ADAPTERS_FILE))
            atomic_write_json(tmp / META_FILE, meta)

    @classmethod
    def load(cls, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory, method: str) -> GridAdapters:
        path = Path(path)
        meta, meta_path, weights_path = read_saved(path, META_FILE, ADAPTERS_FILE, "a fixed-weight LM method")
        if meta.get("method") != method:
            raise ValueError(f"{meta_path}: written by method {meta.get('method')!r}, not {method!r}")
        _check_objectives(meta["objectives"], cfg, meta_path)
        grid = np.asarray(meta["grid"], dtype=np.float64)
        lora = LoraSettings(**meta["lora"])
        model, tokenizer = policy_factory()
        peft_model = new_lora(model, lora, seed=0)  # the saved states replace the init
        prompt_cfg = cfg.model_copy(deep=True)
        prompt_cfg.llm.baseline_prompt_tuning = bool(meta.get("prompt_tuning", False))
        policy = _on_device(_with_prefix(peft_model, tokenizer, prompt_cfg, 0, hyper=False), cfg)
        reference = policy.adapter_state()
        saved = load_file(str(weights_path))
        states = []
        for i in range(len(grid)):
            state = {k.split(".", 1)[1]: v for k, v in saved.items() if k.split(".", 1)[0] == str(i)}
            check_state_layout(reference, state, f"{weights_path}: adapter {i}")
            states.append(state)
        extra = sorted({k.split(".", 1)[0] for k in saved} - {str(i) for i in range(len(grid))})
        if extra:
            raise ValueError(
                f"{weights_path}: adapters {extra[:3]} beyond the {len(grid)} grid points in {meta_path}"
            )
        states = [{k: v.to(policy.device) for k, v in s.items()} for s in states]
        accounting = Accounting(**meta["accounting"])
        return cls(
            method, grid, states, policy, meta["objectives"], lora, accounting, meta["history"], meta.get("extra", {})
        )


class FixedWeightTrainer:
    """Trains fixed-weight LoRA models one after the other on one shared policy, each from the
    same initial adapter (as every LTR baseline model starts from the same seeded init), and
    keeps their cost and history."""

    def __init__(self, ctx: LMFitContext, name: str, n_jobs: int):
        self.ctx, self.name, self.n_jobs = ctx, name, n_jobs
        self.settings = ctx.cfg.llm.baselines
        self.policy = new_policy(ctx, self.settings.seed)
        self.init = self.policy.adapter_state()
        self.betas = objective_betas(ctx.cfg, self.policy.device)
        self.params_per_model = trainable_parameters(self.policy.model, *filter(None, [self.policy.hpt]))
        self.seconds = 0.0
        self.history: list[dict[str, Any]] = []

    def train(
        self, i: int, w: np.ndarray, step_loss: Callable[[np.ndarray, np.random.Generator], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Grid point ``i``: train at the fixed trade-off ``w``, keep the state with the best
        w-weighted validation loss, and return that adapter state."""
        self.policy.load_adapter(self.init)
        result = train_lm(
            self.policy,
            self.ctx.train,
            self.settings,
            step_loss,
            lambda: validation_loss(self.policy, self.ctx.val, w[None, :], self.betas),
            self.ctx.log,
            desc=f"{self.name} {len(self.history) + 1}/{self.n_jobs}",
            prefix=f"job{i}_",
        )
        self.ctx.log({f"{self.name}_job_seconds": result.seconds}, i)
        self.seconds += result.seconds
        self.history.append(
            {"job": i, "w": w.tolist(), "seconds": result.seconds, "best_step": result.best_step,
             "history": result.history}
        )
        return self.policy.adapter_state()

    def front(
        self, grid: np.ndarray, states: list[dict[str, torch.Tensor]], accounting: Accounting
    ) -> GridAdapters:
        cfg = self.ctx.cfg
        return GridAdapters(
            self.name, grid, states, self.policy, cfg.objective_names, cfg.llm.lora, accounting, self.history
        )


def train_scalarised(ctx: LMFitContext, grid: np.ndarray, name: str) -> GridAdapters:
    """One LoRA model per row of ``grid`` on ``sum_j w_j L_j`` (HyperDPO's loss at that fixed w)."""
    grid = np.asarray(grid, dtype=np.float64)
    trainer = FixedWeightTrainer(ctx, name, len(grid))
    states = []
    for i, w in enumerate(grid):
        wt = torch.as_tensor(w, dtype=torch.float32)

        def step_loss(idx: np.ndarray, rng: np.random.Generator, wt: torch.Tensor = wt) -> torch.Tensor:
            return weighted_loss(trainer.policy, ctx.train, idx, wt.expand(len(idx), -1), trainer.betas)

        states.append(trainer.train(i, w, step_loss))
    accounting = Accounting(trainer.seconds, len(grid), len(grid) * trainer.params_per_model)
    return trainer.front(grid, states, accounting)


class LMSingleObjective:
    name = "single_objective"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: LMFitContext) -> GridAdapters:
        return train_scalarised(ctx, np.eye(len(ctx.cfg.objectives)), self.name)

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> GridAdapters:
        return GridAdapters.load(path, cfg, policy_factory, self.name)


class LMDPOLS:
    name = "dpo_ls"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: LMFitContext) -> GridAdapters:
        return train_scalarised(ctx, ctx.grid, self.name)

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> GridAdapters:
        return GridAdapters.load(path, cfg, policy_factory, self.name)


@dataclass
class Soup:
    """DPO Soup: ``theta_w = sum_j w_j theta_{e_j}`` over the single models' LoRA weights."""

    singles: GridAdapters
    name: str = "dpo_soup"

    @property
    def accounting(self) -> Accounting:
        return self.singles.accounting

    @property
    def objectives(self) -> list[str]:
        return self.singles.objectives

    def adapter_at(self, w: np.ndarray) -> dict[str, torch.Tensor]:
        return interpolate_lora(self.singles.states, np.asarray(w, dtype=np.float64))

    def logprobs(self, groups: PreferenceGroups, w: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        return self.singles.policy.logprobs(groups, None, batch_size, adapter=self.adapter_at(w))

    def generate(self, prompts: list[Prompt], w: np.ndarray) -> list[str]:
        return self.singles.policy.generate(prompts, adapter=self.adapter_at(w))

    def save(self, out_dir: Path) -> None:
        self.singles.save(out_dir, method=self.name)  # the soup is its ingredients


class LMDPOSoup:
    name = "dpo_soup"
    requires: tuple[str, ...] = ("single_objective",)

    def fit(self, ctx: LMFitContext) -> Soup:
        return Soup(_singles(ctx, self.name))

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> Soup:
        return Soup(GridAdapters.load(path, cfg, policy_factory, self.name))


def _singles(ctx: LMFitContext, method: str) -> GridAdapters:
    singles = ctx.prerequisites.get("single_objective")
    m = len(ctx.cfg.objectives)
    if not isinstance(singles, GridAdapters) or not np.array_equal(singles.grid, np.eye(m)):
        raise ValueError(
            f"{method} needs the single_objective front (one LoRA model per objective) in ctx.prerequisites"
        )
    return singles


class LMMODPO:
    name = "mo_dpo"
    requires: tuple[str, ...] = ("single_objective",)

    def fit(self, ctx: LMFitContext) -> GridAdapters:
        singles = _singles(ctx, self.name)
        grid = np.asarray(ctx.grid, dtype=np.float64)
        units = np.eye(grid.shape[1])
        interior = [i for i, w in enumerate(grid) if not np.isclose(w.max(), 1.0)]
        trainer = FixedWeightTrainer(ctx, self.name, len(interior))
        start = time.perf_counter()
        ref = reference_scores(ctx.train)
        # the single models' scores of the training groups are fixed: computed once, not per step
        shifts = [singles.logprobs(ctx.train, e) - ref for e in units] if interior else []  # (G, k) each
        trainer.seconds += time.perf_counter() - start
        states = []
        for i, w in enumerate(grid):
            top = int(np.argmax(w))
            if i not in interior:  # a vertex: no margin, the single-objective model
                states.append(singles.adapter_at(units[top]))
                continue
            others = sum(  # sum_{i' != i} w_i' (s_{e_i'} - s_base), (G, k)
                (float(w[j]) * shifts[j] for j in range(len(w)) if j != top and w[j] > 0),
                torch.zeros_like(ref),
            )

            def step_loss(
                idx: np.ndarray, rng: np.random.Generator, w: np.ndarray = w, others: torch.Tensor = others
            ) -> torch.Tensor:
                margins = others[torch.as_tensor(idx)]
                return margin_loss(trainer.policy, ctx.train, idx, w, margins, trainer.betas)

            states.append(trainer.train(i, w, step_loss))
        accounting = Accounting(
            singles.accounting.train_seconds + trainer.seconds,
            singles.accounting.n_jobs + len(interior),
            singles.accounting.trainable_params + len(interior) * trainer.params_per_model,
        )
        return trainer.front(grid, states, accounting)

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> GridAdapters:
        return GridAdapters.load(path, cfg, policy_factory, self.name)


class LMMOPO:
    """MOPO for LMs (SPEC 5.5, issue 6 part 4): a prompt's responses are the actions; per grid
    point, tabular MOPO on the training groups (:mod:`moft.mopo.targets`: objective 1 primary,
    thresholds swept with ``w``), then one LoRA (+ prompt tuning) model cloned onto ``pi_lambda``
    by the shared listwise DPO loss, ListNet of ``beta_1 (s_theta - s_ref)`` towards it — weighted
    behaviour cloning on the preference pairs with the MOPO weights. ``P`` jobs, like DPO-LS."""

    name = "mopo"
    requires: tuple[str, ...] = ()

    def fit(self, ctx: LMFitContext) -> GridAdapters:
        cfg, train = ctx.cfg, ctx.train
        grid = np.asarray(ctx.grid, dtype=np.float64)
        start = time.perf_counter()
        solved = mopo_targets(
            train.targets.double().numpy(), train.mask.numpy(), train.valid.numpy(), grid,
            cfg.finetune.mopo, cfg.objective_names, ctx.log,
        )
        solve_seconds = time.perf_counter() - start
        trainer = FixedWeightTrainer(ctx, self.name, len(grid))
        trainer.seconds += solve_seconds
        beta = float(cfg.objectives[0].beta)
        states = []
        for i, (w, table) in enumerate(zip(grid, solved.targets)):
            target = torch.as_tensor(table, dtype=torch.float32)

            def step_loss(idx: np.ndarray, rng: np.random.Generator, target: torch.Tensor = target) -> torch.Tensor:
                scores = trainer.policy.group_logprobs(train, idx)
                t, device = torch.as_tensor(idx), scores.device
                ref = reference_scores(train, idx).to(device)
                return listnet_dpo_loss(scores, ref, target[t].to(device), train.mask[t].to(device), beta).mean()

            states.append(trainer.train(i, w, step_loss))
        accounting = Accounting(trainer.seconds, len(grid), len(grid) * trainer.params_per_model)
        front = trainer.front(grid, states, accounting)
        front.extra = {"mopo": solved.summary(), "lo": solved.lo.tolist(), "hi": solved.hi.tolist()}
        return front

    def load(self, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory) -> GridAdapters:
        return GridAdapters.load(path, cfg, policy_factory, self.name)


def get_lm_method(name: str) -> LMMethod:
    from moft.online.methods import ONLINE  # the online methods build on this module

    registry: dict[str, LMMethod] = {
        m.name: m for m in (LMHyperDPO(), LMSingleObjective(), LMDPOLS(), LMDPOSoup(), LMMODPO(), LMMOPO(), *ONLINE)
    }
    if name not in registry:
        raise KeyError(f"unknown LM method {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]
