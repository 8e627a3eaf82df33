"""Benchmark (SPEC 11, issue 3): every LTR method side by side, plus HyperDPO ablations.

Run:  python bench/ltr_methods.py [--profiles ltr-mslr-clicks ltr-mslr-quality ltr-mslr-m5]
                                  [--ablations/--no-ablations] [--set k=v ...] [--out FILE]

For each profile the real stages run into a scratch directory (prepare, validate, train_base,
the finetune jobs in dependency order, evaluate), then the HyperDPO-to-baseline ratios are taken
from the profile's `pareto.json`: hypervolume ratio (> 1: HyperDPO's front is larger) and
training-time ratio (< 1: HyperDPO is cheaper), with the paired bootstrap probability that
HyperDPO's HV beats each baseline's. The ablations re-train only HyperDPO on `ltr-mslr`'s
prepared data and base model, one knob at a time. The JSON is rewritten after every unit of
work (`"complete": false` until the end), so a long run leaves its partial results behind.

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
from pathlib import Path

import torch

from moft.config import load_config
from moft.io import atomic_write_json, read_json
from moft.stages import evaluate, finetune, finetune_waves, prepare, train_base, validate

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ltr_methods.json"
# The paper's Figure 2 pairs (sparse: two click counts; dense: two quality scores) and m = 5.
DEFAULT_PROFILES = ("ltr-mslr-clicks", "ltr-mslr-quality", "ltr-mslr-m5")
ABLATION_PROFILE = "ltr-mslr"
# (name, dotted key, values other than the default); one knob at a time.
ABLATIONS = (
    ("alpha", "finetune.hyperdpo.alpha", [0.2, 1.0]),
    ("cosine_lambda", "finetune.hyperdpo.cosine_lambda", [0.1, 1.0]),
    ("depth", "finetune.hyperdpo.model.layers", [1, 3]),
    ("parametrization", "finetune.hyperdpo.parametrization", ["scratch"]),
    ("weight_sampling", "finetune.hyperdpo.weight_sampling", ["step"]),
    ("conditioning", "finetune.hyperdpo.conditioning", ["concat"]),
)
PAPER = {  # HyperDPO paper, MSLR-WEB10K, m = 5 (Table 1)
    "hypervolume": {"hyperdpo": 2.039e-3, "dpo_ls": 1.648e-3, "dpo_soup": 1.468e-3, "mo_dpo": 1.263e-3},
    "train_seconds": {"hyperdpo": 4043, "dpo_ls": 14649, "dpo_soup": 6062, "mo_dpo": 27060},
}


def say(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:8.1f}s] {message}", flush=True)


def ratios(summary: dict) -> dict:
    methods = summary["methods"]
    hyper = methods.get("hyperdpo")
    if hyper is None:
        return {}
    out = {}
    for name, entry in methods.items():
        if name == "hyperdpo":
            continue
        out[name] = {
            "hv_ratio": hyper["hypervolume"] / entry["hypervolume"] if entry["hypervolume"] else None,
            "time_ratio": hyper["train_seconds"] / entry["train_seconds"] if entry["train_seconds"] else None,
            "p_hyperdpo_hv_greater": summary["paired"].get(f"hyperdpo>{name}"),
        }
    return out


def method_table(summary: dict) -> dict:
    keys = ("hypervolume", "hypervolume_ci95", "steerability", "main_mean", "main_std",
            "main_retention", "train_seconds", "n_jobs", "trainable_params", "n_non_dominated")
    return {name: {k: e[k] for k in keys} for name, e in summary["methods"].items()}


def profile_parser(doc: str, profile: str, out: Path) -> argparse.ArgumentParser:
    """The options every profile benchmark takes: --profile, --set k=v (repeatable), --out, --threads."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--profile", default=profile)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return parser


def setup(threads: int, overrides: list[str]) -> tuple[list[str], float]:
    """Thread count for this process and every job; the overrides; the start time."""
    torch.set_num_threads(threads)
    return [*overrides, f"runtime.threads={threads}"], time.perf_counter()


def header() -> dict:
    """What every benchmark JSON records first: the command and the machine it ran on."""
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_at_start": os.getloadavg()},
    }


def run_profile(profile: str, overrides: list[str], scratch: Path, start: float) -> dict:
    base_overrides = [f"artifacts_dir={scratch / 'artifacts'}", f"reports_dir={scratch / 'reports'}",
                      "tracking.enabled=false", *overrides]
    cfg = load_config(profile, base_overrides, params_file=scratch / "none.yaml")
    for stage in (prepare, validate, train_base):
        say(f"{profile}: {stage.__name__}", start)
        stage(cfg)
    for wave in finetune_waves(cfg):
        for method in wave:
            say(f"{profile}: finetune {method}", start)
            finetune(cfg, method)
    say(f"{profile}: evaluate", start)
    summary = read_json(evaluate(cfg))
    return {
        "objectives": summary["objectives"],
        "base": summary["base"],
        "methods": method_table(summary),
        "paired": summary["paired"],
        "hyperdpo_vs": ratios(summary),
    }


def run_ablation(key: str, value, overrides: list[str], scratch: Path, start: float) -> dict:
    """HyperDPO alone with one knob changed, on the ablation profile's prepared data and base."""
    tag = f"{key.rsplit('.', 1)[-1]}={value}"
    common = ["tracking.enabled=false", "finetune.methods=[hyperdpo]", *overrides]
    shared = load_config(ABLATION_PROFILE, [f"artifacts_dir={scratch / 'artifacts'}", *common],
                         params_file=scratch / "none.yaml").artifacts()
    cfg = load_config(
        ABLATION_PROFILE,
        [f"artifacts_dir={scratch / 'ablations' / tag / 'artifacts'}",
         f"reports_dir={scratch / 'ablations' / tag / 'reports'}", *common, f"{key}={value}"],
        params_file=scratch / "none.yaml",
    )
    say(f"ablation {tag}", start)
    own = cfg.artifacts()
    own.mkdir(parents=True, exist_ok=True)
    for part in ("prepared", "validation", "base"):  # the same data and base model as the full run
        (own / part).symlink_to(shared / part, target_is_directory=True)
    finetune(cfg, "hyperdpo")
    entry = read_json(evaluate(cfg))["methods"]["hyperdpo"]
    return {"key": key, "value": value, **{k: entry[k] for k in (
        "hypervolume", "hypervolume_ci95", "steerability", "main_mean", "main_retention", "train_seconds")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="*", default=list(DEFAULT_PROFILES))
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    overrides, start = setup(args.threads, args.overrides)
    result = {
        **header(),
        "paper_mslr_m5": PAPER,
        "profiles": {},
        "ablations": {"profile": ABLATION_PROFILE, "default": None, "variants": []},
        "complete": False,
    }
    with tempfile.TemporaryDirectory(prefix="moft-bench-") as tmp:
        scratch = Path(tmp)
        for profile in args.profiles:
            result["profiles"][profile] = run_profile(profile, overrides, scratch, start)
            result["elapsed_seconds"] = time.perf_counter() - start
            atomic_write_json(args.out, result)
        if args.ablations:
            if ABLATION_PROFILE in result["profiles"]:
                reference = result["profiles"][ABLATION_PROFILE]
            else:  # HyperDPO alone is the reference point of the ablations
                reference = run_profile(ABLATION_PROFILE, [*overrides, "finetune.methods=[hyperdpo]"], scratch, start)
            default = reference["methods"]["hyperdpo"]
            result["ablations"]["default"] = {k: default[k] for k in (
                "hypervolume", "hypervolume_ci95", "steerability", "main_mean", "main_retention", "train_seconds")}
            for name, key, values in ABLATIONS:
                for value in values:
                    result["ablations"]["variants"].append(run_ablation(key, value, overrides, scratch, start))
                    result["elapsed_seconds"] = time.perf_counter() - start
                    atomic_write_json(args.out, result)
    result["complete"] = True
    result["elapsed_seconds"] = time.perf_counter() - start
    atomic_write_json(args.out, result)
    print_summary(result)


def print_summary(result: dict) -> None:
    for profile, entry in result["profiles"].items():
        print(f"\n{profile}: " + " vs ".join(entry["objectives"]))
        print(f"  {'method':10s} {'HV':>8s} {'HV 95% CI':>19s} {'time s':>8s} {'jobs':>5s} {'params':>9s}")
        for name, e in entry["methods"].items():
            lo, hi = e["hypervolume_ci95"]
            print(f"  {name:10s} {e['hypervolume']:8.4f} [{lo:8.4f}, {hi:8.4f}] {e['train_seconds']:8.1f} "
                  f"{e['n_jobs']:5d} {e['trainable_params']:9d}")
        for name, r in entry["hyperdpo_vs"].items():
            print(f"  hyperdpo/{name}: HV x{r['hv_ratio']:.3f}, time x{r['time_ratio']:.3f}, "
                  f"P(HV greater) {r['p_hyperdpo_hv_greater']:.3f}")
    if result["ablations"]["variants"]:
        d = result["ablations"]["default"]
        print(f"\nablations on {result['ablations']['profile']} (default HV {d['hypervolume']:.4f}):")
        for v in result["ablations"]["variants"]:
            print(f"  {v['key']}={v['value']}: HV {v['hypervolume']:.4f}, steer {v['steerability']}, "
                  f"time {v['train_seconds']:.1f}s")


if __name__ == "__main__":
    main()
