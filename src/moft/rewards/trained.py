"""A reward model trained on preference pairs with TRL's ``RewardTrainer`` (SPEC 4).

Any Hugging Face model that loads as ``AutoModelForSequenceClassification`` (a causal LM such as
SmolLM2 gets a fresh scalar head, ``num_labels = 1``; an encoder such as MiniLM its classifier)
learns a Bradley-Terry reward:

    L = -log sigmoid( r(x, y+) - r(x, y-) )

on ``(prompt, chosen, rejected)`` triples. The text of a pair is the prompt and the response
(joined by ``separator``) tokenised as a text pair, the prompt cut from the left first when it
exceeds ``max_length``, with the eos appended as TRL does. That one function,
:func:`reward_token_ids`, tokenises both the training data (handed to TRL pre-tokenised) and
every pair scored later, so training and scoring cannot drift apart. The model is saved as a
plain HF directory (safetensors) plus ``reward.json``, atomically.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
)

from moft.io import atomic_dir, atomic_write_json, read_json
from moft.llm.data import PreferenceGroups
from moft.models.lm import BUILTIN_MODELS
from moft.rewards.base import batches, check_pairs
from moft.rewards.prompts import prompt_text
from moft.training import resolve_device

REWARD_META = "reward.json"
FORMAT_VERSION = 1


class RewardPair(NamedTuple):
    prompt: str
    chosen: str
    rejected: str


def pairs_from_groups(groups: PreferenceGroups, objective: str) -> list[RewardPair]:
    """The ``(prompt, chosen, rejected)`` pairs of one objective: in every group that carries a
    preference for it, the response with the highest target against the one with the lowest
    (groups whose targets tie are skipped). Chat prompts become text (:func:`prompt_text`)."""
    if objective not in groups.objectives:
        raise KeyError(f"objective {objective!r} is not in the preference groups {groups.objectives}")
    j = groups.objectives.index(objective)
    pairs = []
    for g in range(len(groups)):
        if not bool(groups.valid[g, j]):
            continue
        real = torch.nonzero(groups.mask[g]).flatten()
        target = groups.targets[g, real, j]
        best, worst = int(real[target.argmax()]), int(real[target.argmin()])
        if target.max() > target.min():
            text = prompt_text(groups.prompts[g])
            pairs.append(RewardPair(text, groups.responses[g][best], groups.responses[g][worst]))
    return pairs


def reward_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    separator: str,
    max_length: int,
) -> list[list[int]]:
    """Token ids of ``(prompt, separator + response)`` pairs, at most ``max_length`` each with the
    eos (when the tokenizer has one) closing the response, as TRL's reward data does. The
    tokenizer's ``truncation_side`` is ``"left"`` (:func:`_reward_tokenizer`): the start of the
    prompt goes first, the response is cut only when it alone is too long."""
    eos = tokenizer.eos_token_id
    budget = max_length - (eos is not None)
    encoded = tokenizer(
        list(prompts),
        [separator + r for r in responses],
        truncation="longest_first",
        max_length=budget,
    ).input_ids
    return [ids + [eos] if eos is not None else ids for ids in encoded]


def _reward_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Pad token (the eos when there is none; sequence classification needs one) and left
    truncation (see :func:`reward_token_ids`)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the reward model's tokenizer has neither a pad nor an eos token; add one")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    return tokenizer


@dataclass
class TrainedReward:
    """A sequence-classification reward model: ``score`` returns ``r(x, y)`` per pair, batched,
    without gradients, deterministic (eval mode, no dropout)."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    separator: str = "\n"
    max_length: int = 256
    batch_size: int = 16
    device: str = "cpu"
    history: list[dict[str, float]] = field(default_factory=list)  # TRL's training log

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Rewards ``(N,)`` float64."""
        check_pairs(self.name, prompts, responses)
        if not prompts:
            return np.empty(0, dtype=np.float64)
        ids = reward_token_ids(self.tokenizer, prompts, responses, self.separator, self.max_length)
        pad = self.tokenizer.pad_token_id
        out = np.empty(len(ids), dtype=np.float64)
        self.model.eval()
        with torch.no_grad():
            for part in batches(len(ids), self.batch_size):
                rows = ids[part]
                length = max(len(r) for r in rows)
                input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
                for i, r in enumerate(rows):  # right padding, as TRL's DataCollatorForPreference
                    input_ids[i, : len(r)] = torch.tensor(r)
                    attention_mask[i, : len(r)] = 1
                logits = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
                ).logits  # (B, 1)
                out[part] = logits[:, 0].double().cpu().numpy()
        return out

    def save(self, out_dir: Path) -> None:
        """The HF model directory (safetensors), its tokenizer and ``reward.json``, as one unit."""
        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "separator": self.separator,
            "max_length": self.max_length,
            "history": self.history,
        }
        with atomic_dir(Path(out_dir)) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / REWARD_META, meta)

    @classmethod
    def load(cls, path: Path, batch_size: int = 16, device: str = "cpu") -> TrainedReward:
        path = Path(path)
        meta_path = path / REWARD_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing: {path} was not saved by train_reward_model")
        meta = read_json(meta_path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if model.config.num_labels != 1:
            raise ValueError(f"{path}: a reward model has one output (num_labels=1), got {model.config.num_labels}")
        tokenizer = _reward_tokenizer(AutoTokenizer.from_pretrained(path))
        return cls(meta["name"], model, tokenizer, meta["separator"], int(meta["max_length"]), batch_size,
                   device, meta.get("history", []))


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global generators afterwards: the HF Trainer seeds
    them all (``set_seed``), and a library call must not reseed its caller."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=None if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def train_reward_model(
    pairs: Sequence[RewardPair | tuple[str, str, str]],
    model_path: str | Path,
    out_dir: str | Path,
    *,
    steps: int = 100,
    lr: float = 1e-4,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int = 256,
    name: str = "trained_reward",
    separator: str = "\n",
    device: str = "cpu",
    trainer_args: dict[str, Any] | None = None,
) -> TrainedReward:
    """Train a Bradley-Terry reward model on ``pairs`` with TRL's ``RewardTrainer`` and save it
    to ``out_dir`` (atomically; a failure leaves ``out_dir`` as it was).

    ``model_path`` is a local model directory (or a hub id where a hub is reachable) that loads as
    ``AutoModelForSequenceClassification``; the new scalar head is initialised from ``seed``.
    ``steps`` AdamW steps of ``batch_size`` pairs at a constant ``lr``, full float32 precision,
    no gradient checkpointing (TRL's defaults are bf16 and checkpointing, for large GPUs);
    ``trainer_args`` override any ``RewardConfig`` field. The caller's global RNGs are kept.
    """
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if str(model_path) in BUILTIN_MODELS or str(model_path).endswith(".gguf"):
        raise ValueError(
            f"reward model_path {str(model_path)!r} is a GGUF model: give the float model directory that "
            "load_causal_lm caches it in (llm.model_cache/<name>), which loads as a sequence classifier"
        )
    device = resolve_device(device)

    triples = [RewardPair(*p) for p in pairs]
    if not triples:
        raise ValueError("train_reward_model needs at least one (prompt, chosen, rejected) pair")
    for i, p in enumerate(triples):
        bad = [f for f, v in zip(RewardPair._fields, p) if not isinstance(v, str)]
        if bad:
            raise TypeError(f"reward pair {i}: {', '.join(bad)} must be str")
        if p.chosen == p.rejected:
            raise ValueError(f"reward pair {i}: chosen and rejected are the same text, so no preference")
    if steps < 1 or batch_size < 1 or max_length < 2 or not lr > 0:
        raise ValueError(
            f"train_reward_model: steps={steps}, batch_size={batch_size} must be >= 1, max_length={max_length} "
            f">= 2 and lr={lr} > 0"
        )
    tokenizer = _reward_tokenizer(AutoTokenizer.from_pretrained(model_path))
    prompts = [p.prompt for p in triples]
    data = Dataset.from_dict({
        "chosen_ids": reward_token_ids(tokenizer, prompts, [p.chosen for p in triples], separator, max_length),
        "rejected_ids": reward_token_ids(tokenizer, prompts, [p.rejected for p in triples], separator, max_length),
    })
    with _global_rng_kept(), tempfile.TemporaryDirectory(prefix="moft-reward-") as scratch:
        torch.manual_seed(seed)  # the fresh scalar head
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        args = RewardConfig(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            lr_scheduler_type="constant",
            seed=seed,
            data_seed=seed,
            bf16=False,
            activation_checkpointing=False,  # TRL defaults to checkpointing (transformers 5: this name)
            max_length=None,  # already cut to max_length by reward_token_ids
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=device == "cpu",
            disable_tqdm=True,
            **(trainer_args or {}),
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # the log goes to the history, not to stdout per step
        trainer.train()
        history = [
            {"step": int(row["step"]), "loss": float(row["loss"]), "accuracy": float(row.get("accuracy", np.nan))}
            for row in trainer.state.log_history
            if "loss" in row
        ]
    trained = TrainedReward(name, trainer.model.eval(), tokenizer, separator, max_length,
                            device=device, history=history)
    trained.save(Path(out_dir))
    return trained
