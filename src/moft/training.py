"""Training loops: one early-stopping loop shared by the base scorer and every method."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from moft.config import BaseConfig, OptimConfig
from moft.data.groups import Batch, GroupedItems
from moft.evaluation import group_metrics
from moft.losses import listnet_loss, normalise_labels
from moft.models.scorer import BaseScorer

MetricLogger = Callable[[dict[str, float], int], None]  # (metrics, step) -> None


def no_log(metrics: dict[str, float], step: int) -> None:
    """A :data:`MetricLogger` that drops everything (library calls without tracking)."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    return device


def set_threads(threads: int | None, jobs: int = 1) -> int:
    """Split the cores between concurrent jobs (two jobs each taking all cores run ~6.5x slower)."""
    n = threads or max(1, (os.cpu_count() or 1) // max(1, jobs))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seconds: float = 0.0


def fit(
    model: torch.nn.Module,
    train: GroupedItems,
    optim: OptimConfig,
    step_loss: Callable[[Batch, np.random.Generator], torch.Tensor],
    validate: Callable[[], float],
    log: MetricLogger = no_log,
    desc: str = "train",
    device: str = "cpu",
) -> TrainResult:
    """AdamW over shuffled batches of groups; keep the state with the best validation score.

    ``step_loss`` maps a batch to a scalar loss; ``validate`` returns a larger-is-better score
    after each epoch; training stops after ``optim.patience`` epochs without improvement.
    """
    rng = np.random.default_rng(optim.seed)  # shuffling and weight sampling: this fit's own
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    result = TrainResult(model)
    best_state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    step = 0
    bar = tqdm(range(1, optim.epochs + 1), desc=desc, unit="epoch", leave=False, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        losses = []
        for idx in train.batches(optim.batch_groups, rng):
            loss = step_loss(train.batch(idx).to(device), rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            losses.append(loss.item())
            step += 1
        row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if epoch % optim.eval_every and epoch != optim.epochs:
            log({"train_loss": row["train_loss"]}, epoch)
            continue
        model.eval()
        score = row["val_score"] = validate()
        result.history.append(row)
        log({"train_loss": row["train_loss"], "val_score": score}, epoch)
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val=f"{score:.4f}", best=result.best_epoch)
        if epoch - result.best_epoch >= optim.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def train_base_scorer(
    cfg: BaseConfig,
    train: GroupedItems,
    val: GroupedItems,
    k: int,
    log: MetricLogger = no_log,
    device: str = "cpu",
) -> TrainResult:
    """ListNet on the main label, early-stopped on validation NDCG@k of the main label."""
    seed_everything(cfg.optim.seed)
    model = BaseScorer(train.features.shape[1], cfg.model, cfg.feature_transform)
    model.scaler.fit(train.features)
    model.to(device)

    def step_loss(batch: Batch, rng: np.random.Generator) -> torch.Tensor:
        target, valid = normalise_labels(batch.main, batch.mask, cfg.label_norm)
        return listnet_loss(model(batch.x, batch.mask), target, batch.mask)[valid].mean()

    def validate() -> float:
        metrics = group_metrics(lambda b: model(b.x, b.mask), val, k, device=device)
        return float(np.nanmean(metrics.main))

    return fit(model, train, cfg.optim, step_loss, validate, log, desc="base", device=device)
