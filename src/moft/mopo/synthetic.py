"""MOPO's synthetic suite (SPEC 5.5): a context-free bandit with a few actions and two objectives,
canonical preference structures, and the exact constrained optimum solved on the primal.

Actions are ``0..n-1``; a lower index is better unless a structure says otherwise:

- ``total_order``: ``0 > 1 > ... > n-1`` on both objectives (``0`` is the Condorcet winner);
- ``partial_order``: as the total order, except that ``0`` and ``1`` are incomparable: ``0`` wins
  on the primary objective and ``1`` on the secondary one (two undominated actions);
- ``antichain``: the primary order is ``0 > ... > n-1``, the secondary one its reverse (every
  action is Pareto-optimal; the constraint decides the mixture);
- ``pairwise_incomparable``: every comparison is a tie on both objectives (no signal: the
  optimum is the reference policy);
- ``unobserved``: the total order over ``0..n-2``; action ``n-1`` is never compared (its win rate
  is the documented fill value of :func:`moft.mopo.tabular.win_rates`).

The exact optimum of ``max_pi E_pi[p_1] - tau KL(pi || pi_ref) s.t. E_pi[p_k] >= b_k`` is found by
SLSQP on the primal over the simplex, independently of MOPO's dual.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from moft.config import SYNTHETIC_LABELS, SyntheticCase
from moft.mopo.tabular import PreferenceTuples, WinRates, context_distribution, expected_rates, support

CASES: tuple[SyntheticCase, ...] = (
    "total_order", "partial_order", "antichain", "pairwise_incomparable", "unobserved"
)  # fmt: skip
OUTCOME_PREFIX = "o_"  # column of a label's outcomes in the tuples table
TUPLE_COLUMNS = ["case", "context", "action", "other"]


def outcome(case: SyntheticCase, label: str, y: int, y_other: int) -> float:
    """``o`` of ``y`` against ``y_other`` on objective ``label`` in ``case``: 1 when ``y`` wins, 0 when
    it loses, 1/2 for a tie."""
    if case == "pairwise_incomparable":
        return 0.5
    reverse = (case == "antichain" and label == "secondary") or (
        case == "partial_order" and label == "secondary" and {y, y_other} == {0, 1}
    )
    return float((y > y_other) if reverse else (y < y_other))


def compared_actions(case: SyntheticCase, n_actions: int) -> list[int]:
    """The actions the tuples of ``case`` compare (all but the last for ``unobserved``)."""
    return list(range(n_actions - 1 if case == "unobserved" else n_actions))


def generate_tuples(
    case: SyntheticCase, n_actions: int, samples_per_pair: int, seed: int
) -> PreferenceTuples:
    """``samples_per_pair`` tuples for every pair of compared actions, each in a random orientation
    ``(y, y')`` or ``(y', y)``, rows shuffled; outcomes in ``SYNTHETIC_LABELS`` order. Deterministic
    in (``case``, ``seed``)."""
    if case not in CASES:
        raise ValueError(f"unknown synthetic case {case!r}; cases: {', '.join(CASES)}")
    rng = np.random.default_rng([seed, CASES.index(case)])
    pairs = np.array(list(combinations(compared_actions(case, n_actions), 2)), dtype=np.int64)
    pairs = np.repeat(pairs, samples_per_pair, axis=0)
    flip = rng.random(len(pairs)) < 0.5
    pairs[flip] = pairs[flip, ::-1]
    pairs = pairs[rng.permutation(len(pairs))]
    outcomes = np.array(
        [[outcome(case, label, y, y_other) for label in SYNTHETIC_LABELS] for y, y_other in pairs]
    )
    return PreferenceTuples(np.zeros(len(pairs), dtype=np.int64), pairs[:, 0], pairs[:, 1], outcomes)


def tuples_frame(
    case: str, tuples: PreferenceTuples, labels: tuple[str, ...] = SYNTHETIC_LABELS
) -> pd.DataFrame:
    """The tuples as a table: ``case, context, action, other, o_<label>...``."""
    frame = pd.DataFrame(
        {"case": case, "context": tuples.contexts, "action": tuples.actions, "other": tuples.others}
    )
    for k, label in enumerate(labels):
        frame[OUTCOME_PREFIX + label] = tuples.outcomes[:, k]
    return frame


def tuples_from_frame(frame: pd.DataFrame, labels: list[str]) -> PreferenceTuples:
    """The tuples of one case's table, outcomes in the order of ``labels`` (objective order)."""
    return PreferenceTuples(
        frame["context"].to_numpy(np.int64),
        frame["action"].to_numpy(np.int64),
        frame["other"].to_numpy(np.int64),
        frame[[OUTCOME_PREFIX + label for label in labels]].to_numpy(np.float64),
    )


def reference_policy(kind: str, rates: WinRates) -> np.ndarray:
    """(C, A) ``uniform`` over the actions, or ``behaviour``: each action's share of the
    comparisons in its context (0 for an action never compared)."""
    counts = rates.counts.astype(np.float64)
    if kind == "uniform":
        return np.full(counts.shape, 1.0 / counts.shape[1])
    if kind == "behaviour":
        return counts / counts.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown reference policy {kind!r}; expected 'uniform' or 'behaviour'")


def thresholds_between(
    pi_ref: np.ndarray, rates: np.ndarray, fractions: list[float], mask: np.ndarray | None = None
) -> np.ndarray:
    """(m - 1,) ``b_k = E_ref[p_k] + f_k (E_x max_y p_k(x, y) - E_ref[p_k])`` for objectives 2..m:
    between the reference's value (f = 0) and the best achievable one (f = 1), so feasible."""
    valid = support(pi_ref, mask)
    best = np.where(valid[..., None], rates, -np.inf).max(axis=1).mean(axis=0)[1:]
    at_ref = expected_rates(np.asarray(pi_ref, dtype=np.float64), rates)[1:]
    return at_ref + np.asarray(fractions, dtype=np.float64) * (best - at_ref)


def exact_optimum(
    pi_ref: np.ndarray,
    rates: np.ndarray,
    thresholds: np.ndarray,
    tau: float,
    mask: np.ndarray | None = None,
    context_weights: np.ndarray | None = None,
) -> np.ndarray:
    """(C, A) the maximiser of ``E_x E_pi[p_1] - tau E_x KL(pi || pi_ref)`` subject to
    ``E_x E_pi[p_k] >= b_k`` over policies on ``pi_ref``'s support, by SLSQP on the primal (the
    simplex per context as equality constraints, bounds ``0 <= pi <= 1``, exact gradients).

    Raises ValueError when the solver fails (e.g. infeasible thresholds).
    """
    pi_ref = np.asarray(pi_ref, dtype=np.float64)
    valid = support(pi_ref, mask)
    n_contexts = valid.shape[0]
    rho = context_distribution(context_weights, n_contexts)
    row = np.nonzero(valid)[0]  # context of each free variable
    ref, weight = pi_ref[valid], rho[row]
    p = rates[valid]  # (n_free, m)
    b = np.asarray(thresholds, dtype=np.float64)

    def negative_objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        log_ratio = np.log(np.maximum(x, 1e-300) / ref)
        value = weight @ (x * p[:, 0]) - tau * weight @ (x * log_ratio)
        grad = weight * p[:, 0] - tau * weight * (log_ratio + 1.0)
        return -value, -grad

    simplex = np.zeros((n_contexts, len(ref)))  # row c sums context c's probabilities
    simplex[row, np.arange(len(ref))] = 1.0
    secondary = (weight[:, None] * p[:, 1:]).T  # (m - 1, n_free): E_x E_pi[p_k] = secondary @ x
    constraints = [
        {"type": "eq", "fun": lambda x: simplex @ x - 1.0, "jac": lambda x: simplex},
        {"type": "ineq", "fun": lambda x: secondary @ x - b, "jac": lambda x: secondary},
    ]
    x0 = ref / (simplex @ ref)[row]
    found = minimize(
        negative_objective, x0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * len(ref),
        constraints=constraints, options={"ftol": 1e-15, "maxiter": 2000},
    )  # fmt: skip
    if not found.success:
        raise ValueError(f"the exact solver failed at tau={tau:g}, thresholds {b.tolist()}: {found.message}")
    pi = np.zeros_like(pi_ref)
    pi[valid] = np.clip(found.x, 0.0, None)
    return pi / pi.sum(axis=1, keepdims=True)
