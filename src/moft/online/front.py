"""A prompt-conditioned policy as a front (MO-ODPO, P-MORL) and inference-time steering.

One LoRA policy serves every trade-off: at ``w`` each prompt becomes ``x' = p(w) + x`` (``w``
quantised to the prefix's step) and the policy scores or answers ``x'``. The front satisfies
:class:`moft.llm.methods.TrainedLMFront`, so the evaluate stage scores it like any LM method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from moft.config import LoraSettings, MoftConfig
from moft.io import atomic_dir, atomic_write_json
from moft.llm.data import PreferenceGroups
from moft.llm.methods import PolicyFactory, read_saved
from moft.llm.train import LMPolicy, new_lora
from moft.methods import Accounting
from moft.models.lm import Prompt, lora_state
from moft.online.prefix import WeightPrefix, check_simplex
from moft.online.rollout import conditioned_prompts, warn_cut_prompts
from moft.training import resolve_device

ADAPTER_FILE = "adapter.safetensors"
META_FILE = "online.json"
FORMAT_VERSION = 1
ONLINE_METHODS = ("mo_odpo", "pmorl", "ric")


@dataclass
class OnlineFront:
    """A LoRA policy conditioned on ``w`` through the text prefix."""

    policy: LMPolicy
    objectives: list[str]
    prefix: WeightPrefix
    accounting: Accounting
    history: list[dict[str, float]] = field(default_factory=list)
    reward_stats: dict[str, dict[str, float]] = field(default_factory=dict)  # the training normaliser
    name: str = "mo_odpo"

    prefix_type = WeightPrefix  # what the saved prefix is rebuilt as (a subclass may write rewards)

    def values(self, w: np.ndarray) -> np.ndarray:
        """What the instruction writes for the trade-off ``w``: the weights themselves (a subclass
        may map them, e.g. RiC to the rewards it asks for)."""
        return check_simplex(w, "w")

    def inputs(self, prompts: Sequence[Prompt], w: np.ndarray) -> list[Prompt]:
        """Every prompt conditioned on the one trade-off ``w``."""
        values = np.repeat(self.values(w)[None, :], len(prompts), axis=0)
        tokenizer = self.policy.tokenizer
        return conditioned_prompts(prompts, values, self.objectives, self.prefix, tokenizer, self.policy.llm)

    def logprobs(self, groups: PreferenceGroups, w: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        """``log pi(y | p(w) + x)``, ``(G, k)``, without gradients."""
        return self.policy.logprobs(replace(groups, prompts=self.inputs(groups.prompts, w)), None, batch_size)

    def reference_logprobs(self, groups: PreferenceGroups, w: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        """``log pi_0(y | p(w) + x)``, ``(G, k)``: the anchor (adapter disabled) on the same
        conditioned prompts, the reference of the implicit reward MO-ODPO trained
        (``groups.ref_logps`` score the unconditioned ``x``). The evaluate stage measures this
        front's preference cross-entropy and log-ratio against it."""
        with self.policy.model.disable_adapter():
            return self.policy.logprobs(replace(groups, prompts=self.inputs(groups.prompts, w)), None, batch_size)

    def generate(self, prompts: list[Prompt], w: np.ndarray) -> list[str]:
        """One response per prompt to ``p(w) + x`` (``llm.generation`` settings); a
        :class:`~moft.online.prefix.PromptCutWarning` when the instruction cuts a question."""
        warn_cut_prompts(prompts, self.objectives, self.prefix, self.policy.tokenizer, self.policy.llm, "prompts")
        return self.policy.generate(self.inputs(prompts, w))

    def save(self, out_dir: Path) -> None:
        """``adapter.safetensors`` (the LoRA weights) and ``online.json``, written as one unit."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in lora_state(self.policy.model).items()}
        peft_config = self.policy.model.peft_config["default"]
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.name,
            "objectives": self.objectives,
            "prefix": self.prefix.to_dict(),
            "lora": {
                "r": peft_config.r,
                "alpha": peft_config.lora_alpha,
                "dropout": peft_config.lora_dropout,
                "target_modules": sorted(peft_config.target_modules),
            },
            "reward_normaliser": self.reward_stats,
            "accounting": self.accounting.to_json(),
            "history": self.history,
        }
        with atomic_dir(Path(out_dir)) as tmp:
            save_file(tensors, str(tmp / ADAPTER_FILE))
            atomic_write_json(tmp / META_FILE, meta)

    @classmethod
    def load(
        cls, path: Path, cfg: MoftConfig, policy_factory: PolicyFactory, method: str | None = None
    ) -> OnlineFront:
        """Rebuild a saved front on a fresh reference policy; ``method`` (when given) must be the
        one that wrote it, and its objectives must be the configuration's."""
        path = Path(path)
        meta, meta_path, weights_path = read_saved(path, META_FILE, ADAPTER_FILE, "an online method")
        saved = meta.get("method")
        if saved not in ONLINE_METHODS or (method is not None and saved != method):
            expected = method or " or ".join(ONLINE_METHODS)
            raise ValueError(f"{meta_path}: written by method {saved!r}, not {expected!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        if meta["objectives"] != cfg.objective_names:
            raise ValueError(
                f"{meta_path}: trained for objectives {meta['objectives']}, but the configuration has "
                f"{cfg.objective_names}"
            )
        model, tokenizer = policy_factory()
        peft_model = new_lora(model, LoraSettings(**meta["lora"]), seed=0)  # the saved state replaces the init
        policy = LMPolicy(peft_model, tokenizer, cfg.llm, device=resolve_device(cfg.runtime.device))
        try:
            policy.load_adapter(load_file(str(weights_path)))
        except (KeyError, ValueError) as err:
            raise ValueError(f"{weights_path}: {err}") from err
        policy.model.to(policy.device)
        policy.train(False)
        return cls(
            policy,
            list(meta["objectives"]),
            cls.prefix_type.from_dict(meta["prefix"]),
            Accounting(**meta["accounting"]),
            meta.get("history", []),
            meta.get("reward_normaliser", {}),
            saved,
        )


# --------------------------------------------------------------------------------------------
# Steering


class SteerableFront(Protocol):
    """A front that names its objectives (the length and order of ``w``)."""

    objectives: list[str]

    def generate(self, prompts: list[Prompt], w: np.ndarray) -> list[str]: ...


def parse_weights(weights: str | Sequence[float] | np.ndarray, objectives: Sequence[str]) -> np.ndarray:
    """A user's trade-off (``"0.3,0.7"`` or a sequence) as ``(m,)`` float64: one weight per
    objective, non-negative, summing to 1 within 1e-6 (:data:`moft.online.prefix.SIMPLEX_TOL`);
    a ValueError naming the problem otherwise."""
    if isinstance(weights, str):
        parts = [p.strip() for p in weights.split(",")]
        values = []
        for i, part in enumerate(parts):
            try:
                values.append(float(part))
            except ValueError:
                raise ValueError(f"weights: entry {i} {part!r} of {weights!r} is not a number") from None
        weights = values
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(objectives):
        raise ValueError(
            f"weights has {len(w)} values but the model has {len(objectives)} objectives "
            f"{list(objectives)}; give one weight per objective"
        )
    return check_simplex(w, "weights")


def steer(
    front: SteerableFront, prompts: Sequence[Prompt], weights: str | Sequence[float] | np.ndarray
) -> list[str]:
    """One response per prompt from ``front`` at the trade-off ``weights`` (validated first;
    ``moft generate --model DIR --weights 0.3,0.7``)."""
    w = parse_weights(weights, front.objectives)
    return front.generate(list(prompts), w) if prompts else []
