"""Per-reward z-scores with mean/std measured on the training data (SPEC 4, 5.4).

Rewards live on unrelated scales (a probability, a cosine, a log word count); MO-ODPO mixes them
with weights ``w``, so each is standardised first. Statistics come from training prompts only and
travel with the model as a small dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class RewardNormaliser:
    """``(r - mean) / std`` per reward; column ``j`` of every rewards matrix is ``names[j]``."""

    names: tuple[str, ...]
    mean: np.ndarray | None = None  # (m,)
    std: np.ndarray | None = None  # (m,)

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"reward names must be non-empty and distinct, got {self.names}")

    def _check(self, rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.ndim == 0 or rewards.shape[-1] != len(self.names):
            raise ValueError(
                f"rewards of shape {rewards.shape} do not end in one column per reward "
                f"{self.names}; expected (..., {len(self.names)})"
            )
        for j, name in enumerate(self.names):
            if not np.isfinite(rewards[..., j]).all():
                raise ValueError(f"reward {name!r} has non-finite values")
        return rewards

    def fit(self, rewards: np.ndarray) -> RewardNormaliser:
        """Measure mean/std (population) on training rewards ``(N, m)``, ``N >= 2``."""
        rewards = self._check(rewards)
        if rewards.ndim != 2 or rewards.shape[0] < 2:
            raise ValueError(f"fit needs a (N >= 2, {len(self.names)}) matrix, got {rewards.shape}")
        mean, std = rewards.mean(0), rewards.std(0)
        for name, mu, sd in zip(self.names, mean, std):
            if sd <= 1e-12 * max(1.0, abs(mu)):
                raise ValueError(
                    f"reward {name!r} is constant on the training data (mean {mu:.6g}, std {sd:.3g}) "
                    "and cannot be normalised; drop it or fit on more varied responses"
                )
        self.mean, self.std = mean, std
        return self

    def transform(self, rewards: np.ndarray) -> np.ndarray:
        """Normalised rewards, same shape ``(..., m)``."""
        if self.mean is None or self.std is None:
            raise RuntimeError(f"RewardNormaliser for {self.names} is not fitted; call fit first")
        return (self._check(rewards) - self.mean) / self.std

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{name: {"mean": .., "std": ..}}`` in column order, JSON-ready."""
        if self.mean is None or self.std is None:
            raise RuntimeError(f"RewardNormaliser for {self.names} is not fitted; nothing to save")
        stats = zip(self.names, self.mean, self.std)
        return {n: {"mean": float(m), "std": float(s)} for n, m, s in stats}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardNormaliser:
        """Inverse of ``to_dict``."""
        names: Sequence[str] = list(data)
        missing = [n for n in names if not {"mean", "std"} <= set(data[n])]
        if missing:
            raise ValueError(f"normaliser entries {missing} lack 'mean' and 'std'")
        mean = np.array([data[n]["mean"] for n in names], dtype=np.float64)
        std = np.array([data[n]["std"] for n in names], dtype=np.float64)
        if (std <= 0).any():
            raise ValueError(f"normaliser std must be > 0, got {dict(zip(names, std.tolist()))}")
        return cls(tuple(names), mean, std)
