"""Sentiment reward: VADER's compound score of the response (``vaderSentiment``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moft.rewards.base import check_pairs, load_once

PIP_SPEC = "vaderSentiment==3.3.2"


@load_once
def load_vader() -> Any:
    """VADER's analyser (reads its lexicon files once per process)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise ImportError(
            f"the sentiment reward needs VADER; install it with: pip install {PIP_SPEC}"
        ) from err
    return SentimentIntensityAnalyzer()


@dataclass
class SentimentReward:
    """VADER compound polarity of the response in [-1, 1]; the prompt is not read."""

    name: str = field(default="sentiment", init=False)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Compound scores ``(N,)`` float64."""
        check_pairs(self.name, prompts, responses)
        vader = load_vader()
        return np.array([vader.polarity_scores(r)["compound"] for r in responses], dtype=np.float64)
