"""Multi-objective fine-tuning methods behind one small interface.

A method's ``fit`` turns a :class:`FitContext` into a :class:`TrainedFront`, whose ``policy(w,
beta_scale)`` scores groups at one trade-off. The pipeline only ever talks to this interface, so
a new method (a baseline, MOPO, an LLM method) plugs in by adding a module and a registry entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from moft.config import MoftConfig
from moft.data.groups import Batch, GroupedItems
from moft.evaluation import Policy
from moft.models.scorer import BaseScorer
from moft.training import MetricLogger, no_log


@dataclass(frozen=True)
class Accounting:
    """What a method cost: wall time of all its training jobs, jobs, trainable parameters."""

    train_seconds: float
    n_jobs: int
    trainable_params: int

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class FitContext:
    cfg: MoftConfig
    train: GroupedItems
    val: GroupedItems
    base: BaseScorer
    grid: np.ndarray  # (P, m): the evaluation grid, for methods that train one model per point
    device: str = "cpu"
    log: MetricLogger = no_log
    prerequisites: dict[str, TrainedFront] = field(default_factory=dict)  # e.g. single models


class TrainedFront(Protocol):
    name: str
    accounting: Accounting

    def policy(self, w: np.ndarray, beta_scale: float = 1.0) -> Policy: ...

    def save(self, out_dir: Path) -> None: ...


class Method(Protocol):
    name: str
    requires: tuple[str, ...]  # methods whose trained artefacts fit() receives as prerequisites

    def fit(self, ctx: FitContext) -> TrainedFront: ...

    def load(self, path: Path, cfg: MoftConfig, base: BaseScorer) -> TrainedFront: ...


def temperature_scaled(
    base: BaseScorer, scores: Callable[[Batch], torch.Tensor], beta_scale: float
) -> Policy:
    """Proposition 3.1: scores at temperature ``c * beta`` are
    ``(1 - 1/c) s_base + (1/c) s_beta`` (c = 1 is the identity)."""
    if not beta_scale > 0:
        raise ValueError(f"beta_scale must be > 0, got {beta_scale}")
    if beta_scale == 1.0:
        return scores
    c = float(beta_scale)

    def policy(batch: Batch) -> torch.Tensor:
        return (1 - 1 / c) * base(batch.x, batch.mask) + scores(batch) / c

    return policy


def get_method(name: str) -> Method:
    from moft.methods.baselines import DPOLS, MODPO, DPOSoup, SingleObjective
    from moft.methods.hyperdpo import HyperDPO, HyperDPOTemp
    from moft.methods.mopo import MOPO

    registry: dict[str, Method] = {
        m.name: m for m in (HyperDPO(), HyperDPOTemp(), DPOLS(), DPOSoup(), MODPO(), SingleObjective(), MOPO())
    }
    if name not in registry:  # the config validates names; this guards direct calls
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]
