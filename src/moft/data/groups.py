"""Prepared LTR tables as tensors of groups, and padded batches of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class Batch:
    """A padded batch of groups. ``n`` is the largest group in the batch."""

    x: torch.Tensor  # (B, n, d) features
    mask: torch.Tensor  # (B, n) True on real items
    main: torch.Tensor  # (B, n) main relevance label
    objectives: torch.Tensor  # (B, n, m) transformed objective labels

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.x, self.mask, self.main, self.objectives)))


@dataclass(frozen=True)
class GroupedItems:
    """Items of many groups stored flat, with offsets; ``group g`` is rows offsets[g]:offsets[g+1]."""

    group_ids: list[str]
    features: torch.Tensor  # (N, d)
    main: torch.Tensor  # (N,)
    objectives: torch.Tensor  # (N, m)
    offsets: np.ndarray  # (G + 1,)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, feature_cols: list[str], objective_cols: list[str]
    ) -> GroupedItems:
        """Rows of one group must be contiguous (the prepared parquet guarantees it)."""
        gid = frame["group_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
        return cls(
            group_ids=[str(g) for g in gid[starts]],
            features=torch.tensor(frame[feature_cols].to_numpy(np.float32)),
            main=torch.tensor(frame["label_main"].to_numpy(np.float32)),
            objectives=torch.tensor(frame[objective_cols].to_numpy(np.float32)),
            offsets=np.r_[starts, len(frame)],
        )

    @classmethod
    def from_parquet(
        cls, path: Path, feature_cols: list[str], objective_cols: list[str]
    ) -> GroupedItems:
        return cls.from_frame(pd.read_parquet(path), feature_cols, objective_cols)

    def __len__(self) -> int:
        return len(self.group_ids)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, groups: np.ndarray | list[int]) -> Batch:
        sizes = self.sizes[groups]
        b, n = len(groups), int(sizes.max())
        d, m = self.features.shape[1], self.objectives.shape[1]
        x = torch.zeros(b, n, d)
        main = torch.zeros(b, n)
        obj = torch.zeros(b, n, m)
        mask = torch.zeros(b, n, dtype=torch.bool)
        for row, g in enumerate(groups):
            lo, hi = self.offsets[g], self.offsets[g + 1]
            x[row, : hi - lo] = self.features[lo:hi]
            main[row, : hi - lo] = self.main[lo:hi]
            obj[row, : hi - lo] = self.objectives[lo:hi]
            mask[row, : hi - lo] = True
        return Batch(x, mask, main, obj)

    def batches(
        self, batch_groups: int, rng: np.random.Generator | None = None, by_size: bool = False
    ) -> list[np.ndarray]:
        """Group indices in batches: shuffled when ``rng`` is given, else in order; ``by_size``
        orders groups by size first so that batches carry little padding (for inference)."""
        if rng is not None:
            order = rng.permutation(len(self))
        elif by_size:
            order = np.argsort(self.sizes, kind="stable")
        else:
            order = np.arange(len(self))
        return [order[i : i + batch_groups] for i in range(0, len(order), batch_groups)]
