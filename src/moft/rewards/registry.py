"""Reward models by name (SPEC 4): ``get_reward("toxicity", batch_size=64)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from moft.rewards.base import RewardModel
from moft.rewards.length import ConcisenessReward, LengthReward
from moft.rewards.relevance import RelevanceReward
from moft.rewards.sentiment import SentimentReward
from moft.rewards.toxicity import ToxicityReward

REWARDS: dict[str, Callable[..., RewardModel]] = {
    "toxicity": ToxicityReward,
    "relevance": RelevanceReward,
    "sentiment": SentimentReward,
    "conciseness": ConcisenessReward,
    "length": LengthReward,
}


def get_reward(name: str, **options: Any) -> RewardModel:
    """The reward model called ``name``, built with ``options`` (weights load on first score)."""
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}")
    try:
        return REWARDS[name](**options)
    except TypeError as err:
        raise TypeError(f"bad options {options} for reward {name!r}: {err}") from err


def score_rewards(
    rewards: Sequence[RewardModel], prompts: Sequence[str], responses: Sequence[str]
) -> np.ndarray:
    """Every reward on every pair: ``(N, len(rewards))``, column ``j`` from ``rewards[j]``."""
    return np.stack([r.score(prompts, responses) for r in rewards], axis=1)
