"""Offline reward models for the LLM track (SPEC 4): non-toxicity, relevance, sentiment, length.

Every model scores ``(prompt, response)`` pairs in batches on the CPU, higher is better; weights
load lazily, once per process. ``RewardNormaliser`` standardises them with training statistics.
"""

from moft.rewards.base import RewardModel
from moft.rewards.normaliser import RewardNormaliser
from moft.rewards.registry import REWARDS, get_reward, score_rewards

__all__ = ["REWARDS", "RewardModel", "RewardNormaliser", "get_reward", "score_rewards"]
