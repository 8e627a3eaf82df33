"""Tabular MOPO (SPEC 5.5): the canonical bandits against an exact primal solver, the limits in tau
and in the thresholds, the pessimistic lower bound against a brute-force solver, the dual's
gradient, the never-observed action, bad configuration, and the synthetic track's five stages."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.optimize import minimize

from moft.config import ConfigError, MopoSettings, load_config
from moft.io import read_json
from moft.mopo.synthetic import (
    CASES,
    exact_optimum,
    generate_tuples,
    reference_policy,
    thresholds_between,
)
from moft.mopo.tabular import (
    PreferenceTuples,
    dual,
    expected_rates,
    kl_lower_bound,
    mopo,
    pi_lambda,
    policy_lower_bounds,
    primal_objective,
    win_rates,
)

N_ACTIONS = 4


def bandit(case: str, fraction: float = 0.5, reference: str = "uniform"):
    """(pi_ref, rates, b) of one canonical case with the profile's generator settings."""
    rates = win_rates(generate_tuples(case, N_ACTIONS, 6, seed=0), 1, N_ACTIONS)
    pi_ref = reference_policy(reference, rates)
    return pi_ref, rates.rates, thresholds_between(pi_ref, rates.rates, [fraction])


# ------------------------------------------------------------------------------------------------
# win rates


def test_win_rates_are_symmetrised_shares_of_wins_with_ties_as_halves():
    tuples = PreferenceTuples(
        contexts=np.array([0, 0, 1]),
        actions=np.array([0, 2, 1]),
        others=np.array([1, 0, 0]),
        outcomes=np.array([[1.0, 0.0], [0.5, 1.0], [0.0, 0.5]]),
    )
    rates = win_rates(tuples, n_contexts=2, n_actions=3)
    # context 0: action 0 beat 1 on k=1, lost on k=2; tied with 2 on k=1, lost on k=2
    np.testing.assert_allclose(rates.rates[0, 0], [(1 + 0.5) / 2, 0.0])
    np.testing.assert_allclose(rates.rates[0, 1], [0.0, 1.0])
    np.testing.assert_allclose(rates.rates[0, 2], [0.5, 1.0])
    np.testing.assert_array_equal(rates.counts, [[2, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(rates.rates[1, 2], [0.5, 0.5])  # never compared: the fill value


def test_tuples_reject_self_comparisons_and_outcomes_outside_the_unit_interval():
    with pytest.raises(ValueError, match="compare an action with itself"):
        PreferenceTuples(np.array([0]), np.array([1]), np.array([1]), np.array([[1.0]]))
    with pytest.raises(ValueError, match=r"outcomes must lie in \[0, 1\]"):
        PreferenceTuples(np.array([0]), np.array([0]), np.array([1]), np.array([[2.0]]))


def test_generator_is_deterministic_in_case_and_seed():
    a = generate_tuples("antichain", N_ACTIONS, 6, seed=3)
    b = generate_tuples("antichain", N_ACTIONS, 6, seed=3)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.outcomes, b.outcomes)
    other = generate_tuples("antichain", N_ACTIONS, 6, seed=4)
    assert not np.array_equal(a.actions, other.actions)
    assert len(a.actions) == 6 * N_ACTIONS * (N_ACTIONS - 1) // 2


# ------------------------------------------------------------------------------------------------
# MOPO against the exact optimum


@pytest.mark.parametrize("case", CASES)
def test_every_canonical_case_reaches_the_exact_optimum(case):
    pi_ref, rates, b = bandit(case)
    for tau in (0.05, 0.2, 1.0, 5.0):
        result = mopo(pi_ref, rates, b, MopoSettings(tau=tau))
        exact = exact_optimum(pi_ref, rates, b, tau)
        assert result.converged
        np.testing.assert_allclose(result.policy, exact, atol=1e-6, err_msg=f"{case}, tau={tau}")
        assert expected_rates(result.policy, rates)[1] >= b[0] - 1e-7  # feasible


def test_known_optima_of_the_structures():
    """The paper's readings at small tau: the Condorcet winner, the two undominated actions."""
    small = MopoSettings(tau=0.01)
    pi_ref, rates, b = bandit("total_order")
    np.testing.assert_allclose(mopo(pi_ref, rates, b, small).policy[0], [1, 0, 0, 0], atol=1e-6)
    pi_ref, rates, b = bandit("partial_order")  # b = 0.75: 0 wins primary, 1 secondary: 3/4 and 1/4
    np.testing.assert_allclose(mopo(pi_ref, rates, b, small).policy[0], [0.75, 0.25, 0, 0], atol=1e-6)
    pi_ref, rates, b = bandit("pairwise_incomparable")
    np.testing.assert_allclose(mopo(pi_ref, rates, b, small).policy, pi_ref)


def test_large_tau_returns_the_reference():
    rng = np.random.default_rng(0)
    _, rates, _ = bandit("partial_order")
    pi_ref = rng.dirichlet(np.ones(N_ACTIONS))[None]
    b = thresholds_between(pi_ref, rates, [0.0])  # the reference itself is feasible
    result = mopo(pi_ref, rates, b, MopoSettings(tau=1e5))
    np.testing.assert_allclose(result.policy, pi_ref, atol=1e-4)


def test_slack_constraints_give_zero_multipliers_and_the_single_objective_policy():
    rng = np.random.default_rng(1)
    rates = rng.random((3, 5, 3))
    pi_ref = rng.dirichlet(np.ones(5), size=3)
    tau = 0.3
    result = mopo(pi_ref, rates, np.zeros(2), MopoSettings(tau=tau))
    np.testing.assert_array_equal(result.multipliers, [0.0, 0.0])
    assert not any(any(step.active) for step in result.trace)
    single = pi_ref * np.exp(rates[..., 0] / tau)
    np.testing.assert_allclose(result.policy, single / single.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(exact_optimum(pi_ref, rates, np.zeros(2), tau), result.policy, atol=1e-6)


def test_dual_optimum_equals_primal_optimum():
    pi_ref, rates, b = bandit("antichain")
    tau = 0.2
    result = mopo(pi_ref, rates, b, MopoSettings(tau=tau))
    value, _ = dual(pi_ref, rates, result.multipliers, b, tau)
    exact = exact_optimum(pi_ref, rates, b, tau)
    assert value == pytest.approx(primal_objective(exact, pi_ref, rates, tau), abs=1e-8)
    assert result.multipliers[0] > 0 and result.trace[-1].active == [True]


def test_dual_gradient_matches_finite_differences_with_a_mask():
    rng = np.random.default_rng(2)
    rates = rng.random((3, 5, 3))
    mask = np.ones((3, 5), dtype=bool)
    mask[0, 3:] = mask[2, 4] = False  # groups of 3, 5 and 4 actions
    pi_ref = rng.dirichlet(np.ones(5), size=3)
    lam, b, tau, h = np.array([0.7, 1.3]), np.array([0.4, 0.6]), 0.25, 1e-6
    _, grad = dual(pi_ref, rates, lam, b, tau, mask)

    def g(at: np.ndarray) -> float:
        return dual(pi_ref, rates, at, b, tau, mask)[0]

    numeric = [(g(lam + h * e) - g(lam - h * e)) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    assert (pi_lambda(pi_ref, rates, lam, tau, mask)[~mask] == 0).all()


# ------------------------------------------------------------------------------------------------
# pessimistic lower bound


def brute_force_lower_bound(values: np.ndarray, d: np.ndarray, epsilon: float) -> float:
    """min_q E_q[v] s.t. KL(q || d) <= epsilon, by SLSQP on the primal over the simplex."""
    constraints = [
        {"type": "eq", "fun": lambda q: q.sum() - 1.0},
        {"type": "ineq", "fun": lambda q: epsilon - np.sum(q * np.log(np.maximum(q, 1e-300) / d))},
    ]
    found = minimize(lambda q: q @ values, d, method="SLSQP", bounds=[(0.0, 1.0)] * len(d),
                     constraints=constraints, options={"ftol": 1e-14, "maxiter": 1000})  # fmt: skip
    return float(found.fun)


@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.1, 1.0])
def test_kl_lower_bound_is_the_brute_force_minimum(epsilon):
    rng = np.random.default_rng(3)
    values, weights = rng.random(6), rng.random(6)
    d = weights / weights.sum()
    bound = kl_lower_bound(values, weights, epsilon)
    assert bound == pytest.approx(brute_force_lower_bound(values, d, epsilon), abs=1e-7)
    if epsilon == 0:
        assert bound == pytest.approx(d @ values, abs=1e-15)
    else:
        assert values.min() <= bound < d @ values


def test_pessimistic_constraints_hold_the_lower_bound_and_move_the_policy():
    pi_ref, rates, b = bandit("partial_order")
    plain = mopo(pi_ref, rates, b, MopoSettings(tau=0.1))
    careful = mopo(pi_ref, rates, b, MopoSettings(tau=0.1, epsilon=0.05))
    assert careful.converged
    lower = policy_lower_bounds(careful.policy, rates, 0.05)
    assert lower[1] == pytest.approx(b[0], abs=1e-6)  # the bound is what is constrained
    assert expected_rates(careful.policy, rates)[1] > expected_rates(plain.policy, rates)[1] + 1e-3


# ------------------------------------------------------------------------------------------------
# the never-observed action, the lagged reference, adaptive thresholds


def test_never_observed_action_has_the_fill_rate_and_fades_as_tau_falls():
    tuples = generate_tuples("unobserved", N_ACTIONS, 6, seed=0)
    rates = win_rates(tuples, 1, N_ACTIONS)
    last = N_ACTIONS - 1
    assert rates.counts[0, last] == 0 and not rates.observed[0, last]
    np.testing.assert_array_equal(rates.rates[0, last], [0.5, 0.5])
    np.testing.assert_array_equal(win_rates(tuples, 1, N_ACTIONS, unobserved=0.0).rates[0, last], [0.0, 0.0])
    pi_ref = reference_policy("uniform", rates)
    b = thresholds_between(pi_ref, rates.rates, [0.5])
    probs = [mopo(pi_ref, rates.rates, b, MopoSettings(tau=t)).policy[0, last] for t in (5.0, 0.5, 0.2, 0.05)]
    assert all(a >= b_ - 1e-9 for a, b_ in zip(probs, probs[1:])) and probs[-1] < 1e-3 < probs[0]
    # like action 1 (also a coin flip against the data): neither favoured nor excluded
    policy = mopo(pi_ref, rates.rates, b, MopoSettings(tau=0.5)).policy[0]
    assert policy[last] == pytest.approx(policy[1], rel=1e-9)
    # masked out (or a behaviour reference, which never saw it): probability 0
    masked = mopo(pi_ref, rates.rates, b, MopoSettings(tau=0.5), mask=rates.observed)
    assert masked.policy[0, last] == 0.0
    assert reference_policy("behaviour", rates)[0, last] == 0.0


def test_lagged_reference_and_adaptive_thresholds_update_every_lag_steps():
    pi_ref, rates, b = bandit("partial_order")
    settings = MopoSettings(tau=0.5, lag=100, steps=1000, adaptive_thresholds=True, rho=0.9)
    result = mopo(pi_ref, rates, b, settings)
    assert [s.step for s in result.trace if s.reference_updated] == list(range(100, 1001, 100))
    np.testing.assert_allclose(result.thresholds, 0.9 * expected_rates(result.reference, rates)[1:])
    fixed = mopo(pi_ref, rates, b, MopoSettings(tau=0.5))
    # regularised towards ever better references, the primary objective goes past the fixed-reference optimum
    assert expected_rates(result.policy, rates)[0] > expected_rates(fixed.policy, rates)[0]


# ------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("finetune.mopo.tau=-1", "finetune.mopo.tau"),
        ("finetune.mopo.epsilon=-0.1", "finetune.mopo.epsilon"),
        ("synthetic.cases=[total_order, zigzag]", "synthetic.cases.1"),
        ("synthetic.taus=[0.1, 0]", "synthetic.taus.1"),
        ("synthetic.threshold_fractions=[1.5]", "synthetic.threshold_fractions"),
        ("finetune.mopo.adaptive_thresholds=true", "finetune.mopo"),
    ],
)
def test_bad_mopo_configuration_names_the_field(override, field):
    with pytest.raises(ConfigError, match=f"config field '{field}'"):
        load_config("mopo-synthetic", [override])


@pytest.mark.parametrize(
    ("profile", "override", "message"),
    [
        ("mopo-synthetic", "data.paths=[x.txt]", "data: the synthetic track generates"),
        ("mopo-synthetic", "finetune.methods=[hyperdpo]", "the synthetic track runs `mopo` only"),
        ("mopo-synthetic", "synthetic.threshold_fractions=[0.2, 0.3]", "threshold_fractions needs 1"),
        ("mopo-synthetic", "objectives.1.label=harmless", "whose `label`s are primary and secondary"),
    ],
)
def test_synthetic_track_consistency_is_checked(profile, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(profile, [override])


# ------------------------------------------------------------------------------------------------
# the synthetic track's stages


def test_synthetic_stages_end_to_end(workdir):
    from moft import stages
    from moft.mopo.stages import MopoMismatchError

    cfg = load_config("mopo-synthetic", ["evaluate.bootstrap=20"])
    stages.prepare(cfg)
    stages.validate(cfg)
    stages.train_base(cfg)
    stages.finetune(cfg, "mopo")
    pareto_json = stages.evaluate(cfg)
    report = stages.report(cfg)

    reports = cfg.reports()
    summary = read_json(reports / "summary.json")
    assert summary["comparable"] and summary["passed"]
    assert set(summary["cases"]) == set(CASES)
    for name, case in summary["cases"].items():
        assert case["max_abs_error"] < cfg.synthetic.tolerance, name
        assert [t["tau"] for t in case["taus"]] == cfg.synthetic.taus
    front = read_json(pareto_json)
    methods = front["methods"]
    assert front["track"] == "synthetic"
    assert set(methods) == {f"{solver}/{case}" for solver in ("mopo", "exact") for case in CASES}
    for case in CASES:
        exact_hv = methods[f"exact/{case}"]["hypervolume"]
        assert methods[f"mopo/{case}"]["hypervolume"] == pytest.approx(exact_hv, abs=1e-6)
    assert {"action_probabilities.png", "pareto.png", "metrics.json"} <= {p.name for p in reports.iterdir()}
    assert "mopo/antichain" in report.read_text()
    trace = read_json(cfg.artifacts() / "finetune" / "mopo" / "trace.json")
    assert trace["antichain"]["0.05"][0]["step"] == 1

    strict = load_config("mopo-synthetic", ["evaluate.bootstrap=20", "synthetic.tolerance=1e-15"])
    with pytest.raises(MopoMismatchError, match="synthetic.tolerance=1e-15"):
        stages.evaluate(strict)


def test_validation_names_bad_tuples(workdir):
    import pandas as pd

    from moft.validation.tuples import DataValidationError, raise_for_failures, validate_tuples

    frame = pd.DataFrame(
        {"case": ["antichain", "antichain", "total_order"], "context": [0, 0, 0], "action": [0, 2, 5],
         "other": [1, 2, 1], "o_primary": [1.0, 0.5, 0.3], "o_secondary": [0.0, 1.0, 1.0]}
    )  # fmt: skip
    result = validate_tuples(frame, {"primary": "o_primary", "secondary": "o_secondary"},
                             ["antichain", "total_order", "unobserved"], 1, 4)  # fmt: skip
    with pytest.raises(DataValidationError) as info:
        raise_for_failures(result)
    text = str(info.value)
    assert "case 'total_order': action y (column 'action') has 1 value(s) outside [0, 1, 2, 3]" in text
    assert "case 'antichain': 1 tuple(s) compare an action with itself" in text
    assert "objective 'primary' (column 'o_primary') has 1 value(s) outside [0.0, 0.5, 1.0]" in text
    assert "case 'unobserved' has no tuples" in text
