"""One function per pipeline stage: ``(config, tracker) -> output path``.

The CLI (``moft stage NAME``, called by dvc.yaml), the Prefect tasks and the tests all call these
functions; stage logic lives nowhere else. Every stage reads the previous stage's files and writes
its own outputs atomically under ``<artifacts>/<profile>/`` or ``<reports>/<profile>/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moft.config import PROJECT_ROOT, ModelConfig, MoftConfig
from moft.data.conflict import agreement_warnings, conflict_matrix
from moft.data.groups import GroupedItems
from moft.data.letor import read_letor_files
from moft.data.objectives import objective_labels
from moft.data.splits import split_groups
from moft.evaluation import FrontMetrics, front_metrics, group_metrics
from moft.io import atomic_dir, atomic_write_json, atomic_write_text, read_json
from moft.methods import FitContext, get_method
from moft.metrics import pareto
from moft.models.scorer import BaseScorer
from moft.plots import plot_conflict_heatmap, plot_pareto, plot_temperature_fronts
from moft.tracker import NullTracker, Tracker
from moft.training import resolve_device, set_threads, train_base_scorer

SPLITS = ("train", "val", "test")
STAGES = ("prepare", "validate", "train_base", "finetune", "evaluate", "report")


class StageInputError(RuntimeError):
    """A stage's inputs are missing or come from a failed upstream stage."""


@dataclass(frozen=True)
class Layout:
    """Where each stage of one profile reads and writes."""

    artifacts: Path
    reports: Path

    @classmethod
    def of(cls, cfg: MoftConfig) -> Layout:
        return cls(cfg.artifacts(), cfg.reports())

    @property
    def prepared(self) -> Path:
        return self.artifacts / "prepared"

    @property
    def validation(self) -> Path:
        return self.artifacts / "validation"

    @property
    def base(self) -> Path:
        return self.artifacts / "base"

    def finetuned(self, method: str) -> Path:
        return self.artifacts / "finetune" / method

    @property
    def pareto_json(self) -> Path:
        return self.reports / "pareto.json"


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise StageInputError(f"{path} is missing: run the `{stage}` stage first")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# prepare


def prepare(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Raw svmlight/LETOR files -> objective labels -> group splits -> parquet + conflict matrix."""
    if cfg.track == "llm":
        from moft.llm import stages as llm

        return llm.prepare(cfg, tracker)
    if cfg.track == "synthetic":
        from moft.mopo import stages as synthetic

        return synthetic.prepare(cfg, tracker)
    paths = [resolve_data_path(p) for p in cfg.data.paths]
    raw = read_letor_files(paths, cfg.data.n_features, cfg.data.comment_fields)
    group_ids = raw["group_id"].to_numpy()
    table = pd.DataFrame({"group_id": raw["group_id"], "label_main": raw["label"].astype("float64")})
    for obj in cfg.objectives:
        if obj.source_column not in raw.columns:
            raise ValueError(
                f"objective {obj.name!r}: column {obj.source_column} is not in the data "
                f"({sum(c.startswith('f') for c in raw.columns)} features)"
            )
        values = raw[obj.source_column].to_numpy(np.float64)
        try:
            table[obj.column] = objective_labels(values, group_ids, obj.direction, obj.transform)
        except ValueError as exc:
            raise ValueError(f"objective {obj.name!r} ({obj.source_column}): {exc}") from None
    dropped = {o.source_column for o in cfg.objectives} if cfg.data.drop_objective_features else set()
    feature_cols = [c for c in raw.columns if c.startswith("f") and c[1:].isdigit() and c not in dropped]
    table = pd.concat([table, raw[feature_cols]], axis=1)

    splits = split_groups(sorted(set(group_ids)), cfg.data.split_fractions, cfg.data.split_seed)
    label_cols = {"main": "label_main", **{o.name: o.column for o in cfg.objectives}}
    matrix, counts = conflict_matrix(table, label_cols)
    warnings = agreement_warnings(matrix, among=cfg.objective_names)

    layout = Layout.of(cfg)
    with atomic_dir(layout.prepared) as out:
        summary = {"splits": {}}
        for name in SPLITS:
            part = table[table["group_id"].isin(set(splits[name]))].reset_index(drop=True)
            part.to_parquet(out / f"{name}.parquet", index=False)
            summary["splits"][name] = {"groups": len(splits[name]), "items": len(part)}
        matrix.to_csv(out / "conflict.csv", float_format="%.4f")
        counts.to_csv(out / "conflict_counts.csv")
        plot_conflict_heatmap(
            out / "conflict.png", matrix, f"{cfg.profile}: mean within-group Spearman"
        )
        summary.update(
            feature_cols=feature_cols,
            objective_cols={o.name: o.column for o in cfg.objectives},
            sources=[{"path": str(p), "sha256": file_sha256(p)} for p in paths],
            data_hash=hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()[:16],
            conflict_warnings=warnings,
        )
        atomic_write_json(out / "prepare.json", summary)
    for w in warnings:
        print(f"warning: {w}")
    tracker.log_params({f"data.{k}.groups": v["groups"] for k, v in summary["splits"].items()})
    tracker.set_tags({"data_hash": summary["data_hash"]})
    tracker.log_artifacts(layout.prepared, "prepared", patterns=("*.csv", "*.png", "*.json"))
    return layout.prepared


def resolve_data_path(path: str) -> Path:
    """A data path as given, else relative to the working directory, else to the project."""
    p = Path(path)
    for candidate in ([p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"data file {path} (from data.paths) does not exist")


@dataclass(frozen=True)
class Prepared:
    feature_cols: list[str]
    objective_cols: list[str]
    data_hash: str
    directory: Path

    @classmethod
    def load(cls, cfg: MoftConfig) -> Prepared:
        directory = Layout.of(cfg).prepared
        meta = read_json(_require(directory / "prepare.json", "prepare"))
        return cls(meta["feature_cols"], list(meta["objective_cols"].values()), meta["data_hash"], directory)

    def frame(self, split: str) -> pd.DataFrame:
        return pd.read_parquet(self.directory / f"{split}.parquet")

    def groups(self, split: str) -> GroupedItems:
        return GroupedItems.from_frame(self.frame(split), self.feature_cols, self.objective_cols)


# ------------------------------------------------------------------------------------------------
# validate


def validate(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Great Expectations suite over the prepared splits; raises with a readable report on failure."""
    if cfg.track == "llm":
        from moft.llm import stages as llm

        return llm.validate(cfg, tracker)
    if cfg.track == "synthetic":
        from moft.mopo import stages as synthetic

        return synthetic.validate(cfg, tracker)
    from moft.validation.ltr import raise_for_failures, validate_ltr, write_report  # GX: ~4 s import

    prepared = Prepared.load(cfg)
    result = validate_ltr(
        {name: prepared.frame(name) for name in SPLITS},
        prepared.feature_cols,
        {o.name: o.column for o in cfg.objectives},
        "label_main",
        tuple(cfg.data.label_range),
    )
    layout = Layout.of(cfg)
    with atomic_dir(layout.validation) as out:
        write_report(result, out)
        atomic_write_json(out / "status.json", {"success": result.success, "data_hash": prepared.data_hash})
    tracker.log_metrics({"validation_success": float(result.success)})
    tracker.log_artifacts(layout.validation, "validation")
    raise_for_failures(result, layout.validation / "validation.json")
    return layout.validation


def _require_valid(cfg: MoftConfig, prepared: Prepared) -> None:
    status = read_json(_require(Layout.of(cfg).validation / "status.json", "validate"))
    if not status["success"] or status["data_hash"] != prepared.data_hash:
        raise StageInputError(
            "the prepared data has not passed validation (see "
            f"{Layout.of(cfg).validation / 'validation.json'}): run `validate` and fix the data"
        )


# ------------------------------------------------------------------------------------------------
# train_base


def train_base(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """ListNet base scorer on the main label, early-stopped on validation NDCG@k."""
    if cfg.track == "llm":
        from moft.llm import stages as llm

        return llm.train_base(cfg, tracker)
    if cfg.track == "synthetic":
        from moft.mopo import stages as synthetic

        return synthetic.train_base(cfg, tracker)
    prepared = Prepared.load(cfg)
    _require_valid(cfg, prepared)
    set_threads(cfg.runtime.threads)
    device = resolve_device(cfg.runtime.device)
    train, val, test = (prepared.groups(s) for s in SPLITS)
    result = train_base_scorer(cfg.base, train, val, cfg.evaluate.k, tracker.log_metrics, device)
    model: BaseScorer = result.model.cpu()
    test_metrics = group_metrics(lambda b: model(b.x, b.mask), test, cfg.evaluate.k)
    metrics = {
        "val_main_ndcg": result.best_score,
        "test_main_ndcg": float(np.nanmean(test_metrics.main)),
        **{
            f"test_{name}_ndcg": float(np.nanmean(test_metrics.objectives[:, j]))
            for j, name in enumerate(cfg.objective_names)
        },
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
    }
    layout = Layout.of(cfg)
    with atomic_dir(layout.base) as out:
        save_base(model, out, cfg, prepared.feature_cols)
        atomic_write_json(out / "metrics.json", metrics)
        atomic_write_json(out / "history.json", result.history)
    tracker.log_metrics({k: float(v) for k, v in metrics.items()})
    tracker.log_artifacts(layout.base, "base")
    return layout.base


def save_base(model: BaseScorer, out: Path, cfg: MoftConfig, feature_cols: list[str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    atomic_write_json(
        out / "meta.json",
        {
            "feature_cols": feature_cols,
            "model": cfg.base.model.model_dump(),
            "feature_transform": cfg.base.feature_transform,
        },
    )


def load_base(directory: Path) -> BaseScorer:
    from safetensors.torch import load_file

    meta = read_json(_require(directory / "meta.json", "train_base"))
    model = BaseScorer(len(meta["feature_cols"]), ModelConfig(**meta["model"]), meta["feature_transform"])
    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
    except (RuntimeError, OSError) as exc:
        raise ValueError(f"{directory / 'model.safetensors'}: not a base scorer checkpoint: {exc}") from None
    return model.eval()


# ------------------------------------------------------------------------------------------------
# finetune


def method_requires(cfg: MoftConfig, method: str) -> tuple[str, ...]:
    """The finetune jobs ``method`` needs first, from the track's method registry."""
    if cfg.track == "llm":
        from moft.llm.methods import get_lm_method

        return get_lm_method(method).requires
    return get_method(method).requires


def finetune_waves(cfg: MoftConfig) -> list[list[str]]:
    """Finetune jobs in dependency order: prerequisites (shared single-objective models) first,
    then every configured method; jobs within a wave are independent and may run concurrently."""
    needed = sorted({r for m in cfg.finetune.methods for r in method_requires(cfg, m)})
    return [w for w in (needed, list(cfg.finetune.methods)) if w]


def evaluation_grid(cfg: MoftConfig) -> np.ndarray:
    if cfg.evaluate.grid is not None:
        return np.asarray(cfg.evaluate.grid, dtype=np.float64)
    m = len(cfg.objectives)
    return pareto.weight_grid(m, 11 if m == 2 else cfg.evaluate.n_points, cfg.evaluate.grid_seed)


def finetune(cfg: MoftConfig, method: str, tracker: Tracker = NullTracker(), jobs: int = 1) -> Path:
    """Fit one multi-objective method on top of the frozen base scorer."""
    if cfg.track == "llm":
        from moft.llm import stages as llm

        return llm.finetune(cfg, method, tracker, jobs)
    if cfg.track == "synthetic":
        from moft.mopo import stages as synthetic

        return synthetic.finetune(cfg, method, tracker, jobs)
    prepared = Prepared.load(cfg)
    _require_valid(cfg, prepared)
    set_threads(cfg.runtime.threads, jobs)
    device = resolve_device(cfg.runtime.device)
    layout = Layout.of(cfg)
    base = load_base(layout.base)
    runner = get_method(method)
    prerequisites = {
        name: get_method(name).load(_require(layout.finetuned(name), f"finetune --method {name}"), cfg, base)
        for name in runner.requires
    }
    ctx = FitContext(
        cfg=cfg,
        train=prepared.groups("train"),
        val=prepared.groups("val"),
        base=base,
        grid=evaluation_grid(cfg),
        device=device,
        log=tracker.log_metrics,
        prerequisites=prerequisites,
    )
    trained = runner.fit(ctx)
    with atomic_dir(layout.finetuned(method)) as out:
        trained.save(out)
    tracker.log_metrics({k: float(v) for k, v in trained.accounting.to_json().items()})
    tracker.log_model(layout.finetuned(method), layout.base, method, cfg)
    return layout.finetuned(method)


# ------------------------------------------------------------------------------------------------
# evaluate


def evaluate(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Fronts of every method (and the base point) on the test groups -> pareto.json & friends."""
    if cfg.track == "llm":
        from moft.llm import stages as llm

        return llm.evaluate(cfg, tracker)
    if cfg.track == "synthetic":
        from moft.mopo import stages as synthetic

        return synthetic.evaluate(cfg, tracker)
    prepared = Prepared.load(cfg)
    layout = Layout.of(cfg)
    test = prepared.groups("test")
    base = load_base(layout.base)
    grid = evaluation_grid(cfg)
    m, k = len(cfg.objectives), cfg.evaluate.k
    ref = np.asarray(cfg.evaluate.reference_point or [0.0] * m, dtype=np.float64)
    indices = pareto.bootstrap_indices(len(test), cfg.evaluate.bootstrap, cfg.evaluate.bootstrap_seed)

    base_metrics = group_metrics(lambda b: base(b.x, b.mask), test, k)
    base_front = FrontMetrics(grid[:1], base_metrics.objectives[None], base_metrics.main[None])
    base_samples = pareto.hypervolume_samples(base_front.objectives, indices, ref, "max")
    base_main = float(np.nanmean(base_metrics.main))
    summary: dict = {
        "profile": cfg.profile,
        "track": cfg.track,
        "objectives": cfg.objective_names,
        "metric": f"ndcg@{k}",
        "direction": "max",
        "reference_point": ref.tolist(),
        "grid": grid.round(6).tolist(),
        "data_hash": prepared.data_hash,
        "n_test_groups": len(test),
        "groups_without_signal": {
            "main": int(np.isnan(base_metrics.main).sum()),
            **{
                name: int(np.isnan(base_metrics.objectives[:, j]).sum())
                for j, name in enumerate(cfg.objective_names)
            },
        },
        "base": {
            "main": base_main,
            "objectives": base_front.points[0].tolist(),
            "hypervolume": base_front.hypervolume(ref),
            "hypervolume_ci95": list(pareto.confidence_interval(base_samples)),
        },
        "methods": {},
        "paired": {},
    }
    samples = {"base": base_samples}
    rows, plot_methods, temperature_plot = [], {}, {}
    for method in cfg.finetune.methods:
        trained = get_method(method).load(_require(layout.finetuned(method), "finetune"), cfg, base)
        entry, by_scale, fronts = None, {}, {}
        for c in cfg.evaluate.beta_scales:
            front = front_metrics(lambda w: trained.policy(w, c), test, grid, k)
            scale_entry = _method_entry(front, ref, indices, base_main)
            by_scale[f"{c:g}"] = scale_entry
            if c == 1.0 or entry is None:
                entry, main_front = scale_entry, front
            rows += _front_rows(method, f"c={c:g}", c, front, cfg.objective_names)
            fronts[f"c={c:g}"] = front
        by_beta = {}
        for label, policy_at in getattr(trained, "temperature_fronts", dict)().items():
            front = front_metrics(policy_at, test, grid, k)
            by_beta[label] = _method_entry(front, ref, indices, base_main)
            rows += _front_rows(method, f"beta={label}", float("nan"), front, cfg.objective_names)
            fronts[f"beta={label}"] = front
        samples[method] = entry.pop("_samples")
        for e in [*by_scale.values(), *by_beta.values()]:
            e.pop("_samples", None)
        entry.update(trained.accounting.to_json())
        entry.update(method_facts(trained))
        keep = ("hypervolume", "main_mean", "steerability", "points")
        if len(by_scale) > 1:
            entry["beta_scales"] = {c: {kk: e[kk] for kk in keep} for c, e in by_scale.items()}
        if by_beta:  # temperature vectors as factors of each objective's configured beta
            entry["betas"] = {b: {kk: e[kk] for kk in keep} for b, e in by_beta.items()}
        summary["methods"][method] = entry
        plot_methods[method] = {"points": main_front.points, "main": main_front.main_points, "weights": grid}
        temperature_plot[method] = {
            label: {"points": f.points, "main": f.main_points, "weights": grid} for label, f in fronts.items()
        }
    summary["paired"] = paired_probabilities(samples)

    with atomic_dir(layout.reports) as out:
        atomic_write_json(out / "pareto.json", summary)
        headline = 1.0 if 1.0 in cfg.evaluate.beta_scales else cfg.evaluate.beta_scales[0]
        write_front_tables(out, rows, cfg.objective_names, "ndcg", headline)
        plot_pareto(
            out / "pareto.png",
            cfg.objective_names,
            plot_methods,
            {"objectives": summary["base"]["objectives"], "main": base_main},
            f"{cfg.profile}: NDCG@{k} on {len(test)} test queries",
            reference_point=ref,
        )
        if len(cfg.evaluate.beta_scales) > 1 or any(len(f) > 1 for f in temperature_plot.values()):
            plot_temperature_fronts(
                out / "temperature.png",
                cfg.objective_names,
                temperature_plot,
                {"objectives": summary["base"]["objectives"], "main": base_main},
                f"{cfg.profile}: fronts at several temperatures (c scales every beta_j; Prop. 3.1)",
            )
        atomic_write_json(out / "metrics.json", dvc_metrics(summary))
    tracker.log_metrics(dvc_metrics(summary))
    tracker.log_artifacts(layout.reports, "pareto")
    return layout.pareto_json


def method_facts(trained: object) -> dict:
    """What a method keeps beside its front for the report (MOPO: thresholds, multipliers,
    achieved win rates and active constraints per grid point); empty for the others."""
    return dict(getattr(trained, "extra", None) or {})


def paired_probabilities(samples: dict[str, np.ndarray]) -> dict[str, float]:
    """P(HV_a > HV_b) from paired bootstrap samples for every method a and every other entry b
    (methods and ``base``); ``samples`` holds ``base`` and each method in order."""
    methods = [m for m in samples if m != "base"]
    return {
        f"{a}>{b}": pareto.paired_probability(samples[a], samples[b])
        for a in methods
        for b in [*methods, "base"]
        if a != b
    }


def write_front_tables(out: Path, rows: list[dict], names: list[str], prefix: str, headline: float) -> None:
    """``front.csv`` (every row) and ``front_plot.csv`` (the headline temperature's first two
    objectives, the DVC plot) of the evaluate stage."""
    front = pd.DataFrame(rows)
    front.to_csv(out / "front.csv", index=False, float_format="%.6f")
    first_two = [f"{prefix}_{n}" for n in names[:2]]
    front[front["beta_scale"] == headline][["method", *first_two]].rename(
        columns=dict(zip(first_two, ["objective_1", "objective_2"]))
    ).to_csv(out / "front_plot.csv", index=False, float_format="%.6f")


def _method_entry(
    front: FrontMetrics, ref: np.ndarray, indices: np.ndarray, base_main: float, direction: str = "max"
) -> dict:
    points, main = front.points, front.main_points
    hv_samples = pareto.hypervolume_samples(front.objectives, indices, ref, direction)
    return {
        "hypervolume": float(pareto.hypervolume(points, ref, direction)),
        "hypervolume_ci95": list(pareto.confidence_interval(hv_samples)),
        "steerability": pareto.steerability(front.grid, points, direction),
        "main_mean": float(main.mean()),
        "main_std": float(main.std()),
        "main_retention": float(main.mean() / base_main) if base_main > 0 else float("nan"),
        "n_non_dominated": int(pareto.non_dominated(points, direction).sum()),
        "points": [
            {"w": w.round(6).tolist(), "objectives": p.tolist(), "main": float(mn)}
            for w, p, mn in zip(front.grid, points, main)
        ],
        "_samples": hv_samples,
    }


def _front_rows(
    method: str, temperature: str, c: float, front: FrontMetrics, names: list[str],
    prefix: str = "ndcg", direction: str = "max",
) -> list[dict]:
    keep = pareto.non_dominated(front.points, direction)
    rows = []
    for w, p, mn, nd in zip(front.grid, front.points, front.main_points, keep):
        row = {"method": method, "temperature": temperature, "beta_scale": c}
        row.update({f"w_{n}": float(x) for n, x in zip(names, w)})
        row.update({f"{prefix}_{n}": float(x) for n, x in zip(names, p)})
        row.update({f"{prefix}_main" if prefix == "ndcg" else "main": float(mn), "non_dominated": bool(nd)})
        rows.append(row)
    return rows


def dvc_metrics(summary: dict) -> dict[str, float]:
    """Flat scalar metrics (DVC `metrics:` and MLflow)."""
    out = {"base_hypervolume": summary["base"]["hypervolume"], "base_main_ndcg": summary["base"]["main"]}
    for name, e in summary["methods"].items():
        out[f"{name}_hypervolume"] = e["hypervolume"]
        out[f"{name}_hypervolume_ci_low"] = e["hypervolume_ci95"][0]
        out[f"{name}_hypervolume_ci_high"] = e["hypervolume_ci95"][1]
        out[f"{name}_main_mean"] = e["main_mean"]
        if e.get("main_retention") is not None:
            out[f"{name}_main_retention"] = e["main_retention"]
        for obj, s in zip(summary["objectives"], e["steerability"]):
            out[f"{name}_steerability_{obj}"] = s
        out[f"{name}_train_seconds"] = e["train_seconds"]
    return out


# ------------------------------------------------------------------------------------------------
# report


def report(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """The Pareto summary table as markdown (printed by `moft run`, shown as a Prefect artifact)."""
    layout = Layout.of(cfg)
    summary = read_json(_require(layout.pareto_json, "evaluate"))
    path = atomic_write_text(layout.reports / "summary.md", summary_markdown(summary, layout))
    tracker.log_artifact(path, "pareto")
    return path


def summary_markdown(summary: dict, layout: Layout | None = None) -> str:
    names = summary["objectives"]
    metric = summary["metric"].upper()
    main = summary.get("main_metric", f"main {metric}")
    head = ["method", "HV", "HV 95% CI", *[f"steer {n}" for n in names], main, "retention", "train s", "params", "jobs"]
    lines = [
        f"### Pareto summary: `{summary['profile']}` ({summary['n_test_groups']} test groups)",
        "",
        f"Axes: {metric} per objective ({'higher' if summary['direction'] == 'max' else 'lower'} is better); "
        f"hypervolume against the fixed reference point {summary['reference_point']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    b = summary["base"]
    lines.append(
        f"| base | {b['hypervolume']:.4f} | [{b['hypervolume_ci95'][0]:.4f}, {b['hypervolume_ci95'][1]:.4f}] | "
        + " | ".join("-" for _ in names)
        + f" | {b['main']:.4f} | 1.00 | - | - | - |"
    )
    for name, e in summary["methods"].items():
        lo, hi = e["hypervolume_ci95"]
        steer = " | ".join(f"{s:+.2f}" for s in e["steerability"])
        lines.append(
            f"| {name} | {e['hypervolume']:.4f} | [{lo:.4f}, {hi:.4f}] | {steer} | "
            f"{e['main_mean']:.4f} ± {e['main_std']:.4f} | "
            f"{'-' if e.get('main_retention') is None else format(e['main_retention'], '.2f')} | "
            f"{e['train_seconds']:.1f} | {e['trainable_params']:,} | {e['n_jobs']} |"
        )
    lines += ["", "Base point per objective: " + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, b["objectives"]))]
    if summary["paired"]:
        lines.append("Paired bootstrap P(HV_a > HV_b): " + ", ".join(f"{k} {v:.3f}" for k, v in summary["paired"].items()))
    lines += temperature_markdown(summary) + generation_markdown(summary)
    if layout is not None:
        lines += ["", f"Plot: `{layout.reports / 'pareto.png'}`  ", f"Summary: `{layout.pareto_json}`"]
        if (layout.reports / "temperature.png").exists():
            lines[-1] += "  "
            lines.append(f"Temperature fronts: `{layout.reports / 'temperature.png'}`")
    return "\n".join(lines) + "\n"


def generation_markdown(summary: dict) -> list[str]:
    """LLM track: mean normalised reward of sampled responses at every grid point."""
    gen = summary.get("generation") or {}
    if not gen.get("methods"):
        return []
    rewards = gen["rewards"]
    head = ["method", "w", *[f"{n} ({r})" for n, r in rewards.items()], "words", "example"]
    lines = [
        "",
        f"#### Generation front ({gen['prompts']} held-out prompts per w, rewards normalised on the "
        "training responses, higher is better)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    entries = ([("base", gen["base"])] if gen.get("base") else []) + [
        (m, p) for m, e in gen["methods"].items() for p in e["points"]
    ]
    for method, p in entries:
        example = p["example"].replace("|", "/").replace("\n", " ")[:80]
        lines.append(
            f"| {method} | {', '.join(f'{x:.2f}' for x in p['w']) if method != 'base' else '-'} | "
            + " | ".join(f"{x:+.3f}" for x in p["rewards"])
            + f" | {p['mean_words']:.1f} | {example} |"
        )
    steer = [f"{m}: " + ", ".join(f"{s:+.2f}" for s in e["steerability"]) for m, e in gen["methods"].items() if e["steerability"]]
    if steer:
        lines += ["", "Generation steerability (Spearman of w_j and reward j): " + "; ".join(steer)]
    hv = [
        f"{m}: HV {e['hypervolume']:.4f}, spread {e['spread']:.3f}"
        for m, e in gen["methods"].items() if "hypervolume" in e
    ]
    if hv:
        ref = next(e["reference_point"] for e in gen["methods"].values() if "reference_point" in e)
        lines += ["", f"Generation front hypervolume (reference {ref}) and spread (mean distance of the "
                  "points from their centroid; 0 = the weights do not change the output): " + "; ".join(hv)]
    return lines


def temperature_markdown(summary: dict) -> list[str]:
    """How each front moves with the temperature: a table per scale c (Prop. 3.1) and per
    temperature vector (temperature hypernetwork), and one sentence per method saying where the
    front went as c grew, from the measured numbers."""
    names, metric = summary["objectives"], summary["metric"].upper()
    entries = {m: e for m, e in summary["methods"].items() if "beta_scales" in e or "betas" in e}
    if not entries:
        return []
    head = ["method", "temperature", "HV", f"main {metric}", *[f"mean {n}" for n in names], *[f"steer {n}" for n in names]]
    lines = [
        "",
        "#### Temperature control",
        "",
        "Scores at temperature scale c are (1 - 1/c) s_base + (1/c) s (Proposition 3.1): c > 1 pulls every "
        "front towards the base model, c < 1 pushes it away. `beta=a,b` rows are the temperature "
        "hypernetwork at temperatures a x beta_1, b x beta_2 (eq. 19).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    sentences = []
    for method, e in entries.items():
        rows = [(f"c={c}", v) for c, v in e.get("beta_scales", {}).items()]
        rows += [(f"beta={b}", v) for b, v in e.get("betas", {}).items()]
        for label, v in rows:
            means = np.mean([p["objectives"] for p in v["points"]], axis=0)
            lines.append(
                f"| {method} | {label} | {v['hypervolume']:.4f} | {v['main_mean']:.4f} | "
                + " | ".join(f"{x:.4f}" for x in means)
                + " | "
                + " | ".join(f"{x:+.2f}" for x in v["steerability"])
                + " |"
            )
        scales = sorted(e.get("beta_scales", {}).items(), key=lambda kv: float(kv[0]))
        if len(scales) > 1:
            (c0, lo), (c1, hi) = scales[0], scales[-1]
            base_point = np.asarray(summary["base"]["objectives"])

            def spread(v: dict) -> float:  # mean distance of the front's points to the base point
                return float(np.mean([np.linalg.norm(np.asarray(p["objectives"]) - base_point) for p in v["points"]]))

            d0, d1 = spread(lo), spread(hi)
            sentences.append(
                f"{method}: from c={c0} to c={c1} the front moves {'towards' if d1 < d0 else 'away from'} "
                f"the base point (mean distance {d0:.4f} -> {d1:.4f}), the hypervolume goes "
                f"{lo['hypervolume']:.4f} -> {hi['hypervolume']:.4f} and the main {metric} "
                f"{lo['main_mean']:.4f} -> {hi['main_mean']:.4f} (base {summary['base']['main']:.4f})."
            )
    return lines + [""] + sentences
