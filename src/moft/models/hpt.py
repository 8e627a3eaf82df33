"""Hyper Prompt Tuning (HyperDPO section 4.2, SPEC 4): the trade-off ``w`` enters a causal LM
as a prefix of ``k`` virtual tokens.

``w (m,)`` (optionally with the normalised temperature ``beta_bar (m,)``) -> two small MLPs ->
``A (k, r)`` and ``B (r, d)``; the mask ``M = A B (k, d)`` multiplies the trainable prefix
``P (k, d)`` entrywise, and ``P * M`` is prepended to the token embeddings. The LM itself (plain
or LoRA-wrapped) is unchanged: the prefix goes in through ``inputs_embeds``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from moft.io import atomic_dir, atomic_write_json
from moft.models.lm import (
    GLOBAL_RNG_LOCK,
    Prompt,
    check_state_layout,
    pad_id,
    prompt_token_ids,
    quiet_peft,
    sequence_logprobs,
    shared_prefix_logprobs,
)

ADAPTER_DIR = "adapter"
HPT_WEIGHTS = "hpt.safetensors"
HPT_META = "hyper_lm.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class HPTConfig:
    """Shape of a :class:`HyperPromptTuning` module (saved next to its weights)."""

    n_objectives: int  # m, the length of w
    hidden_size: int  # d, the LM's embedding width
    n_virtual: int = 8  # k virtual tokens (paper: 8)
    rank: int = 4  # r, rank of the mask M = A B (paper: 4)
    mlp_hidden: int = 64  # width of the two MLPs
    init_std: float = 0.01  # std of the MLPs' output weights: how much w moves the mask at the start
    temperature: bool = False  # also conditioned on beta_bar (temperature hypernetwork, SPEC 5.2)
    conditioned: bool = True  # False: plain prompt tuning (the prefix is P, no w, no MLPs)

    def __post_init__(self) -> None:
        for name in ("n_objectives", "hidden_size", "n_virtual", "rank", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"HPTConfig.{name}={getattr(self, name)} must be >= 1")
        if self.init_std < 0:
            raise ValueError(f"HPTConfig.init_std={self.init_std} must be >= 0")


def _mlp(n_in: int, hidden: int, n_out: int, bias_init: float, init_std: float = 0.01) -> nn.Sequential:
    """Two-layer MLP whose output starts at ``bias_init`` plus a ``w``-dependent part of scale
    ``init_std``."""
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))
    nn.init.normal_(net[2].weight, std=init_std)
    nn.init.constant_(net[2].bias, bias_init)
    return net


class HyperPromptTuning(nn.Module):
    """``w -> P * (A(w) B(w))``: ``k`` virtual token embeddings conditioned on the trade-off.

    At initialisation ``A = 1/r`` and ``B = 1`` up to small ``w``-dependent terms, so ``M`` is
    close to all ones and the prefix starts as ``P``; ``w`` changes it only a little, and every
    part (both MLPs, ``P``) gets gradients from the first step. Measured on SmolLM2-135M (8
    HH-RLHF pairs, 4 seeds, mean log-prob -2.95 per response token): an untrained prefix moves
    response log-probs by 0.052 nats per token with ``P`` = random vocabulary rows (the
    :meth:`for_model` default), 0.062 with ``P ~ N(0, 0.02^2)`` (the default without a model),
    0.20 with ``P = 0`` (zero keys still take attention mass); ``w`` moves them by ~0.003.
    """

    def __init__(self, config: HPTConfig, init_prefix: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        k, r, d = config.n_virtual, config.rank, config.hidden_size
        if config.temperature and not config.conditioned:
            raise ValueError("HPTConfig: temperature=True needs conditioned=True")
        n_cond = config.n_objectives * (2 if config.temperature else 1)
        self.mlp_a = self.mlp_b = None
        if config.conditioned:
            self.mlp_a = _mlp(n_cond, config.mlp_hidden, k * r, 1.0 / r, config.init_std)
            self.mlp_b = _mlp(n_cond, config.mlp_hidden, r * d, 1.0, config.init_std)
        if init_prefix is None:
            init_prefix = torch.randn(k, d) * 0.02
        if init_prefix.shape != (k, d):
            raise ValueError(
                f"init_prefix has shape {tuple(init_prefix.shape)}, expected (n_virtual, hidden) {(k, d)}"
            )
        self.prefix = nn.Parameter(init_prefix.detach().clone().float())  # P (k, d)

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        n_objectives: int,
        *,
        init_token_ids: Sequence[int] | None = None,
        seed: int = 0,
        **config: Any,
    ) -> HyperPromptTuning:
        """An HPT module sized for ``model`` and on its device, ``P`` started from real token
        embeddings (prompt tuning's usual start): ``init_token_ids`` cycled to ``k``, or ``k``
        vocabulary rows drawn from ``seed``. Deterministic from ``seed``; the global RNG is left
        untouched. ``config`` holds :class:`HPTConfig` fields.
        """
        embeddings = model.get_input_embeddings().weight.detach()  # (V, d)
        cfg = HPTConfig(n_objectives=n_objectives, hidden_size=embeddings.shape[1], **config)
        if init_token_ids is not None and not init_token_ids:
            raise ValueError("init_token_ids is empty")
        with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if init_token_ids is None:
                ids = torch.randint(0, embeddings.shape[0], (cfg.n_virtual,))
            else:
                ids = torch.tensor(list(init_token_ids)).repeat(cfg.n_virtual)[: cfg.n_virtual]
            hpt = cls(cfg, init_prefix=embeddings[ids.to(embeddings.device)].float().cpu())
        return hpt.to(embeddings.device)

    @classmethod
    def plain(cls, model: nn.Module, n_objectives: int, *, seed: int = 0, n_virtual: int = 8) -> HyperPromptTuning:
        """Plain prompt tuning (Lester et al., 2021): ``k`` trainable virtual tokens that ignore
        ``w``. The HyperDPO paper gives the fixed-weight baselines this prefix on top of LoRA, so
        every method has the same architecture; from the same ``seed`` its ``P`` is exactly the
        HPT prefix's start, so all methods start from the same policy."""
        return cls.for_model(model, n_objectives, seed=seed, n_virtual=n_virtual, conditioned=False)

    def condition(self, w: torch.Tensor, beta_bar: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP input, ``w`` or ``[w, beta_bar]``, as ``(B, n_cond)``; a single vector gives B = 1."""
        w = self._rows(w, "w")
        if not self.config.temperature:
            if beta_bar is not None:
                raise ValueError("beta_bar given to an HPT module built without temperature=True")
            return w
        if beta_bar is None:
            raise ValueError("this HPT module is temperature-conditioned: pass beta_bar (normalised)")
        beta_bar = self._rows(beta_bar, "beta_bar")
        if len(w) != len(beta_bar) and 1 not in (len(w), len(beta_bar)):
            raise ValueError(f"{len(w)} weight vectors but {len(beta_bar)} temperature vectors")
        batch = max(len(w), len(beta_bar))
        return torch.cat([w.expand(batch, -1), beta_bar.expand(batch, -1)], dim=1)

    def _rows(self, v: torch.Tensor, name: str) -> torch.Tensor:
        m = self.config.n_objectives
        v = torch.as_tensor(v, dtype=torch.float32, device=self.prefix.device)
        v = v[None] if v.dim() == 1 else v
        if v.dim() != 2 or v.shape[1] != m:
            raise ValueError(f"{name} has shape {tuple(v.shape)}, expected ({m},) or (batch, {m})")
        return v

    def mask(self, w: torch.Tensor, beta_bar: torch.Tensor | None = None) -> torch.Tensor:
        """``M = A B``, shape ``(B, k, d)``."""
        if self.mlp_a is None or self.mlp_b is None:
            raise ValueError("a plain prompt-tuning prefix (conditioned=False) has no mask")
        cond = self.condition(w, beta_bar)
        k, r, d = self.config.n_virtual, self.config.rank, self.config.hidden_size
        a = self.mlp_a(cond).view(-1, k, r)
        b = self.mlp_b(cond).view(-1, r, d)
        return a @ b

    def forward(self, w: torch.Tensor | None, beta_bar: torch.Tensor | None = None) -> torch.Tensor:
        """Virtual token embeddings ``P * M``, shape ``(B, k, d)`` (B = 1 for a single ``w``);
        ``P`` itself, ``(1, k, d)``, for plain prompt tuning (which takes ``w=None``)."""
        if not self.config.conditioned:
            if w is not None or beta_bar is not None:
                raise ValueError("a plain prompt-tuning prefix (conditioned=False) takes no w: pass w=None")
            return self.prefix[None]
        if w is None:
            raise ValueError("this HPT prefix is conditioned: it needs the trade-off w")
        return self.prefix * self.mask(w, beta_bar)


def prepend_virtual_tokens(
    virtual: torch.Tensor,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    input_ids: torch.Tensor,
    fill_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prepend ``virtual (1 or B, k, d)`` to a right-padded batch ``(B, T)``.

    Returns ``inputs_embeds (B, k+T, d)``, ``attention_mask`` with ones on the prefix,
    ``response_mask`` with zeros there (never scored) and ``input_ids`` (the targets) with
    ``fill_id`` there.
    """
    batch, k = inputs_embeds.shape[0], virtual.shape[1]
    if virtual.shape[0] not in (1, batch):
        raise ValueError(f"{virtual.shape[0]} prefixes for a batch of {batch}: give one, or one per row")
    virtual = virtual.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype).expand(batch, -1, -1)
    ones = attention_mask.new_ones(batch, k)
    zeros = response_mask.new_zeros(batch, k)
    return (
        torch.cat([virtual, inputs_embeds], dim=1),
        torch.cat([ones, attention_mask], dim=1),
        torch.cat([zeros, response_mask], dim=1),
        torch.cat([input_ids.new_full((batch, k), fill_id), input_ids], dim=1),
    )


def forward_logprobs(
    model: nn.Module,
    hpt: HyperPromptTuning,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    w: torch.Tensor | None,
    beta_bar: torch.Tensor | None = None,
    *,
    average: bool = False,
) -> torch.Tensor:
    """Response log-probs ``(B,)`` of a batch from :func:`encode_pairs` with the HPT prefix for
    ``w`` (one vector ``(m,)`` for the batch, or ``(B, m)``; None for plain prompt tuning); works
    for plain and PEFT models."""
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, d)
    embeds, attention_mask, response_mask, input_ids = prepend_virtual_tokens(
        hpt(w, beta_bar), embeds, attention_mask, response_mask, input_ids
    )
    return sequence_logprobs(
        model, input_ids, attention_mask, response_mask, inputs_embeds=embeds, average=average
    )


def shared_forward_logprobs(
    model: nn.Module,
    hpt: HyperPromptTuning,
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    tail_ids: torch.Tensor,
    tail_mask: torch.Tensor,
    response_mask: torch.Tensor,
    rows: torch.Tensor,
    w: torch.Tensor | None,
    beta_bar: torch.Tensor | None = None,
    *,
    average: bool = False,
) -> torch.Tensor:
    """:func:`forward_logprobs` of a batch from :func:`moft.models.lm.encode_groups`, ``(N,)``:
    each group's virtual tokens (``w`` one vector ``(m,)``, or ``(G, m)``: one per group, which
    all its responses share) and prompt run once, its responses on their key/value cache
    (:func:`moft.models.lm.shared_prefix_logprobs`)."""
    embeds = model.get_input_embeddings()(prefix_ids)  # (G, P, d)
    virtual = hpt(w, beta_bar).to(device=embeds.device, dtype=embeds.dtype)
    if virtual.shape[0] not in (1, embeds.shape[0]):
        raise ValueError(f"{virtual.shape[0]} prefixes for {embeds.shape[0]} groups: give one, or one per group")
    virtual = virtual.expand(embeds.shape[0], -1, -1)
    return shared_prefix_logprobs(
        model,
        prefix_ids,
        torch.cat([prefix_mask.new_ones(virtual.shape[:2]), prefix_mask], dim=1),
        tail_ids,
        tail_mask,
        response_mask,
        rows,
        prefix_embeds=torch.cat([virtual, embeds], dim=1),
        average=average,
    )


@torch.no_grad()
def generate_with_prefix(
    model: nn.Module,
    hpt: HyperPromptTuning | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    w: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    *,
    beta_bar: torch.Tensor | None = None,
    chat_template: bool = True,
    max_prompt_tokens: int | None = None,
    num_samples: int = 1,
    **generate_kwargs: Any,
) -> list[str]:
    """Generate ``num_samples`` responses per prompt (consecutive in the returned list), with the
    HPT prefix for ``w`` (none when ``hpt`` is None).

    Prompts are left-padded as ``[pad][prefix][prompt]`` so every row continues from its last
    token; generation derives positions from the attention mask, so the prefix sits at positions
    ``0..k-1`` exactly as in training. Sampling (plain, at ``temperature``: no top-k/top-p) is
    deterministic from ``seed`` and leaves the global RNG untouched. ``generate_kwargs`` go to
    ``model.generate`` (e.g. ``min_new_tokens``). Returns decoded strings without special tokens.

    Sampling draws from a generator of the call's own (:class:`SeededSampler`), not from torch's
    global one, which every thread of the process shares: concurrent samplers (finetune jobs side
    by side in one process) cannot reseed or consume each other's draws, and each call's samples
    depend on its ``seed`` only.

    Without an HPT prefix and with ``num_samples > 1`` each prompt is run once (all but its last
    token, into a key/value cache repeated for its samples) and generation continues from that
    cache: the same tokens as repeating the prompt ``num_samples`` times (same seed, same draws),
    at one prompt's cost instead of ``num_samples``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not prompts:
        return []
    rows = [prompt_token_ids(tokenizer, p, chat_template) for p in prompts]
    if max_prompt_tokens is not None:
        rows = [ids[-max_prompt_tokens:] for ids in rows]
    pad = pad_id(tokenizer)
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad,
                                "eos_token_id": tokenizer.eos_token_id, "use_cache": True, "do_sample": False}
    if do_sample:  # the model's own processors first, then the draw (SeededSampler)
        settings["logits_processor"] = LogitsProcessorList([SeededSampler(temperature, seed)])
    settings.update(generate_kwargs)
    if hpt is None and num_samples > 1:
        return _generate_shared_prompts(model, tokenizer, rows, num_samples, settings)
    if num_samples > 1:
        rows = [ids for ids in rows for _ in range(num_samples)]
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    virtual = None
    if hpt is not None:
        virtual = hpt(w, beta_bar).to(device=device, dtype=embedding.weight.dtype)  # (1 or B, k, d)
        virtual = virtual.expand(len(rows), -1, -1)
    k = 0 if virtual is None else virtual.shape[1]
    length = k + max(len(ids) for ids in rows)
    embeds = embedding.weight.new_zeros(len(rows), length, embedding.weight.shape[1])  # (B, L, d)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    for i, ids in enumerate(rows):
        start = length - len(ids)
        embeds[i, start:] = embedding(torch.tensor(ids, dtype=torch.long, device=device))
        if virtual is not None:
            embeds[i, start - k : start] = virtual[i]
        attention_mask[i, start - k :] = 1
    out = model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **settings)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def _generate_shared_prompts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[list[int]],
    num_samples: int,
    settings: dict[str, Any],
) -> list[str]:
    """``num_samples`` continuations of every prompt ``rows[i]`` (token ids), the prompts run once:
    the left-padded prompts but their last token fill a key/value cache, repeated per sample, and
    ``generate`` continues the repeated prompts from it (it runs only the uncached last token)."""
    device = model.get_input_embeddings().weight.device
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), settings["pad_token_id"], dtype=torch.long, device=device)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    for i, ids in enumerate(rows):
        input_ids[i, length - len(ids) :] = torch.tensor(ids, dtype=torch.long, device=device)
        attention_mask[i, length - len(ids) :] = 1
    cache = None
    if length > 1:
        cache = model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=(attention_mask[:, :-1].cumsum(dim=1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        ).past_key_values
        cache.batch_repeat_interleave(num_samples)
    out = model.generate(
        input_ids=input_ids.repeat_interleave(num_samples, dim=0),
        attention_mask=attention_mask.repeat_interleave(num_samples, dim=0),
        past_key_values=cache,
        **settings,
    )
    return tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)


class SeededSampler(LogitsProcessor):
    """Plain sampling at ``temperature`` as the last logits processor of a greedy ``generate``:
    draws each row's token from ``softmax(scores / temperature)`` (the scores after the model's
    own processors, e.g. its ``suppress_tokens``) with a ``torch.Generator`` of its own seeded by
    ``seed``, and leaves that token the only finite score, so the argmax takes it. The same draws
    as ``generate(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)`` after
    ``torch.manual_seed(seed)``, without touching the process-wide generator."""

    def __init__(self, temperature: float, seed: int) -> None:
        if not temperature > 0:
            raise ValueError(f"sampling needs temperature > 0, got {temperature}")
        self.temperature = temperature
        self.seed = seed
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=self.generator)  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def save_hyper_lm(
    directory: str | Path,
    model: nn.Module,
    hpt: HyperPromptTuning,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the LoRA adapter (when ``model`` is a PEFT model), the HPT weights and a JSON
    description to ``directory`` as one unit: a temporary directory renamed into place.

    Layout: ``adapter/`` (PEFT ``save_pretrained``), ``hpt.safetensors``, ``hyper_lm.json``
    (``{"format", "hpt": HPTConfig, "adapter": bool, "meta": meta}``).
    """
    directory = Path(directory)
    has_adapter = isinstance(model, PeftModel)
    with atomic_dir(directory) as tmp:
        if has_adapter:
            model.save_pretrained(tmp / ADAPTER_DIR)
        save_file({k: v.detach().cpu().contiguous() for k, v in hpt.state_dict().items()}, tmp / HPT_WEIGHTS)
        atomic_write_json(
            tmp / HPT_META,
            {"format": FORMAT_VERSION, "hpt": asdict(hpt.config), "adapter": has_adapter, "meta": meta or {}},
        )
    return directory


def load_hyper_lm(
    directory: str | Path, base_model: PreTrainedModel, *, trainable: bool = False
) -> tuple[nn.Module, HyperPromptTuning, dict[str, Any]]:
    """Load what :func:`save_hyper_lm` wrote onto ``base_model`` (modified in place by PEFT).

    Returns the model (PEFT-wrapped when an adapter was saved), the HPT module on the model's
    device and the user ``meta``. Shape mismatches name the file and the key.
    """
    directory = Path(directory)
    meta_path = directory / HPT_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: {directory} was not written by save_hyper_lm")
    saved = json.loads(meta_path.read_text())
    if saved.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format {saved.get('format')!r}, this version reads {FORMAT_VERSION}")
    try:
        config = HPTConfig(**saved["hpt"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{meta_path}: bad 'hpt' section: {err}") from err
    embedding = base_model.get_input_embeddings().weight
    if config.hidden_size != embedding.shape[1]:
        raise ValueError(
            f"{meta_path}: HPT hidden_size {config.hidden_size} does not match the base model's "
            f"embedding width {embedding.shape[1]}: wrong base model"
        )
    hpt = HyperPromptTuning(config)
    weights_path = directory / HPT_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} is missing: the HPT weights were not saved with {meta_path}")
    state = load_file(weights_path)
    check_state_layout(hpt.state_dict(), state, str(weights_path))
    hpt.load_state_dict(state)
    hpt.to(embedding.device).requires_grad_(trainable)
    model: nn.Module = base_model
    if saved["adapter"]:
        try:
            with quiet_peft():
                model = PeftModel.from_pretrained(base_model, directory / ADAPTER_DIR, is_trainable=trainable)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{directory / ADAPTER_DIR}: adapter does not fit the base model: {err}") from err
    return model, hpt, saved["meta"]
