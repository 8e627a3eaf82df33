"""Deterministic length rewards: ``length`` (more words is better) and ``conciseness`` (fewer).

Words are whitespace-separated tokens, so the rewards need no tokenizer and do not change when the
policy's tokenizer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from moft.rewards.base import check_pairs


def word_counts(texts: Sequence[str]) -> np.ndarray:
    """Whitespace-separated words per text ``(N,)`` float64."""
    return np.array([len(t.split()) for t in texts], dtype=np.float64)


@dataclass
class LengthReward:
    """Number of words in the response; the prompt is not read."""

    name: str = field(default="length", init=False)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Word counts ``(N,)``."""
        check_pairs(self.name, prompts, responses)
        return word_counts(responses)


@dataclass
class ConcisenessReward:
    """``-log(1 + words)`` of the response: 0 for an empty one, smoothly decreasing.

    The log makes the tenth extra word cost less than the first, so a few rambling outliers do not
    dominate the mean/std normalisation the way raw counts would.
    """

    name: str = field(default="conciseness", init=False)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Conciseness ``(N,)`` <= 0."""
        check_pairs(self.name, prompts, responses)
        return -np.log1p(word_counts(responses))
