"""Benchmark (SPEC 11): the base scorer's NDCG@k against LightGBM `lambdarank` on the same split.

Run:  python bench/ltr_base.py [--profiles ltr-mslr ltr-letor] [--set k=v ...] [--out FILE]

For each profile the real stages `prepare`, `validate` and `train_base` run into a scratch
directory (the project's own artifacts and reports are untouched); LightGBM is then trained on the
very train split the base scorer saw, early-stopped on its validation split, and both models are
scored on the test split by the project's own evaluation path (`moft.evaluation.group_metrics`),
main label and every auxiliary objective (SPEC 3.3 asks for the base model's auxiliary NDCG).
Results go to one JSON file, written atomically, and a table is printed at the end.

`params.yaml` is not read: a benchmark is defined by its command line alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightgbm
import numpy as np
import torch

from moft.config import MoftConfig, load_config
from moft.data.groups import Batch, GroupedItems
from moft.evaluation import GroupMetrics, Policy, group_metrics
from moft.io import atomic_write_json, read_json
from moft.metrics.ranking import mean_ndcg
from moft.stages import Layout, Prepared, load_base, prepare, train_base, validate

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ltr_base.json"
DEFAULT_PROFILES = ("ltr-mslr", "ltr-letor")
DEFAULT_THREADS = 2  # the build machine's cores; both models get the same number

# LightGBM's usual ranking settings; the round budget is generous because early stopping decides.
LIGHTGBM_PARAMS = dict(
    objective="lambdarank",
    metric="ndcg",
    n_estimators=2000,
    learning_rate=0.05,
    num_leaves=31,
    min_child_samples=20,
    deterministic=True,
    force_row_wise=True,  # with `deterministic`, the row-wise histogram path is reproducible
    verbose=-1,
)
EARLY_STOPPING_ROUNDS = 100


def log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)


# ------------------------------------------------------------------------------------------------
# LightGBM on the prepared groups


def lightgbm_arrays(data: GroupedItems) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (N, d) float32, integer main labels (N,), group sizes (G,) from contiguous runs."""
    main = data.main.numpy()
    labels = np.rint(main).astype(np.int32)
    if not np.array_equal(labels, main):
        raise ValueError("LightGBM lambdarank needs integer relevance labels; label_main is not integral")
    return data.features.numpy(), labels, data.sizes


def train_lightgbm(
    train: GroupedItems, val: GroupedItems, cfg: MoftConfig, threads: int
) -> tuple[lightgbm.LGBMRanker, float]:
    """LambdaMART on the main label, early-stopped on validation NDCG@k; returns (model, seconds).

    The gain is linear (`label_gain = 0, 1, 2, ...`) so that LightGBM optimises and early-stops
    on the same NDCG the project measures (LightGBM's default gain is 2^label - 1).
    """
    x, y, sizes = lightgbm_arrays(train)
    xv, yv, sizes_v = lightgbm_arrays(val)
    top_label = int(max(cfg.data.label_range[1], y.max(), yv.max()))
    model = lightgbm.LGBMRanker(
        **LIGHTGBM_PARAMS,
        label_gain=list(range(top_label + 1)),
        random_state=cfg.base.optim.seed,
        num_threads=threads,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # lightgbm 4.7 renames eval_set to eval_X/eval_y; the project still allows lightgbm 4.3
        warnings.filterwarnings("ignore", message="The argument 'eval_set' is deprecated")
        model.fit(
            x,
            y,
            group=sizes,
            eval_set=[(xv, yv)],
            eval_group=[sizes_v],
            eval_at=[cfg.evaluate.k],
            callbacks=[lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)],
        )
    return model, time.perf_counter() - start


def booster_policy(model: lightgbm.LGBMRanker) -> Policy:
    """A fitted ranker as a policy: padded batch -> scores (B, n), padding scored 0."""
    booster, best = model.booster_, model.best_iteration_

    def policy(batch: Batch) -> torch.Tensor:
        scores = torch.zeros(batch.mask.shape, dtype=torch.float64)  # (B, n)
        items = batch.x[batch.mask].cpu().numpy()  # (real items, d)
        scores[batch.mask.cpu()] = torch.from_numpy(booster.predict(items, num_iteration=best))
        return scores

    return policy


# ------------------------------------------------------------------------------------------------
# One profile


def summarise(metrics: GroupMetrics, names: list[str]) -> dict:
    """Mean NDCG over the groups with signal, main label and each objective."""
    return {
        "main_ndcg": mean_ndcg(metrics.main)[0],
        "objectives": {n: mean_ndcg(metrics.objectives[:, j])[0] for j, n in enumerate(names)},
    }


def run_stages(cfg: MoftConfig, start: float) -> dict[str, float]:
    """The real pipeline stages up to the base model; returns each stage's wall seconds."""
    seconds = {}
    for name, stage in (("prepare", prepare), ("validate", validate), ("train_base", train_base)):
        log(f"{cfg.profile}: stage {name}", start)
        t0 = time.perf_counter()
        stage(cfg)
        seconds[name] = time.perf_counter() - t0
    return seconds


def bench_profile(cfg: MoftConfig, start: float) -> dict:
    stage_seconds = run_stages(cfg, start)
    prepared = Prepared.load(cfg)
    train, val, test = (prepared.groups(s) for s in ("train", "val", "test"))
    names, k = cfg.objective_names, cfg.evaluate.k
    threads = cfg.runtime.threads or os.cpu_count() or 1

    log(f"{cfg.profile}: LightGBM lambdarank on {len(train)} train / {len(val)} val groups", start)
    ranker, lgbm_seconds = train_lightgbm(train, val, cfg, threads)

    log(f"{cfg.profile}: scoring both models on {len(test)} test groups", start)
    base_dir = Layout.of(cfg).base
    base = load_base(base_dir)
    base_stage = read_json(base_dir / "metrics.json")
    scored: dict[str, GroupMetrics] = {
        "base": group_metrics(lambda b: base(b.x, b.mask), test, k),
        "lightgbm": group_metrics(booster_policy(ranker), test, k),
    }
    base_entry = summarise(scored["base"], names)
    lgbm_entry = summarise(scored["lightgbm"], names)
    return {
        "description": cfg.description,
        "k": k,
        "threads": threads,
        "n_train_groups": len(train),
        "n_val_groups": len(val),
        "n_test_groups": len(test),
        "groups_without_signal": {
            "main": mean_ndcg(scored["base"].main)[1],
            **{n: mean_ndcg(scored["base"].objectives[:, j])[1] for j, n in enumerate(names)},
        },
        "base": {
            **base_entry,
            "train_seconds": base_stage["train_seconds"],
            "best_epoch": base_stage["best_epoch"],
        },
        "lightgbm": {
            **lgbm_entry,
            "train_seconds": lgbm_seconds,
            "best_iteration": int(ranker.best_iteration_),
            "params": {**LIGHTGBM_PARAMS, "early_stopping_rounds": EARLY_STOPPING_ROUNDS},
        },
        "ratio_base_to_lightgbm": base_entry["main_ndcg"] / lgbm_entry["main_ndcg"],
        "stage_seconds": stage_seconds,
    }


# ------------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    """What the timings depend on; the load average shows whether the cores were shared."""
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightgbm": lightgbm.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(profiles: dict[str, dict]) -> str:
    lines = []
    for profile, r in profiles.items():
        names = list(r["base"]["objectives"])
        head = ["model", f"main NDCG@{r['k']}", *names, "train s", "stopped at"]
        rows = [
            ["base", r["base"]["main_ndcg"], *r["base"]["objectives"].values(),
             r["base"]["train_seconds"], f"epoch {r['base']['best_epoch']}"],
            ["lightgbm", r["lightgbm"]["main_ndcg"], *r["lightgbm"]["objectives"].values(),
             r["lightgbm"]["train_seconds"], f"iter {r['lightgbm']['best_iteration']}"],
        ]
        widths = [max(10, len(h)) for h in head]
        lines.append(f"{profile} ({r['n_test_groups']} test groups, {r['threads']} threads)")
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines += ["  " + "  ".join(_cell(v).ljust(w) for v, w in zip(row, widths)) for row in rows]
        lines.append(f"  base / lightgbm main NDCG@{r['k']}: {r['ratio_base_to_lightgbm']:.3f}")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", default=list(DEFAULT_PROFILES), help="profiles to run")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override (dotted.key=value), applied to every profile; repeatable",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="moft-bench-") as scratch:
        scratch_overrides = [
            f"artifacts_dir={Path(scratch) / 'artifacts'}",
            f"reports_dir={Path(scratch) / 'reports'}",
            f"runtime.threads={DEFAULT_THREADS}",
        ]
        no_params = Path(scratch) / "params.yaml"  # absent: params.yaml does not steer the benchmark
        for profile in args.profiles:
            cfg = load_config(profile, scratch_overrides + args.overrides, params_file=no_params)
            results[profile] = bench_profile(cfg, start)
    wall = time.perf_counter() - start
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    atomic_write_json(
        args.out,
        {"benchmark": "ltr_base", "command": command, "wall_seconds": wall, "machine": machine(), "profiles": results},
    )
    log(f"wrote {args.out}", start)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
