"""MOPO on groups (issue 6 parts 3-4): label win rates, the threshold sweep that makes the front,
and the LTR method end to end on real data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import TINY

from moft.config import MopoSettings, load_config
from moft.io import read_json
from moft.mopo.tabular import PreferenceTuples, expected_rates, pi_lambda, win_rates
from moft.mopo.targets import behaviour_policy, graded_win_rates, grid_thresholds, mopo_targets, threshold_range

SETTINGS = MopoSettings(tau=0.2)


def random_groups(seed: int, c: int = 6, a: int = 5, m: int = 2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(c, a, m)).astype(float)
    mask = np.ones((c, a), dtype=bool)
    mask[0, 3:] = False  # groups of different sizes
    mask[1, 4:] = False
    return labels, mask


def test_graded_win_rates_are_the_tuple_win_rates_of_all_pairs():
    labels, mask = random_groups(0)
    contexts, actions, others, outcomes = [], [], [], []
    for x in range(len(labels)):
        members = np.flatnonzero(mask[x])
        for y, z in itertools.combinations(members, 2):
            contexts.append(x), actions.append(y), others.append(z)
            d = labels[x, y] - labels[x, z]
            outcomes.append(np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5)))
    tuples = PreferenceTuples(np.array(contexts), np.array(actions), np.array(others), np.array(outcomes))
    expected = win_rates(tuples, *mask.shape).rates
    got = graded_win_rates(labels, mask)
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-12)


def test_groups_without_signal_and_lone_members_get_the_unobserved_rate():
    labels = np.array([[[2.0, 1.0], [0.0, 1.0]], [[5.0, 0.0], [0.0, 0.0]]])
    mask = np.array([[True, True], [True, False]])
    valid = np.array([[True, False], [True, True]])  # group 0 has no preference on objective 2
    rates = graded_win_rates(labels, mask, valid, unobserved=0.5)
    np.testing.assert_array_equal(rates[0, :, 0], [1.0, 0.0])
    np.testing.assert_array_equal(rates[0, :, 1], [0.5, 0.5])
    np.testing.assert_array_equal(rates[1, 0], [0.5, 0.5])  # no group mate
    np.testing.assert_array_equal(behaviour_policy(mask), [[0.5, 0.5], [1.0, 0.0]])


def test_threshold_sweep_runs_from_the_primary_optimum_to_the_secondary_one():
    labels, mask = random_groups(1, c=8, a=6)
    grid = np.array([[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]])
    solved = mopo_targets(labels, mask, None, grid, SETTINGS, ["a", "b"])
    rates = graded_win_rates(labels, mask)
    pi_ref = behaviour_policy(mask)
    lo, hi = threshold_range(pi_ref, rates, SETTINGS.tau, mask)
    np.testing.assert_allclose(grid_thresholds(grid, lo, hi)[:, 0], np.linspace(lo[0], hi[0], 5))
    assert hi[0] > lo[0]
    # w_2 = 0: the constraint is slack, lambda = 0 and the policy is the single-objective one
    assert solved.results[0].multipliers[0] == 0.0
    np.testing.assert_allclose(solved.targets[0], pi_lambda(pi_ref, rates, np.zeros(1), SETTINGS.tau, mask))
    values = np.array([expected_rates(t, rates) for t in solved.targets])  # (P, m)
    # every constraint holds (to the solver's tolerance) and binds once w_2 > 0
    assert np.all(values[:, 1] >= solved.thresholds[:, 0] - 1e-6)
    assert np.all(np.array([r.multipliers[0] for r in solved.results[1:]]) > 0)
    # along the sweep objective 2 rises and the primary objective pays for it
    assert np.all(np.diff(values[:, 1]) > 0) and np.all(np.diff(values[:, 0]) < 0)
    facts = solved.summary()
    assert len(facts) == 5 and facts[-1]["active"] == [True] and facts[0]["active"] == [False]


def test_mopo_runs_in_the_ltr_pipeline_with_front_hv_accounting_and_multipliers(workdir):
    from moft import stages

    cfg = load_config("ltr-letor", TINY + ["finetune.methods=[mopo,dpo_ls]", "evaluate.beta_scales=[1.0]"])
    for name in ("prepare", "validate", "train_base"):
        getattr(stages, name)(cfg)
    for method in ("mopo", "dpo_ls"):
        stages.finetune(cfg, method)
    summary = read_json(stages.evaluate(cfg))
    entry = summary["methods"]["mopo"]
    assert len(entry["points"]) == len(summary["grid"]) and entry["hypervolume"] > 0
    assert entry["n_jobs"] == len(summary["grid"]) and entry["train_seconds"] > 0
    assert entry["trainable_params"] == summary["methods"]["dpo_ls"]["trainable_params"]
    facts = entry["mopo"]
    slack = next(i for i, w in enumerate(summary["grid"]) if w[1] == 0)  # no constraint at w_2 = 0
    assert len(facts) == len(summary["grid"]) and facts[slack]["multipliers"] == [0.0]
    assert all(f["values"][1] >= f["thresholds"][0] - 1e-4 for f in facts)  # b = hi converges slowly
    assert "mopo" in summary["paired"] or any("mopo" in k for k in summary["paired"])
