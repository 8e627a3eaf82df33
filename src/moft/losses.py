"""The losses every method shares: ListNet, the listwise DPO loss, pairwise DPO, cosine penalty.

All listwise functions work on padded batches of groups: ``scores``, ``labels`` and ``mask`` are
``(batch, n_items)`` with ``mask`` True on real items. They return one value per group so that
callers can weight groups (per-group objective weights) and drop groups without signal.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LabelNorm = Literal["l1", "softmax"]
_NEG = -1e9  # stands in for -inf on padded items without producing NaN gradients


def normalise_labels(
    labels: torch.Tensor, mask: torch.Tensor, kind: LabelNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """ListNet target t(z) over the real items of each group.

    Returns ``(target (B, n), valid (B,))``: ``l1`` divides by the label sum and marks groups whose
    labels sum to 0 as invalid (no signal); ``softmax`` is always valid.
    """
    if kind == "l1":
        z = labels.clamp_min(0) * mask
        total = z.sum(-1, keepdim=True)
        valid = total.squeeze(-1) > 0
        return z / total.clamp_min(1e-12), valid
    if kind == "softmax":
        target = torch.softmax(labels.masked_fill(~mask, _NEG), dim=-1) * mask
        return target, mask.any(-1)
    raise ValueError(f"unknown label normalisation {kind!r}; allowed: l1, softmax")


def listnet_loss(scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-sum_i t_i log softmax_i(scores)`` per group, padded items excluded. Returns (B,)."""
    log_p = torch.log_softmax(scores.masked_fill(~mask, _NEG), dim=-1)
    return -(target * log_p * mask).sum(-1)


def listnet_dpo_loss(
    scores: torch.Tensor,
    base_scores: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    """Listwise DPO loss (HyperDPO eq. 10): ListNet on ``beta * (s_theta - s_base)``. Returns (B,).

    With two items and a one-hot ``l1`` target this equals :func:`dpo_loss` on the pair.
    """
    return listnet_loss(beta * (scores - base_scores), target, mask)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Pairwise DPO: ``-log sigmoid(beta * ((s_c - r_c) - (s_r - r_r)))`` per pair."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def cosine_penalty(weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """``G_w = -cos(w, (L_1..L_m))`` per row: ``weights`` and ``losses`` are (B, m). Returns (B,)."""
    return -F.cosine_similarity(weights, losses, dim=-1, eps=1e-12)


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` entries along dim 0 (0 when none is valid)."""
    valid = valid.to(values.dtype)
    return (values * valid).sum(0) / valid.sum(0).clamp_min(1.0)


def multi_objective_losses(
    scores: torch.Tensor,
    base_scores: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    betas: torch.Tensor,
) -> torch.Tensor:
    """Listwise DPO loss of every objective for every group: (B, m).

    ``targets`` is (B, n, m) (normalised labels), ``valid`` (B, m), ``betas`` (m,) or one
    temperature vector per group (B, m) (the temperature hypernetwork samples them). Entries of
    groups without signal for an objective are 0 (use ``valid`` to average them out).
    """
    per = [
        listnet_dpo_loss(
            scores, base_scores, targets[..., j], mask, betas[j] if betas.dim() == 1 else betas[:, j, None]
        )
        for j in range(targets.shape[-1])
    ]
    return torch.stack(per, dim=-1) * valid


def scalarised_loss(
    group_losses: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor,
    cosine_lambda: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_j w_j L_j + lambda G_w`` for per-group weights (B, m); returns (loss, L vector (m,)).

    Each objective's term averages its weighted per-group losses over the groups that carry
    signal for it, so sparse objectives are not diluted by groups without clicks.
    """
    per_objective = masked_mean(weights * group_losses, valid)  # (m,)
    loss = per_objective.sum()
    if cosine_lambda > 0:
        full = valid.all(-1)
        if full.any():
            loss = loss + cosine_lambda * cosine_penalty(weights[full], group_losses[full]).mean()
    return loss, masked_mean(group_losses, valid).detach()
