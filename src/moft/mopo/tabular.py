"""Tabular MOPO (SPEC 5.5): win rates, the closed-form policy, the convex dual, the pessimistic
lower bound and the outer loop, on numpy float64 tables.

Notation. Contexts ``x`` (rows), actions ``y`` (columns), objectives ``k = 1..m`` with objective 1
primary. Tables are shaped

- ``rates``: (C, A, m) win rates ``p_k(x, y)``;
- ``pi``, ``pi_ref``: (C, A) policies, each row on the simplex over the actions present;
- ``mask``: (C, A) bool, True where action ``y`` exists in context ``x`` (groups of different
  sizes: an LTR group's items or an LM prompt's responses are the actions of one context);
- ``context_weights``: (C,) the context distribution ``rho(x)``, uniform by default;
- ``lam``, ``thresholds``: (m - 1,) multipliers and lower bounds ``b`` of objectives 2..m.

The problem (``tau > 0``):

    max_pi  E_x E_pi[p_1] - tau E_x KL(pi(.|x) || pi_ref(.|x))   s.t.  E_x E_pi[p_k] >= b_k.

For multipliers ``lam >= 0`` the Lagrangian's maximiser is

    pi_lam(y|x) = pi_ref(y|x) exp(s_lam(x, y) / tau) / Z_lam(x),   s_lam = p_1 + sum_k lam_k p_k,

and ``lam`` minimises the convex dual

    g(lam) = tau E_x log Z_lam(x) - lam . b,   grad g(lam) = E_x E_{pi_lam}[p_{2:}] - b,

found by projected gradient descent onto ``lam >= 0``. Actions outside the mask or with
``pi_ref = 0`` keep probability 0 (``KL(pi || pi_ref)`` is infinite otherwise).

Pessimism: a constraint may bound ``LB_eps(E[p_k])``, the smallest mean over reweightings ``q`` of
the data with ``KL(q || data) <= eps`` (:func:`kl_lower_bound`, by its one-dimensional dual)
instead of the plain estimate. The outer loop (:func:`mopo`) adds the lagged reference (every
``T`` steps ``pi_ref <- pi``) and adaptive thresholds (then ``b_k <- rho E_pi[p_k]``).

Win rates come from preference tuples ``(x, y, y', o)`` (:func:`win_rates`); for rankings and LMs,
a group or prompt is a context, its items or responses the actions, with ``mask`` marking the
actions a group has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize_scalar

if TYPE_CHECKING:
    from moft.config import MopoSettings

# ------------------------------------------------------------------------------------------------
# Preference tuples and win rates


@dataclass(frozen=True)
class PreferenceTuples:
    """Tuples ``(x, y, y', o)``: ``o_k = 1`` when ``y`` beats ``y'`` on objective ``k``, ``0`` when
    ``y'`` beats ``y`` and ``1/2`` for a tie (each side gets half a win).

    Attributes:
        contexts: (N,) int context index of each tuple.
        actions: (N,) int index of ``y``.
        others: (N,) int index of ``y'`` (never equal to ``y``).
        outcomes: (N, m) float ``o`` in [0, 1].
    """

    contexts: np.ndarray
    actions: np.ndarray
    others: np.ndarray
    outcomes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.contexts)
        for name in ("contexts", "actions", "others"):
            value = np.asarray(getattr(self, name))
            if value.shape != (n,) or (n and not np.issubdtype(value.dtype, np.integer)):
                raise ValueError(
                    f"tuples.{name} must be an ({n},) integer vector, got {value.dtype} {value.shape}"
                )
            object.__setattr__(self, name, value.astype(np.int64))
        outcomes = np.asarray(self.outcomes, dtype=np.float64)
        if outcomes.ndim != 2 or outcomes.shape[0] != n or outcomes.shape[1] < 1:
            raise ValueError(f"tuples.outcomes must be an ({n}, m) array, got shape {outcomes.shape}")
        if not (np.isfinite(outcomes).all() and (outcomes >= 0).all() and (outcomes <= 1).all()):
            raise ValueError("tuples.outcomes must lie in [0, 1] (1: y wins, 0: y' wins, 1/2: a tie)")
        object.__setattr__(self, "outcomes", outcomes)
        if np.any(self.actions == self.others):
            raise ValueError("tuples compare an action with itself (actions == others): drop those rows")

    @property
    def m(self) -> int:
        """Number of objectives."""
        return self.outcomes.shape[1]

    def symmetrised(self) -> PreferenceTuples:
        """The tuples followed by their mirror images ``(x, y', y, 1 - o)``: each comparison then
        counts once for each of its two actions."""
        return PreferenceTuples(
            np.concatenate([self.contexts, self.contexts]),
            np.concatenate([self.actions, self.others]),
            np.concatenate([self.others, self.actions]),
            np.concatenate([self.outcomes, 1.0 - self.outcomes]),
        )

    def take(self, rows: np.ndarray) -> PreferenceTuples:
        """The tuples at ``rows`` (e.g. a bootstrap resample)."""
        return PreferenceTuples(
            self.contexts[rows], self.actions[rows], self.others[rows], self.outcomes[rows]
        )


@dataclass(frozen=True)
class WinRates:
    """Per-(context, action) win rates and how many comparisons each rests on.

    Attributes:
        rates: (C, A, m) ``p_k(x, y)``; ``unobserved`` where ``counts == 0``.
        counts: (C, A) comparisons action ``y`` took part in within context ``x``.
        unobserved: the value given to actions never compared.
    """

    rates: np.ndarray
    counts: np.ndarray
    unobserved: float

    @property
    def observed(self) -> np.ndarray:
        """(C, A) True where at least one tuple compares the action (usable as a ``mask``)."""
        return self.counts > 0


def win_rates(
    tuples: PreferenceTuples, n_contexts: int, n_actions: int, unobserved: float = 0.5
) -> WinRates:
    """Win rate of every action against the behaviour data, per objective.

    After symmetrising, ``p_k(x, y) = sum_i o_ik [x_i = x, y_i = y] / #{i: x_i = x, y_i = y}``:
    the share of ``y``'s comparisons in context ``x`` that ``y`` won on objective ``k`` (ties count
    one half).

    An action that no tuple compares has no estimate. It gets ``unobserved`` (default 1/2, a coin
    flip against the data): a finite value keeps ``E_pi[p_k]`` and the dual defined for every
    policy with the reference's support, so the constrained problem stays well posed, and 1/2
    neither favours nor excludes the action; 0 is the pessimistic choice. To leave such actions
    out instead, pass ``WinRates.observed`` as the ``mask`` of the policy functions.
    """
    if not 0.0 <= unobserved <= 1.0:
        raise ValueError(f"unobserved win rate must lie in [0, 1], got {unobserved}")
    both = tuples.symmetrised()
    for name, index, size in (("contexts", both.contexts, n_contexts), ("actions", both.actions, n_actions)):
        if len(index) and (index.min() < 0 or index.max() >= size):
            raise ValueError(
                f"tuples.{name} must lie in [0, {size}), got values in [{index.min()}, {index.max()}]"
            )
    cells = n_contexts * n_actions
    flat = both.contexts * n_actions + both.actions  # (2N,) cell of each (x, y)
    counts = np.bincount(flat, minlength=cells)
    wins = np.stack([np.bincount(flat, both.outcomes[:, k], cells) for k in range(tuples.m)], axis=-1)
    seen = counts > 0
    rates = np.full(wins.shape, float(unobserved))
    rates[seen] = wins[seen] / counts[seen, None]
    shape = (n_contexts, n_actions)
    return WinRates(rates.reshape(*shape, tuples.m), counts.reshape(shape), float(unobserved))


# ------------------------------------------------------------------------------------------------
# Policies, expectations, the dual


def support(pi_ref: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(C, A) bool: the actions a policy may use, those in ``mask`` with ``pi_ref > 0``."""
    pi_ref = np.asarray(pi_ref, dtype=np.float64)
    if pi_ref.ndim != 2:
        raise ValueError(f"pi_ref must be a (contexts, actions) table, got shape {pi_ref.shape}")
    valid = pi_ref > 0
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != pi_ref.shape:
            raise ValueError(f"mask must have pi_ref's shape {pi_ref.shape}, got {mask.shape}")
        valid &= mask
    if not valid.any(axis=1).all():
        rows = np.flatnonzero(~valid.any(axis=1)).tolist()
        raise ValueError(f"contexts {rows[:5]} have no action with pi_ref > 0 inside the mask")
    return valid


def context_distribution(context_weights: np.ndarray | None, n_contexts: int) -> np.ndarray:
    """(C,) the context distribution ``rho``: ``context_weights`` checked, or uniform."""
    if context_weights is None:
        return np.full(n_contexts, 1.0 / n_contexts)
    rho = np.asarray(context_weights, dtype=np.float64)
    if rho.shape != (n_contexts,) or (rho < 0).any() or not np.isclose(rho.sum(), 1.0):
        raise ValueError(f"context_weights must be a ({n_contexts},) distribution, got {rho}")
    return rho


def scalarised(rates: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """(C, A) ``s_lam = p_1 + sum_{k >= 2} lam_k p_k``."""
    lam = np.asarray(lam, dtype=np.float64)
    if lam.shape != (rates.shape[-1] - 1,):
        raise ValueError(f"lam must hold m - 1 = {rates.shape[-1] - 1} multipliers, got {lam.shape}")
    return rates[..., 0] + rates[..., 1:] @ lam


def _log_partition(
    pi_ref: np.ndarray, scores: np.ndarray, tau: float, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Log-weights ``log pi_ref + scores / tau`` (-inf off the support) and their row log-sum-exp."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    with np.errstate(divide="ignore"):
        logits = np.where(valid, np.log(np.where(valid, pi_ref, 1.0)) + scores / tau, -np.inf)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return logits, log_z


def pi_lambda(
    pi_ref: np.ndarray, rates: np.ndarray, lam: np.ndarray, tau: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """(C, A) ``pi_lam(y|x) ∝ pi_ref(y|x) exp((p_1 + lam . p_{2:}) / tau)``, per context, computed
    with a stable log-sum-exp; 0 off the support."""
    valid = support(pi_ref, mask)
    pi_ref = np.asarray(pi_ref, dtype=np.float64)
    logits, log_z = _log_partition(pi_ref, scalarised(rates, lam), tau, valid)
    return np.exp(logits - log_z[:, None])


def expected_rates(
    pi: np.ndarray, rates: np.ndarray, context_weights: np.ndarray | None = None
) -> np.ndarray:
    """(m,) ``E_x E_pi[p_k]`` for every objective (entries where ``pi = 0`` do not count, so
    ``rates`` may hold NaN off the support)."""
    rho = context_distribution(context_weights, pi.shape[0])
    joint = rho[:, None] * pi
    used = joint > 0
    return (joint[used][:, None] * rates[used]).sum(axis=0)


def kl_divergence(
    pi: np.ndarray, pi_ref: np.ndarray, context_weights: np.ndarray | None = None
) -> float:
    """``E_x KL(pi(.|x) || pi_ref(.|x))``; infinite when ``pi`` leaves ``pi_ref``'s support."""
    rho = context_distribution(context_weights, pi.shape[0])
    used = pi > 0
    if (used & (pi_ref <= 0)).any():
        return float("inf")
    terms = np.zeros_like(pi)
    terms[used] = pi[used] * np.log(pi[used] / pi_ref[used])
    return float(rho @ terms.sum(axis=1))


def primal_objective(
    pi: np.ndarray,
    pi_ref: np.ndarray,
    rates: np.ndarray,
    tau: float,
    context_weights: np.ndarray | None = None,
) -> float:
    """``E_x E_pi[p_1] - tau E_x KL(pi || pi_ref)``, what the constrained problem maximises."""
    primary = expected_rates(pi, rates, context_weights)[0]
    return float(primary - tau * kl_divergence(pi, pi_ref, context_weights))


def dual(
    pi_ref: np.ndarray,
    rates: np.ndarray,
    lam: np.ndarray,
    thresholds: np.ndarray,
    tau: float,
    mask: np.ndarray | None = None,
    context_weights: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """The convex dual and its gradient at ``lam``:

        g(lam) = tau E_x log E_{pi_ref} exp((p_1 + lam . p_{2:}) / tau) - lam . b,
        grad g = E_x E_{pi_lam}[p_{2:}] - b.

    ``min_{lam >= 0} g`` equals the constrained optimum (strong duality holds whenever some policy
    with ``pi_ref``'s support satisfies every constraint strictly).
    """
    value, pi = _dual_and_policy(pi_ref, rates, lam, thresholds, tau, mask, context_weights)
    gradient = expected_rates(pi, rates, context_weights)[1:] - np.asarray(thresholds, dtype=np.float64)
    return value, gradient


def _dual_and_policy(
    pi_ref: np.ndarray,
    rates: np.ndarray,
    lam: np.ndarray,
    thresholds: np.ndarray,
    tau: float,
    mask: np.ndarray | None,
    context_weights: np.ndarray | None,
) -> tuple[float, np.ndarray]:
    """``g(lam)`` and ``pi_lam`` from one log-partition computation."""
    valid = support(pi_ref, mask)
    rho = context_distribution(context_weights, valid.shape[0])
    pi_ref = np.asarray(pi_ref, dtype=np.float64)
    logits, log_z = _log_partition(pi_ref, scalarised(rates, lam), tau, valid)
    value = float(tau * rho @ log_z - np.asarray(lam) @ np.asarray(thresholds, dtype=np.float64))
    return value, np.exp(logits - log_z[:, None])


# ------------------------------------------------------------------------------------------------
# Pessimistic lower bound


def kl_lower_bound(values: np.ndarray, weights: np.ndarray, epsilon: float) -> float:
    """Lower bound of ``E_d[v]`` over reweightings of the data: ``min E_q[v]`` over distributions
    ``q`` with ``KL(q || d) <= epsilon``, where ``d ∝ weights``.

    Computed through its one-dimensional dual (Donsker-Varadhan)

        max_{eta > 0}  -eta log E_d exp(-v / eta) - eta epsilon,

    a concave problem in ``eta``, solved over ``log eta`` (bounded Brent search). Equals ``E_d[v]``
    at ``epsilon = 0``, decreases with ``epsilon`` and never falls below ``min v`` on the support
    (the limit ``eta -> 0``).

    Args:
        values: (N,) values ``v`` (e.g. per-action win rates, or per-tuple outcomes).
        weights: (N,) non-negative weights of the data distribution (e.g. ``rho(x) pi(y|x)``, or
            importance ratios of the tuples); normalised here.
        epsilon: KL radius >= 0.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if values.shape != weights.shape or not values.size:
        raise ValueError(
            f"values and weights must be non-empty and of one length, got {values.shape} and {weights.shape}"
        )
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    used = weights > 0
    v, d = values[used], weights[used] / weights[used].sum()
    mean, low = float(d @ v), float(v.min())
    spread = float(v.max()) - low
    if epsilon == 0 or spread == 0:
        return mean

    def negative_dual(log_eta: float) -> float:
        eta = np.exp(log_eta)
        # -eta log E_d exp(-v / eta) = min v - eta log E_d exp(-(v - min v) / eta): no overflow,
        # and the sum keeps the minimum's term exp(0), so its log is finite
        log_mean_exp = np.log(d @ np.exp(-(v - low) / eta))
        return -(low - eta * log_mean_exp - eta * epsilon)

    bounds = (np.log(spread * 1e-8), np.log(spread * 1e8))
    best = minimize_scalar(negative_dual, bounds=bounds, method="bounded", options={"xatol": 1e-10})
    return float(min(mean, max(low, -best.fun)))


def policy_lower_bounds(
    pi: np.ndarray, rates: np.ndarray, epsilon: float, context_weights: np.ndarray | None = None
) -> np.ndarray:
    """(m,) pessimistic ``E_x E_pi[p_k]``: :func:`kl_lower_bound` of ``p_k(x, y)`` under the joint
    distribution ``rho(x) pi(y|x)``, for every objective; the plain expectation at ``epsilon = 0``."""
    if epsilon == 0:
        return expected_rates(pi, rates, context_weights)
    rho = context_distribution(context_weights, pi.shape[0])
    joint = rho[:, None] * pi
    used = joint > 0
    values = rates[used]  # (n_used, m)
    return np.array([kl_lower_bound(values[:, k], joint[used], epsilon) for k in range(values.shape[1])])


# ------------------------------------------------------------------------------------------------
# The outer loop


@dataclass(frozen=True)
class MopoStep:
    """One step of :func:`mopo`, for the trace and the tracker.

    ``multipliers``, ``thresholds``, ``lower_bounds`` and ``active`` hold objectives 2..m (the
    constrained ones); ``values`` holds ``E_x E_pi[p_k]`` of every objective 1..m, for the policy
    of this step's multipliers (before the step moves them). A constraint is active when its
    multiplier exceeds the tolerance (complementary slackness: then ``lower bound = b``).
    """

    step: int
    multipliers: list[float]
    thresholds: list[float]
    values: list[float]
    lower_bounds: list[float]
    active: list[bool]
    dual: float
    reference_updated: bool

    def metrics(self, names: list[str], prefix: str = "") -> dict[str, float]:
        """Flat scalar metrics ``{prefix}lambda_{name}`` etc., objective names in order 1..m."""
        out = {f"{prefix}value_{n}": v for n, v in zip(names, self.values)}
        constrained = zip(names[1:], self.multipliers, self.thresholds, self.lower_bounds, self.active)
        for n, lam, b, lb, act in constrained:
            out |= {
                f"{prefix}lambda_{n}": lam,
                f"{prefix}threshold_{n}": b,
                f"{prefix}lower_bound_{n}": lb,
                f"{prefix}active_{n}": float(act),
            }
        out[f"{prefix}dual"] = self.dual
        return out

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MopoResult:
    """What :func:`mopo` found.

    Attributes:
        policy: (C, A) the final ``pi_lam`` against the final reference.
        multipliers: (m - 1,) final ``lam``.
        thresholds: (m - 1,) final ``b`` (moved by adaptive thresholds).
        reference: (C, A) final reference (moved by the lagged reference).
        trace: recorded steps (every ``trace_every``-th, the first and the last, every update).
        converged: True when the multipliers stopped moving (fixed reference and thresholds).
        steps: steps taken.
    """

    policy: np.ndarray
    multipliers: np.ndarray
    thresholds: np.ndarray
    reference: np.ndarray
    trace: list[MopoStep]
    converged: bool
    steps: int


def mopo(
    pi_ref: np.ndarray,
    rates: np.ndarray,
    thresholds: np.ndarray,
    settings: MopoSettings,
    mask: np.ndarray | None = None,
    context_weights: np.ndarray | None = None,
) -> MopoResult:
    """Tabular MOPO: projected gradient on the dual, with the pessimistic constraint estimate, the
    lagged reference and adaptive thresholds of ``settings`` (``moft.config.MopoSettings``).

    Each step, with ``pi = pi_lam`` against the current reference:

        lam <- max(0, lam - lr tau (LB_eps(E_pi[p_{2:}]) - b)),

    which at ``epsilon = 0`` is a projected gradient step on ``g`` (step ``lr tau``: ``g``'s
    curvature is ``Cov_pi(p_{2:}) / tau``). Every ``lag`` steps the reference becomes the current
    policy and, with adaptive thresholds, ``b <- rho E_pi[p_{2:}]`` for that policy. With a fixed
    reference and thresholds the loop stops once no multiplier moves more than ``tolerance``.
    """
    rates = np.asarray(rates, dtype=np.float64)
    reference = np.asarray(pi_ref, dtype=np.float64)
    if rates.ndim != 3 or rates.shape[:2] != reference.shape or rates.shape[-1] < 2:
        raise ValueError(
            f"rates must be a (contexts, actions, m >= 2) table matching pi_ref {reference.shape}, "
            f"got {rates.shape}"
        )
    b = np.asarray(thresholds, dtype=np.float64).copy()
    if b.shape != (rates.shape[-1] - 1,):
        raise ValueError(f"thresholds must hold m - 1 = {rates.shape[-1] - 1} values, got {b.shape}")
    support(reference, mask)  # fail early on an empty context
    tau, lag = settings.tau, settings.lag
    lam = np.zeros_like(b)
    trace: list[MopoStep] = []
    converged, step = False, 0
    for step in range(1, settings.steps + 1):
        value, pi = _dual_and_policy(reference, rates, lam, b, tau, mask, context_weights)
        values = expected_rates(pi, rates, context_weights)
        bounds = policy_lower_bounds(pi, rates[..., 1:], settings.epsilon, context_weights)
        new_lam = np.maximum(0.0, lam - settings.lr * tau * (bounds - b))
        moved = float(np.abs(new_lam - lam).max())
        update = lag is not None and step % lag == 0
        converged = lag is None and moved <= settings.tolerance
        last = converged or step == settings.steps
        if update or last or step == 1 or step % settings.trace_every == 0:
            trace.append(
                MopoStep(
                    step=step,
                    multipliers=lam.tolist(),
                    thresholds=b.tolist(),
                    values=values.tolist(),
                    lower_bounds=bounds.tolist(),
                    active=(lam > settings.tolerance).tolist(),
                    dual=value,
                    reference_updated=update,
                )
            )
        lam = new_lam
        if update:
            reference = pi_lambda(reference, rates, lam, tau, mask)
            if settings.adaptive_thresholds:
                b = settings.rho * expected_rates(reference, rates, context_weights)[1:]
        if converged:
            break
    policy = pi_lambda(reference, rates, lam, tau, mask)
    return MopoResult(policy, lam, b, reference, trace, converged, step)
