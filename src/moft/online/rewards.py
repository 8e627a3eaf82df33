"""The objectives' rewards behind one scorer: ``score(prompts, responses) -> (n, m)``.

MO-ODPO mixes rewards with ``w`` (``s = sum_k w_k r_k``, paper eq. 1), so each reward is
standardised first with mean/std measured on responses to training prompts (SPEC 4); the
statistics travel with the trained front. Prompts given as chat messages are flattened to text
(:func:`moft.rewards.prompts.prompt_text`); the online loop passes the original prompts, never
the weight-conditioned ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moft.models.lm import Prompt
from moft.rewards import RewardModel, RewardNormaliser, score_rewards
from moft.rewards.prompts import prompt_text


@dataclass
class RewardSet:
    """``m`` reward models, column ``j`` named ``names[j]`` (the objective it scores), and the
    fitted normaliser whose statistics standardise them."""

    models: list[RewardModel]
    normaliser: RewardNormaliser

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a RewardSet needs at least one reward model")
        if len(self.models) != len(self.normaliser.names):
            raise ValueError(
                f"{len(self.models)} reward models but normaliser columns {list(self.normaliser.names)}; "
                "give one model per objective"
            )
        if self.normaliser.mean is None:
            raise ValueError(f"the normaliser of {list(self.normaliser.names)} is not fitted; use RewardSet.fit")

    @property
    def names(self) -> list[str]:
        """Objective names, in column order."""
        return list(self.normaliser.names)

    @classmethod
    def fit(
        cls,
        names: Sequence[str],
        models: Sequence[RewardModel],
        prompts: Sequence[Prompt],
        responses: Sequence[str],
    ) -> RewardSet:
        """Score ``(prompt, response)`` pairs of the TRAINING split and fit the normaliser on them."""
        raw = score_rewards(list(models), [prompt_text(p) for p in prompts], list(responses))
        return cls(list(models), RewardNormaliser(tuple(names)).fit(raw))

    @classmethod
    def from_stats(cls, models: Sequence[RewardModel], stats: dict[str, Any]) -> RewardSet:
        """Rebuild from :meth:`stats` (the ``{name: {mean, std}}`` dict saved with a front)."""
        return cls(list(models), RewardNormaliser.from_dict(stats))

    def stats(self) -> dict[str, dict[str, float]]:
        return self.normaliser.to_dict()

    def raw(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """Unnormalised rewards ``(n, m)``."""
        return score_rewards(self.models, [prompt_text(p) for p in prompts], list(responses))

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """Normalised rewards ``(n, m)``, ``(r - mean) / std`` per objective."""
        return self.normaliser.transform(self.raw(prompts, responses))
