"""The pipeline stages of the synthetic track; :mod:`moft.stages` dispatches here when
``cfg.track == "synthetic"``, so the CLI, the Prefect tasks and the tests call one function per
stage for every track.

- prepare: the preference tuples of every canonical case (``synthetic.cases``) -> parquet, plus
  each case's win rates in ``prepare.json``.
- validate: the Great Expectations tuple suite.
- train_base: the reference policy of every case (uniform or the behaviour's action shares).
- finetune: tabular MOPO per case x tau (``synthetic.taus``), with its trace.
- evaluate: the exact constrained optimum per case x tau (SLSQP on the primal), the errors
  (``summary.json``), MOPO's Figure 4 and the tau-sweep fronts, and ``pareto.json`` for the
  report stage. Fails when MOPO misses the optimum by more than ``synthetic.tolerance``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moft.config import MoftConfig
from moft.io import atomic_dir, atomic_write_json, read_json
from moft.metrics import pareto
from moft.mopo.synthetic import (
    OUTCOME_PREFIX,
    exact_optimum,
    generate_tuples,
    reference_policy,
    thresholds_between,
    tuples_frame,
    tuples_from_frame,
)
from moft.mopo.tabular import (
    PreferenceTuples,
    WinRates,
    expected_rates,
    mopo,
    primal_objective,
    win_rates,
)
from moft.plots import plot_action_probabilities, plot_policy_fronts
from moft.tracker import NullTracker, Tracker

METHOD = "mopo"
N_CONTEXTS = 1  # the canonical bandits are context-free


class MopoMismatchError(RuntimeError):
    """MOPO's policy is further from the exact optimum than ``synthetic.tolerance``."""


def _layout(cfg: MoftConfig):
    from moft.stages import Layout

    return Layout.of(cfg)


def _require(path: Path, stage: str) -> Path:
    from moft.stages import _require as require

    return require(path, stage)


@dataclass(frozen=True)
class Case:
    """One canonical bandit: its tuples (outcomes in objective order) and win rates."""

    name: str
    tuples: PreferenceTuples
    rates: WinRates


def load_cases(cfg: MoftConfig) -> dict[str, Case]:
    """The prepared tuples of every configured case, with their win rates."""
    table = pd.read_parquet(_require(_layout(cfg).prepared / "tuples.parquet", "prepare"))
    return cases_from_table(table, cfg)


def cases_from_table(table: pd.DataFrame, cfg: MoftConfig) -> dict[str, Case]:
    """Split the tuples table by case; outcomes in objective order (each objective's `label`)."""
    labels = [str(o.label) for o in cfg.objectives]
    cases = {}
    for name in cfg.synthetic.cases:
        tuples = tuples_from_frame(table[table["case"] == name], labels)
        cases[name] = Case(name, tuples, _win_rates(cfg, tuples))
    return cases


def _win_rates(cfg: MoftConfig, tuples: PreferenceTuples) -> WinRates:
    return win_rates(tuples, N_CONTEXTS, cfg.synthetic.n_actions, cfg.finetune.mopo.unobserved_win_rate)


def _data_hash(cfg: MoftConfig) -> str:
    return read_json(_require(_layout(cfg).prepared / "prepare.json", "prepare"))["data_hash"]


# ------------------------------------------------------------------------------------------------
# prepare


def prepare(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Generate the tuples of every case; write them with each case's win rates."""
    s = cfg.synthetic
    table = pd.concat(
        [tuples_frame(c, generate_tuples(c, s.n_actions, s.samples_per_pair, s.seed)) for c in s.cases],
        ignore_index=True,
    )
    data_hash = hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:16]
    summary = {
        "data_hash": data_hash,
        "objectives": {o.name: str(o.label) for o in cfg.objectives},
        "n_actions": s.n_actions,
        "cases": {
            name: {
                "tuples": len(case.tuples.contexts),
                "compared_actions": np.flatnonzero(case.rates.observed[0]).tolist(),
                "win_rates": case.rates.rates[0].T.round(6).tolist(),  # (m, A)
            }
            for name, case in cases_from_table(table, cfg).items()
        },
    }
    layout = _layout(cfg)
    with atomic_dir(layout.prepared) as out:
        table.to_parquet(out / "tuples.parquet", index=False)
        atomic_write_json(out / "prepare.json", summary)
    tracker.log_params({f"data.{name}.tuples": c["tuples"] for name, c in summary["cases"].items()})
    tracker.set_tags({"data_hash": data_hash})
    tracker.log_artifact(layout.prepared / "prepare.json", "prepared")
    return layout.prepared


# ------------------------------------------------------------------------------------------------
# validate


def validate(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Great Expectations suite over the tuples; raises with a readable report on failure."""
    from moft.validation.tuples import raise_for_failures, validate_tuples, write_report  # GX: ~4 s import

    layout = _layout(cfg)
    table = pd.read_parquet(_require(layout.prepared / "tuples.parquet", "prepare"))
    result = validate_tuples(
        table,
        {o.name: OUTCOME_PREFIX + str(o.label) for o in cfg.objectives},
        list(cfg.synthetic.cases),
        N_CONTEXTS,
        cfg.synthetic.n_actions,
    )
    with atomic_dir(layout.validation) as out:
        write_report(result, out)
        atomic_write_json(out / "status.json", {"success": result.success, "data_hash": _data_hash(cfg)})
    tracker.log_metrics({"validation_success": float(result.success)})
    tracker.log_artifacts(layout.validation, "validation")
    raise_for_failures(result, layout.validation / "validation.json")
    return layout.validation


def _require_valid(cfg: MoftConfig) -> str:
    """The data hash of tuples that passed validation; raises when they did not."""
    from moft.stages import StageInputError

    layout = _layout(cfg)
    status = read_json(_require(layout.validation / "status.json", "validate"))
    data_hash = _data_hash(cfg)
    if not status["success"] or status["data_hash"] != data_hash:
        raise StageInputError(
            f"the prepared tuples have not passed validation (see {layout.validation / 'validation.json'}): "
            "run `validate` and fix the data"
        )
    return data_hash


# ------------------------------------------------------------------------------------------------
# train_base


def train_base(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """The reference policy pi_ref of every case (``synthetic.reference``)."""
    data_hash = _require_valid(cfg)
    policies = {
        name: reference_policy(cfg.synthetic.reference, case.rates) for name, case in load_cases(cfg).items()
    }
    layout = _layout(cfg)
    with atomic_dir(layout.base) as out:
        atomic_write_json(
            out / "meta.json",
            {
                "reference": cfg.synthetic.reference,
                "data_hash": data_hash,
                "policies": {name: pi.tolist() for name, pi in policies.items()},  # (C, A) each
            },
        )
    tracker.log_params({"reference": cfg.synthetic.reference})
    tracker.log_artifacts(layout.base, "base")
    return layout.base


def load_references(cfg: MoftConfig, data_hash: str) -> dict[str, np.ndarray]:
    """The reference policy of every case, checked to come from the current tuples."""
    from moft.stages import StageInputError

    path = _require(_layout(cfg).base / "meta.json", "train_base")
    meta = read_json(path)
    missing = [c for c in cfg.synthetic.cases if c not in meta["policies"]]
    if meta["data_hash"] != data_hash or missing:
        raise StageInputError(f"{path} was built from other tuples or cases: run `train_base` again")
    return {name: np.asarray(meta["policies"][name], dtype=np.float64) for name in cfg.synthetic.cases}


# ------------------------------------------------------------------------------------------------
# finetune


def finetune(cfg: MoftConfig, method: str, tracker: Tracker = NullTracker(), jobs: int = 1) -> Path:
    """Tabular MOPO for every case and every tau of ``synthetic.taus``; policies and trace."""
    if method != METHOD:
        raise ValueError(
            f"finetune method {method!r}: the synthetic track runs `{METHOD}` only (finetune.methods)"
        )
    data_hash = _require_valid(cfg)
    references = load_references(cfg, data_hash)
    names = cfg.objective_names
    cases_out: dict[str, dict] = {}
    traces: dict[str, dict[str, list[dict]]] = {}
    for name, case in load_cases(cfg).items():
        pi_ref = references[name]
        b = thresholds_between(pi_ref, case.rates.rates, cfg.synthetic.threshold_fractions)
        runs, traces[name] = [], {}
        for tau in cfg.synthetic.taus:
            began = time.perf_counter()
            result = mopo(pi_ref, case.rates.rates, b, cfg.finetune.mopo.model_copy(update={"tau": tau}))
            seconds = time.perf_counter() - began
            if not result.converged and cfg.finetune.mopo.lag is None:
                print(
                    f"warning: {name}, tau={tau:g}: the multipliers did not converge in "
                    f"{result.steps} steps (raise finetune.mopo.steps or lr)"
                )
            for step in result.trace:
                tracker.log_metrics(step.metrics(names, f"{name}.tau_{tau:g}."), step=step.step)
            traces[name][f"{tau:g}"] = [step.to_json() for step in result.trace]
            runs.append(
                {
                    "tau": tau,
                    "policy": result.policy.tolist(),
                    "multipliers": result.multipliers.tolist(),
                    "final_thresholds": result.thresholds.tolist(),
                    "final_reference": result.reference.tolist(),
                    "converged": result.converged,
                    "steps": result.steps,
                    "seconds": seconds,
                }
            )
        cases_out[name] = {"thresholds": b.tolist(), "runs": runs}
    seconds = sum(run["seconds"] for case_out in cases_out.values() for run in case_out["runs"])
    meta = {
        "method": METHOD,
        "data_hash": data_hash,
        "settings": cfg.finetune.mopo.model_dump(mode="json"),
        "taus": list(cfg.synthetic.taus),
        "cases": cases_out,
        "train_seconds": seconds,
        "n_jobs": jobs,
        "trainable_params": (len(names) - 1) * len(cfg.synthetic.taus),  # the multipliers per tau
    }
    layout = _layout(cfg)
    with atomic_dir(layout.finetuned(METHOD)) as out:
        atomic_write_json(out / "trace.json", traces)
        atomic_write_json(out / "meta.json", meta)
    tracker.log_metrics({"train_seconds": seconds})
    tracker.log_artifacts(layout.finetuned(METHOD), METHOD)
    return layout.finetuned(METHOD)


# ------------------------------------------------------------------------------------------------
# evaluate


@dataclass(frozen=True)
class CaseComparison:
    """MOPO's policies and the exact optima of one case over the tau sweep."""

    case: Case
    reference: np.ndarray  # (C, A) pi_ref
    thresholds: np.ndarray  # (m - 1,) b
    taus: np.ndarray  # (T,)
    mopo: np.ndarray  # (T, C, A)
    exact: np.ndarray  # (T, C, A)
    runs: list[dict]  # finetune's record of each tau
    exact_seconds: float

    @property
    def errors(self) -> np.ndarray:
        """(T,) largest absolute difference of an action probability, per tau."""
        return np.abs(self.mopo - self.exact).reshape(len(self.taus), -1).max(axis=1)

    def points(self, policies: np.ndarray) -> np.ndarray:
        """(T, m) ``E_pi[p_k]`` of each policy."""
        return np.stack([expected_rates(pi, self.case.rates.rates) for pi in policies])


def compare_case(case: Case, reference: np.ndarray, trained: dict, taus: list[float]) -> CaseComparison:
    """Solve the exact optimum at every tau MOPO was run at (same reference and thresholds)."""
    b = np.asarray(trained["thresholds"], dtype=np.float64)
    start = time.perf_counter()
    exact = np.stack([exact_optimum(reference, case.rates.rates, b, tau) for tau in taus])
    seconds = time.perf_counter() - start
    mopo_policies = np.stack([np.asarray(run["policy"], dtype=np.float64) for run in trained["runs"]])
    return CaseComparison(
        case, reference, b, np.asarray(taus), mopo_policies, exact, trained["runs"], seconds
    )


def evaluate(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Exact optima, errors (summary.json), figures and pareto.json; raises MopoMismatchError when
    MOPO solves the exact problem (no pessimism, fixed reference) and misses it."""
    from moft.stages import StageInputError

    layout = _layout(cfg)
    data_hash = _data_hash(cfg)
    references = load_references(cfg, data_hash)
    path = _require(layout.finetuned(METHOD) / "meta.json", f"finetune --method {METHOD}")
    trained = read_json(path)
    cases = load_cases(cfg)
    same = trained["data_hash"] == data_hash and trained["taus"] == list(cfg.synthetic.taus)
    if not same or set(trained["cases"]) != set(cases):
        raise StageInputError(
            f"{path} was trained on other tuples, cases or taus: run `finetune --method {METHOD}` again"
        )
    comparisons = {
        name: compare_case(case, references[name], trained["cases"][name], cfg.synthetic.taus)
        for name, case in cases.items()
    }
    summary = error_summary(cfg, comparisons)
    front = pareto_summary(cfg, comparisons, data_hash)
    metrics = {f"max_abs_error_{name}": c["max_abs_error"] for name, c in summary["cases"].items()}
    metrics |= {f"{m.replace('/', '_')}_hypervolume": e["hypervolume"] for m, e in front["methods"].items()}
    title = f"{cfg.profile}: MOPO vs the exact optimum ({cfg.synthetic.n_actions} actions)"
    with atomic_dir(layout.reports) as out:
        atomic_write_json(out / "summary.json", summary)
        atomic_write_json(out / "pareto.json", front)
        atomic_write_json(out / "metrics.json", metrics)
        plot_action_probabilities(
            out / "action_probabilities.png",
            np.asarray(cfg.synthetic.taus),
            {name: {"mopo": c.mopo[:, 0], "exact": c.exact[:, 0]} for name, c in comparisons.items()},
            title,
        )
        plot_policy_fronts(
            out / "pareto.png",
            cfg.objective_names,
            {
                name: {
                    "mopo": c.points(c.mopo),
                    "exact": c.points(c.exact),
                    "reference": expected_rates(c.reference, c.case.rates.rates),
                    "threshold": float(c.thresholds[0]),
                }
                for name, c in comparisons.items()
            },
            f"{title}: expected win rates over tau in {list(cfg.synthetic.taus)}",
        )
    tracker.log_metrics(metrics)
    tracker.log_artifacts(layout.reports, "pareto")
    misses = [
        f"{name} (max abs error {c['max_abs_error']:.2e})"
        for name, c in summary["cases"].items()
        if not c["within_tolerance"]
    ]
    if summary["comparable"] and misses:
        raise MopoMismatchError(
            f"MOPO misses the exact optimum by more than synthetic.tolerance={cfg.synthetic.tolerance:g} in "
            f"{', '.join(misses)}; see {layout.reports / 'summary.json'}"
        )
    return layout.pareto_json


def error_summary(cfg: MoftConfig, comparisons: dict[str, CaseComparison]) -> dict:
    """summary.json: per case the largest absolute error of MOPO's action probabilities against the
    exact optimum over the tau sweep, and per tau both policies, values and multipliers."""
    settings = cfg.finetune.mopo
    comparable = settings.epsilon == 0 and settings.lag is None
    cases = {}
    for name, c in comparisons.items():
        values_mopo, values_exact = c.points(c.mopo), c.points(c.exact)
        rates = c.case.rates.rates
        cases[name] = {
            "max_abs_error": float(c.errors.max()),
            "within_tolerance": bool(c.errors.max() <= cfg.synthetic.tolerance),
            "thresholds": c.thresholds.tolist(),
            "reference": c.reference[0].tolist(),
            "taus": [
                {
                    "tau": float(tau),
                    "abs_error": float(err),
                    "mopo": c.mopo[t, 0].tolist(),
                    "exact": c.exact[t, 0].tolist(),
                    "multipliers": run["multipliers"],
                    "active": [lam > settings.tolerance for lam in run["multipliers"]],
                    "converged": run["converged"],
                    "steps": run["steps"],
                    "values_mopo": values_mopo[t].tolist(),
                    "values_exact": values_exact[t].tolist(),
                    "objective_mopo": primal_objective(c.mopo[t], c.reference, rates, float(tau)),
                    "objective_exact": primal_objective(c.exact[t], c.reference, rates, float(tau)),
                }
                for t, (tau, err, run) in enumerate(zip(c.taus, c.errors, c.runs))
            ],
        }
    return {
        "profile": cfg.profile,
        "objectives": cfg.objective_names,
        "tolerance": cfg.synthetic.tolerance,
        "comparable": comparable,
        "passed": all(c["within_tolerance"] for c in cases.values()),
        "note": "abs_error = max_y |pi_mopo(y) - pi_exact(y)|. The exact optimum solves the problem "
        "with a fixed reference and plain constraints; with finetune.mopo.epsilon > 0 or a lagged "
        "reference (comparable = false) the errors measure how far those settings move the policy.",
        "cases": cases,
    }


def pareto_summary(
    cfg: MoftConfig, comparisons: dict[str, CaseComparison], data_hash: str
) -> dict:
    """pareto.json for the report stage (SPEC 6's contract): per case, MOPO's tau sweep and the exact
    optima's as fronts in the plane of expected win rates; the base is the reference policy, averaged
    over the cases. Hypervolume intervals come from bootstrapping each case's tuples (win rates
    re-estimated, policies fixed); steerability is the Spearman correlation of 1/tau with each
    objective's expected win rate over the sweep."""
    m = len(cfg.objectives)
    ref = np.asarray(cfg.evaluate.reference_point or [0.0] * m, dtype=np.float64)
    taus = np.asarray(cfg.synthetic.taus, dtype=np.float64)
    n_taus = len(taus)
    base_points, base_samples, methods = [], [], {}
    for name, c in comparisons.items():
        idx = pareto.bootstrap_indices(
            len(c.case.tuples.contexts), cfg.evaluate.bootstrap, cfg.evaluate.bootstrap_seed
        )
        resampled = np.stack([_win_rates(cfg, c.case.tuples.take(rows)).rates for rows in idx])  # (B,C,A,m)
        base_points.append(expected_rates(c.reference, c.case.rates.rates))
        base_samples.append(np.einsum("ca,bcam->bm", c.reference, resampled) / N_CONTEXTS)
        base_main = float(base_points[-1][0])
        for label, policies, seconds, params in (
            ("mopo", c.mopo, sum(run["seconds"] for run in c.runs), (m - 1) * n_taus),
            ("exact", c.exact, c.exact_seconds, int(np.prod(c.exact.shape))),
        ):
            samples = np.einsum("tca,bcam->btm", policies, resampled) / N_CONTEXTS
            methods[f"{label}/{name}"] = _front_entry(taus, c.points(policies), samples, ref, base_main) | {
                "train_seconds": seconds, "n_jobs": 1, "trainable_params": params,
            }  # fmt: skip
    base = np.mean(base_points, axis=0)
    base_hv = np.array([pareto.hypervolume(p[None], ref, "max") for p in np.mean(base_samples, axis=0)])
    return {
        "profile": cfg.profile,
        "track": cfg.track,
        "objectives": cfg.objective_names,
        "metric": "win rate",
        "main_metric": f"E[p_{cfg.objective_names[0]}]",
        "direction": "max",
        "reference_point": ref.tolist(),
        "grid": [[float(t)] for t in taus],
        "data_hash": data_hash,
        "n_test_groups": len(comparisons),
        "note": "Synthetic track: one front per case and solver over the tau sweep (a point's w is "
        "[tau]); axes are expected win rates E_pi[p_k]; the base is the reference policy averaged "
        "over the cases; n_test_groups counts the cases; summary.json holds MOPO's errors.",
        "base": {
            "main": float(base[0]),
            "objectives": base.tolist(),
            "hypervolume": pareto.hypervolume(base[None], ref, "max"),
            "hypervolume_ci95": list(pareto.confidence_interval(base_hv)),
        },
        "methods": methods,
        "paired": {},
    }


def _front_entry(
    taus: np.ndarray, points: np.ndarray, samples: np.ndarray, ref: np.ndarray, base_main: float
) -> dict:
    """One front's pareto.json entry from its (T, m) points and (B, T, m) bootstrap points."""
    hv_samples = np.array([pareto.hypervolume(s, ref, "max") for s in samples])
    strength = np.tile(1.0 / taus[:, None], (1, points.shape[1]))  # (T, m): how far pi may move
    main = points[:, 0]
    return {
        "hypervolume": pareto.hypervolume(points, ref, "max"),
        "hypervolume_ci95": list(pareto.confidence_interval(hv_samples)),
        # values within 1e-6 are ties: solver noise on a flat sweep must not read as steering
        "steerability": pareto.steerability(strength, points.round(6), "max"),
        "main_mean": float(main.mean()),
        "main_std": float(main.std()),
        "main_retention": float(main.mean() / base_main) if base_main > 0 else None,
        "n_non_dominated": int(pareto.non_dominated(points, "max").sum()),
        "points": [
            {"w": [float(t)], "tau": float(t), "objectives": p.tolist(), "main": float(p[0])}
            for t, p in zip(taus, points)
        ],
    }
