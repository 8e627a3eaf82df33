"""What a reward model reads as the prompt: always text, never the policy's conditioning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def prompt_text(prompt: str | Sequence[Mapping[str, str]]) -> str:
    """A plain-text prompt as is; a chat prompt as its dialogue, ``Role: content`` turns joined
    by blank lines (the HH-RLHF layout)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)
