"""The objective-weight prefix of MO-ODPO (paper section 3.2-3.3, SPEC 5.4).

A prompt ``x`` is conditioned on the trade-off ``w`` by a textual instruction ``p(w)``:

    [Begin System Instruction]
    <Name1>: <w1>, <Name2>: <w2>
    [End System Instruction]

prepended to a plain-text prompt (``x' = p(w) + x``) or given as the system message of a chat
prompt. ``w`` is quantised to a grid of ``step`` (0.1 in the paper) first, so the policy only ever
reads a finite set of weight strings. Reward models never see ``x'``: the online loop keeps the
original prompt next to the conditioned one and scores the original (the no-prefix path).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from moft.methods.hyperdpo import sample_weights as dirichlet_weights
from moft.models.lm import Message, Prompt, prompt_token_ids

DEFAULT_TEMPLATE = "[Begin System Instruction]\n{weights}\n[End System Instruction]\n"
DEFAULT_ITEM = "{name}: {weight}"
POSITIONS = ("system", "user")  # where a chat prompt carries the instruction
SIMPLEX_TOL = 1e-6  # how far off sum(w) = 1 a weight vector may be before it is refused


def _fields(fmt: str, what: str) -> list[str]:
    """The replacement fields of format string ``fmt`` (``what`` names it in errors)."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as err:
        raise ValueError(f"{what} {fmt!r} is not a valid format string: {err}") from err
    bad = [f for _, f, spec, conv in parsed if f is not None and (spec or conv)]
    if bad:
        raise ValueError(f"{what} {fmt!r}: fields take no format spec or conversion, got {bad}")
    return [f for _, f, _, _ in parsed if f is not None]


def weight_decimals(step: float) -> int:
    """Decimals needed to write every multiple of ``step`` exactly (0.1 -> 1, 0.05 -> 2, 0.25 -> 2)."""
    for d in range(10):
        scaled = step * 10**d
        if abs(scaled - round(scaled)) < 1e-9:
            return d
    raise ValueError(f"step {step} has no short decimal form; use a step such as 0.1, 0.05 or 0.25")


def grid_units(step: float) -> int:
    """``1 / step`` as an integer: the number of ``step`` units on the simplex."""
    if not (isinstance(step, (int, float)) and math.isfinite(step) and 0 < step <= 1):
        raise ValueError(f"weight step must be in (0, 1], got {step!r}")
    units = round(1 / step)
    if abs(units * step - 1) > 1e-9:
        raise ValueError(f"weight step {step} must divide 1 (1/step = {1 / step:.6g} is not an integer)")
    return units


def check_simplex(w: Sequence[float] | np.ndarray, what: str = "w") -> np.ndarray:
    """``w`` as float64 ``(m,)`` if it is a finite, non-negative vector summing to 1 (within
    :data:`SIMPLEX_TOL`); a ValueError naming the problem otherwise."""
    v = np.asarray(w, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{what} must be a non-empty vector, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} = {v.tolist()} has non-finite values")
    negative = np.flatnonzero(v < 0)
    if negative.size:
        i = int(negative[0])
        raise ValueError(f"{what}[{i}] = {v[i]:g} is negative; weights must be >= 0")
    if abs(v.sum() - 1) > SIMPLEX_TOL:
        raise ValueError(f"{what} = {v.tolist()} sums to {v.sum():.9g}, not 1 (within {SIMPLEX_TOL:g})")
    return v


def quantise_weights(w: Sequence[float] | np.ndarray, step: float = 0.1) -> np.ndarray:
    """Round a point of the simplex to the grid ``{k * step}``, keeping the sum at exactly one unit.

    Largest-remainder (Hamilton) rounding: with ``U = 1/step`` units, each ``w_j U`` is floored and
    the ``U - sum floor(w_j U)`` units left go to the largest remainders (ties to the lower
    index). The integer counts sum to ``U`` exactly, so the result sums to 1 up to float
    representation of ``k/U``; every entry is within one step of the input, and a ``w`` already on
    the grid maps to itself (as the doubles ``k/U``). ``w`` may be ``(m,)`` or a batch ``(n, m)``.
    """
    units = grid_units(step)
    v = np.asarray(w, dtype=np.float64)
    if v.ndim == 2:
        return np.stack([quantise_weights(row, step) for row in v]) if len(v) else v.copy()
    v = check_simplex(v)
    scaled = v / v.sum() * units  # the sum is 1 within SIMPLEX_TOL; renormalise the remainder away
    counts = np.floor(scaled + 1e-9).astype(np.int64)
    left = units - int(counts.sum())
    order = np.argsort(-(scaled - counts), kind="stable")  # largest remainder first, ties by index
    counts[order[:left]] += 1
    return counts / units


def sample_weights(
    rng: np.random.Generator, alpha: float | Sequence[float], m: int, n: int, step: float = 0.1
) -> np.ndarray:
    """``(n, m)`` weight vectors: ``w ~ Dir(alpha)`` per prompt, then :func:`quantise_weights`.

    ``alpha = 1`` is uniform on the simplex, ``< 1`` favours the vertices, ``> 1`` the centre
    (paper section 3.2). Drawn from ``rng`` only, never from a global generator.
    """
    conc = [alpha] * m if isinstance(alpha, (int, float)) else list(alpha)
    if len(conc) != m or not all(a > 0 for a in conc):
        raise ValueError(f"Dirichlet alpha must be > 0, one value or one per objective ({m}), got {alpha!r}")
    return quantise_weights(dirichlet_weights(rng, [float(a) for a in conc], m, n, per_group=True), step)


@dataclass(frozen=True)
class WeightPrefix:
    """How ``w`` is written into the prompt.

    ``template`` holds the whole instruction with one ``{weights}`` field; ``item`` writes one
    objective with ``{name}`` and ``{weight}``; items are joined by ``separator``; weights are
    quantised to ``step`` and printed with the decimals the step needs.
    """

    template: str = DEFAULT_TEMPLATE
    item: str = DEFAULT_ITEM
    separator: str = ", "
    step: float = 0.1
    position: str = "system"

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"prefix position {self.position!r} must be one of {list(POSITIONS)}")
        fields = _fields(self.template, "prefix template")
        if fields != ["weights"]:
            raise ValueError(
                f"prefix template {self.template!r} must contain the field {{weights}} exactly once and no "
                f"other field, found {fields}; e.g. {DEFAULT_TEMPLATE!r}"
            )
        if not self.template.split("{weights}", 1)[1]:
            raise ValueError(
                f"prefix template {self.template!r} must end with text after {{weights}} (e.g. a newline), "
                "so the weights do not run into the prompt"
            )
        item_fields = _fields(self.item, "prefix item")
        if sorted(item_fields) != ["name", "weight"]:
            raise ValueError(
                f"prefix item {self.item!r} must contain {{name}} and {{weight}} once each, found "
                f"{item_fields}; e.g. {DEFAULT_ITEM!r}"
            )
        grid_units(self.step)

    def render(self, names: Sequence[str], w: Sequence[float] | np.ndarray) -> str:
        """The instruction ``p(w)`` for objectives ``names`` at ``w`` (quantised first)."""
        v = np.asarray(w, dtype=np.float64)
        if v.shape != (len(names),):
            raise ValueError(f"w has shape {v.shape}, expected one weight per objective {list(names)}")
        q = quantise_weights(v, self.step)
        decimals = weight_decimals(self.step)
        items = [self.item.format(name=n, weight=f"{x:.{decimals}f}") for n, x in zip(names, q)]
        return self.template.format(weights=self.separator.join(items))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightPrefix:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown prefix settings {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


def last_user_turn(messages: Sequence[Message]) -> int:
    """Index of the last user message: where ``position == "user"`` puts the instruction."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError("prefix position 'user': the chat prompt has no user message to carry the weights")
    return users[-1]


def with_weights(
    prompt: Prompt, names: Sequence[str], w: Sequence[float] | np.ndarray, prefix: WeightPrefix = WeightPrefix()
) -> Prompt:
    """``x'``: the prompt conditioned on ``w``.

    A plain-text prompt gets the instruction in front (``p(w) + x``). A chat prompt gets it, with
    ``prefix.position == "system"``, as its system message (put before an existing system
    message's content, or as a new first message: a chat template's default system prompt, such
    as SmolLM2's, is then replaced); with ``"user"``, in front of its last user message (the
    template's default system prompt stays). The input is not modified.
    """
    text = prefix.render(names, w)
    if isinstance(prompt, str):
        return text + prompt
    messages = [dict(m) for m in prompt]
    if prefix.position == "user":
        turn = last_user_turn(messages)
        messages[turn]["content"] = text + messages[turn]["content"]
        return messages
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = text + messages[0]["content"]
        return messages
    return [{"role": "system", "content": text.rstrip("\n")}, *messages]


def conditioned_prompt(
    prompt: Prompt,
    names: Sequence[str],
    w: Sequence[float] | np.ndarray,
    prefix: WeightPrefix,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int,
    chat_template: bool,
) -> Prompt:
    """:func:`with_weights`, with the original prompt cut from the left until ``x'`` fits in
    ``max_prompt_tokens`` (counted by :func:`moft.models.lm.prompt_token_ids`, the policy's own
    tokenisation).

    The policy keeps the last ``max_prompt_tokens`` of a prompt, so a long prompt would lose the
    instruction first and with it the conditioning; cutting the prompt instead keeps the
    instruction and the end of the dialogue. A chat prompt drops its oldest turns (a system
    message, and with ``position == "user"`` the last user turn and what follows it, are kept) and
    then the start of its oldest remaining turn.
    """

    def fits(p: Prompt) -> bool:
        ids = prompt_token_ids(tokenizer, with_weights(p, names, w, prefix), chat_template)
        return len(ids) <= max_prompt_tokens

    if fits(prompt):
        return with_weights(prompt, names, w, prefix)
    if isinstance(prompt, str):
        trimmed: Prompt | None = _trim_left(prompt, fits)
    else:
        head, body, keep = _kept_turns(prompt, prefix)
        while len(body) > keep and not fits(head + body):
            body = body[1:]
        trimmed = head + body
        if body and not fits(trimmed):
            first, rest = body[0], body[1:]
            content = _trim_left(first["content"], lambda c: fits([*head, {**first, "content": c}, *rest]))
            trimmed = None if content is None else [*head, {**first, "content": content}, *rest]
    if trimmed is None or not fits(trimmed):
        n = len(prompt_token_ids(tokenizer, with_weights("", names, w, prefix), chat_template))
        raise ValueError(
            f"the weight instruction alone takes {n} prompt tokens, more than llm.max_prompt_tokens="
            f"{max_prompt_tokens}; raise max_prompt_tokens or shorten the prefix template"
        )
    return with_weights(trimmed, names, w, prefix)


def _kept_turns(prompt: Sequence[Message], prefix: WeightPrefix) -> tuple[list[Message], list[Message], int]:
    """A chat prompt as ``(head, body, keep)``: the system message (kept whole), the other turns,
    and how many of the last turns :func:`conditioned_prompt` never drops (with ``position ==
    "user"`` the last user turn and what follows it, else the last turn)."""
    messages = [dict(m) for m in prompt]
    head = messages[:1] if messages and messages[0].get("role") == "system" else []
    body = messages[len(head) :]
    keep = len(body) - last_user_turn(body) if prefix.position == "user" else 1  # the instruction's turn stays
    return head, body, keep


@dataclass(frozen=True)
class PromptBudget:
    """How the weight instruction fits ``llm.max_prompt_tokens`` over a set of prompts."""

    prompts: int
    cut: int  # prompts whose kept turns (the question the policy answers) lose their start
    needed: int  # the max_prompt_tokens that keeps every prompt's kept turns whole
    max_prompt_tokens: int

    def message(self, what: str) -> str:
        return (
            f"{self.cut} of {self.prompts} {what} lose the start of their last turn to the weight instruction at "
            f"llm.max_prompt_tokens={self.max_prompt_tokens}: the policy would answer questions it cannot read "
            f"whole while the reward models score the whole question; llm.max_prompt_tokens={self.needed} keeps "
            "them all whole (or shorten llm.prefix.template)"
        )


class PromptCutWarning(UserWarning):
    """The weight instruction leaves too little room for the question (see :class:`PromptBudget`)."""


def prompt_budget(
    prompts: Sequence[Prompt],
    names: Sequence[str],
    prefix: WeightPrefix,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int,
    chat_template: bool,
) -> PromptBudget:
    """Per prompt, the tokens of ``x'`` with only what :func:`conditioned_prompt` never drops (a
    chat prompt's system message and last turn(s); a plain-text prompt whole), at equal weights;
    counted against ``max_prompt_tokens``."""
    w = np.full(len(names), 1.0 / len(names))
    needed = []
    for prompt in prompts:
        if isinstance(prompt, str):
            kept: Prompt = prompt
        else:
            head, body, keep = _kept_turns(prompt, prefix)
            kept = head + body[len(body) - keep :]
        needed.append(len(prompt_token_ids(tokenizer, with_weights(kept, names, w, prefix), chat_template)))
    cut = sum(n > max_prompt_tokens for n in needed)
    return PromptBudget(len(needed), int(cut), max(needed, default=0), max_prompt_tokens)


def _trim_left(text: str, fits: Callable[[str], bool]) -> str | None:
    """The longest suffix of ``text`` that ``fits`` (binary search on the cut), None if even ""
    does not."""
    if not fits(""):
        return None
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(text[mid:]):
            hi = mid
        else:
            lo = mid + 1
    return text[lo:]
