"""MOPO for parametric models (SPEC 5.5, issue 6 parts 3-4): the groups of a data set as the
contexts of tabular MOPO, its policy as the target of weighted behaviour cloning.

Both tracks use this module. A group (a query's items on the LTR track, a prompt's responses on
the LLM track) is a context and its members are the actions:

- win rates ``p_k(x, y)`` from the labels: the share of the other members of ``y``'s group that
  ``y`` beats on objective ``k`` (ties count one half) — the win rate against the behaviour data,
  since every member of a group appears in the data once; a group without signal for ``k`` (a
  tie, no clicks) gives every member the configured ``unobserved_win_rate``;
- the reference ``pi_ref``: that behaviour distribution, uniform over the group;
- one constrained problem per point ``w`` of the evaluation grid: objective 1 primary, thresholds
  ``b_k = lo_k + w_k (hi_k - lo_k)`` for ``k >= 2``, where ``lo_k`` is ``E[p_k]`` of the
  unconstrained optimum (``lambda = 0``) and ``hi_k`` that of the optimum for objective ``k``
  alone at the same ``tau`` (a feasible value: its own policy attains it). ``w_k = 0`` leaves the
  constraint slack, ``w_k = 1`` asks for objective ``k``'s own optimum; the front is this sweep;
- the model is then fitted to ``pi_lambda`` by the shared listwise DPO loss
  (:func:`moft.losses.listnet_dpo_loss`): ListNet of ``beta_1 (s_theta - s_ref)`` towards
  ``pi_lambda``, so the model's implicit group policy ``softmax(beta_1 (s_theta - s_ref))``
  starts at the uniform ``pi_ref`` and is cloned onto ``pi_lambda``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moft.config import MopoSettings
from moft.mopo.tabular import MopoResult, expected_rates, mopo, pi_lambda
from moft.training import MetricLogger, no_log


def graded_win_rates(
    labels: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None, unobserved: float = 0.5
) -> np.ndarray:
    """(C, A, m) ``p_k(x, y)``: the share of ``y``'s group mates that ``y`` beats on objective
    ``k`` by label, ties one half. ``labels (C, A, m)``, higher is better; ``mask (C, A)`` marks
    real members; ``valid (C, m)`` False where group ``x`` has no signal for ``k`` (then every
    member gets ``unobserved``), as does a member without group mates."""
    labels = np.asarray(labels, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if labels.ndim != 3 or labels.shape[:2] != mask.shape:
        raise ValueError(f"labels must be (groups, members, m) matching mask {mask.shape}, got {labels.shape}")
    diff = labels[:, :, None, :] - labels[:, None, :, :]  # (C, A, A, m): y vs y'
    wins = (diff > 0) + 0.5 * (diff == 0)
    pair = mask[:, :, None] & mask[:, None, :] & ~np.eye(mask.shape[1], dtype=bool)[None]
    counts = pair.sum(2)  # (C, A): group mates of each member
    rates = np.full(labels.shape, float(unobserved))
    seen = counts > 0
    rates[seen] = (wins * pair[..., None]).sum(2)[seen] / counts[seen][:, None]
    if valid is not None:
        no_signal = ~np.asarray(valid, dtype=bool)  # (C, m)
        rates = np.where(no_signal[:, None, :], float(unobserved), rates)
    return rates


def behaviour_policy(mask: np.ndarray) -> np.ndarray:
    """(C, A) the data's behaviour distribution: uniform over each group's members."""
    mask = np.asarray(mask, dtype=np.float64)
    return mask / mask.sum(1, keepdims=True).clip(min=1.0)


def threshold_range(
    pi_ref: np.ndarray, rates: np.ndarray, tau: float, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``, each ``(m - 1,)``: ``E[p_k]`` (k >= 2) of the unconstrained optimum for
    objective 1, and of the optimum for objective ``k`` alone, at temperature ``tau``."""
    m = rates.shape[-1]
    lo = expected_rates(pi_lambda(pi_ref, rates, np.zeros(m - 1), tau, mask), rates)[1:]
    hi = np.empty(m - 1)
    for k in range(1, m):
        alone = rates[..., [k] + [j for j in range(m) if j != k]]  # objective k first, lambda = 0
        hi[k - 1] = expected_rates(pi_lambda(pi_ref, alone, np.zeros(m - 1), tau, mask), rates)[k]
    return lo, np.maximum(hi, lo)


def grid_thresholds(grid: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(P, m - 1) ``b_k = lo_k + w_k (hi_k - lo_k)`` for every grid point ``w``."""
    grid = np.asarray(grid, dtype=np.float64)
    return lo[None, :] + grid[:, 1:] * (hi - lo)[None, :]


@dataclass(frozen=True)
class MopoTargets:
    """The MOPO policy of every training group at every grid point."""

    targets: list[np.ndarray]  # P tables (C, A): pi_lambda at grid point i
    results: list[MopoResult]
    thresholds: np.ndarray  # (P, m - 1)
    lo: np.ndarray
    hi: np.ndarray

    def summary(self) -> list[dict]:
        """Per grid point: thresholds, multipliers, achieved E[p_k], active constraints."""
        out = []
        for b, r in zip(self.thresholds, self.results):
            last = r.trace[-1]
            out.append({
                "thresholds": b.tolist(),
                "multipliers": r.multipliers.tolist(),
                "values": last.values,
                "active": last.active,
                "converged": r.converged,
                "steps": r.steps,
            })
        return out


def mopo_targets(
    labels: np.ndarray,
    mask: np.ndarray,
    valid: np.ndarray | None,
    grid: np.ndarray,
    settings: MopoSettings,
    names: list[str],
    log: MetricLogger = no_log,
) -> MopoTargets:
    """Solve MOPO on the groups at every grid point (see the module docstring); multipliers,
    constraint values, bounds and active constraints of each solve go to ``log`` as
    ``mopo{i}_*`` metrics per recorded step."""
    mask = np.asarray(mask, dtype=bool)
    rates = graded_win_rates(labels, mask, valid, settings.unobserved_win_rate)
    if rates.shape[-1] < 2:
        raise ValueError("MOPO needs at least two objectives (objective 1 primary, the others constrained)")
    pi_ref = behaviour_policy(mask)
    lo, hi = threshold_range(pi_ref, rates, settings.tau, mask)
    thresholds = grid_thresholds(grid, lo, hi)
    targets, results = [], []
    for i, b in enumerate(thresholds):
        result = mopo(pi_ref, rates, b, settings, mask)
        for step in result.trace:
            log(step.metrics(names, prefix=f"mopo{i}_"), step.step)
        targets.append(result.policy)
        results.append(result)
    return MopoTargets(targets, results, thresholds, lo, hi)
