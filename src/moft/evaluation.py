"""The one evaluation path: score groups with a policy, per-group NDCG, fronts over a grid.

Used by model selection during training and by the evaluate stage, so a front is measured the
same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moft.data.groups import Batch, GroupedItems
from moft.metrics.pareto import hypervolume
from moft.metrics.ranking import ndcg_at_k

Policy = Callable[[Batch], torch.Tensor]  # padded batch -> scores (B, n)
PolicyFactory = Callable[[np.ndarray], Policy]  # weight vector (m,) -> policy


@dataclass(frozen=True)
class GroupMetrics:
    """Per-group NDCG@k of one policy: NaN where a group has no signal for that label."""

    objectives: np.ndarray  # (G, m)
    main: np.ndarray  # (G,)


@torch.inference_mode()
def group_metrics(
    policy: Policy, data: GroupedItems, k: int, batch_groups: int = 16, device: str = "cpu"
) -> GroupMetrics:
    """Per-group NDCG@k, in the groups' own order (batches are formed by size for speed)."""
    objectives, main, order = [], [], []
    for idx in data.batches(batch_groups, by_size=True):
        order.append(idx)
        batch = data.batch(idx).to(device)
        scores = policy(batch).double().cpu().numpy()
        mask = batch.mask.cpu().numpy()
        main.append(ndcg_at_k(scores, batch.main.cpu().numpy(), mask, k))
        labels = batch.objectives.cpu().numpy()
        objectives.append(
            np.stack([ndcg_at_k(scores, labels[..., j], mask, k) for j in range(labels.shape[-1])], -1)
        )
    inverse = np.argsort(np.concatenate(order))
    return GroupMetrics(np.concatenate(objectives)[inverse], np.concatenate(main)[inverse])


@dataclass(frozen=True)
class FrontMetrics:
    """Per-group metrics at every grid point of one method."""

    grid: np.ndarray  # (P, m)
    objectives: np.ndarray  # (P, G, m)
    main: np.ndarray  # (P, G)

    @property
    def points(self) -> np.ndarray:
        """Mean objective NDCG per grid point, groups without signal left out: (P, m)."""
        return np.nanmean(self.objectives, axis=1)

    @property
    def main_points(self) -> np.ndarray:
        return np.nanmean(self.main, axis=1)  # (P,)

    def hypervolume(self, reference_point: np.ndarray) -> float:
        return hypervolume(self.points, reference_point, "max")


def front_metrics(
    policy_at: PolicyFactory, data: GroupedItems, grid: np.ndarray, k: int, device: str = "cpu"
) -> FrontMetrics:
    per_point = [group_metrics(policy_at(w), data, k, device=device) for w in grid]
    return FrontMetrics(
        grid=np.asarray(grid, dtype=np.float64),
        objectives=np.stack([p.objectives for p in per_point]),
        main=np.stack([p.main for p in per_point]),
    )
