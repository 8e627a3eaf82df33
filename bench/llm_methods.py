"""Benchmark (SPEC 11, issue 4): the LM methods side by side on the LLM track.

Run:  python bench/llm_methods.py [--profiles llm-hh] [--set k=v ...] [--threads N] [--out FILE]

For each profile the real stages run into a scratch directory (prepare, validate, train_base, the
finetune jobs in dependency order, one at a time, evaluate) on the real SmolLM2-135M, then the
HyperDPO-to-baseline ratios come from the profile's `pareto.json`: hypervolume ratio of the
preference cross-entropy fronts (direction min, fixed reference point; > 1: HyperDPO's front is
larger), training-time ratio (< 1: HyperDPO is cheaper), the paired bootstrap probability that
HyperDPO's HV beats each baseline's, and each method's generation-front steerability. Jobs run
one after another with all `--threads`, so training times compare like with like.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ltr_methods import header, method_table, ratios, say, setup  # noqa: E402

from moft.config import load_config  # noqa: E402
from moft.io import atomic_write_json, read_json  # noqa: E402
from moft.stages import evaluate, finetune, finetune_waves, prepare, train_base, validate  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "llm_methods.json"
PAPER = {  # HyperDPO paper, Table 2: PKU-SafeRLHF, reference point (1.1, 1.1), 11 grid points
    "gpt2": {"hypervolume": {"dpo_ls": 0.17668, "dpo_soup": 0.18401, "hyperdpo": 0.19424},
             "train_seconds": {"dpo_ls": 15148.53, "dpo_soup": 2755.51, "hyperdpo": 1396.81}},
    "alpaca_7b": {"hypervolume": {"dpo_ls": 0.16873, "dpo_soup": 0.14270, "hyperdpo": 0.16885},
                  "train_seconds": {"dpo_ls": 94156.12, "dpo_soup": 17138.74, "hyperdpo": 8520.17}},
}


def run_profile(profile: str, overrides: list[str], scratch: Path, start: float) -> dict:
    cfg = load_config(
        profile,
        [f"artifacts_dir={scratch / 'artifacts'}", f"reports_dir={scratch / 'reports'}",
         "tracking.enabled=false", *overrides],
        params_file=scratch / "none.yaml",
    )
    stage_seconds = {}
    for stage in (prepare, validate, train_base):
        say(f"{profile}: {stage.__name__}", start)
        t = time.perf_counter()
        stage(cfg)
        stage_seconds[stage.__name__] = time.perf_counter() - t
    for wave in finetune_waves(cfg):
        for method in wave:
            say(f"{profile}: finetune {method}", start)
            t = time.perf_counter()
            finetune(cfg, method)
            stage_seconds[f"finetune:{method}"] = time.perf_counter() - t
    say(f"{profile}: evaluate", start)
    t = time.perf_counter()
    summary = read_json(evaluate(cfg))
    stage_seconds["evaluate"] = time.perf_counter() - t
    generation = summary.get("generation", {})
    return {
        "objectives": summary["objectives"],
        "objective_sources": summary.get("objective_sources"),
        "n_test_pairs": summary["n_test_groups"],
        "reference_point": summary["reference_point"],
        "base": summary["base"],
        "methods": method_table(summary),
        "paired": summary["paired"],
        "hyperdpo_vs": ratios(summary),
        "generation": {
            "rewards": generation.get("rewards"),
            "base": generation.get("base", {}).get("rewards"),
            "steerability": {m: e["steerability"] for m, e in generation.get("methods", {}).items()},
            "points": {m: [p["rewards"] for p in e["points"]] for m, e in generation.get("methods", {}).items()},
        },
        "stage_seconds": stage_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="*", default=["llm-hh"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    overrides, start = setup(args.threads, args.overrides)
    result = {
        **header(),
        "paper": PAPER,
        "profiles": {},
        "complete": False,
    }
    with tempfile.TemporaryDirectory(prefix="moft-bench-llm-") as tmp:
        for profile in args.profiles:
            result["profiles"][profile] = run_profile(profile, overrides, Path(tmp), start)
            result["elapsed_seconds"] = time.perf_counter() - start
            atomic_write_json(args.out, result)
    result["complete"] = True
    result["elapsed_seconds"] = time.perf_counter() - start
    atomic_write_json(args.out, result)
    for profile, entry in result["profiles"].items():
        print(f"\n{profile}: " + " vs ".join(entry["objectives"]) + " (preference CE, lower is better)")
        for name, e in entry["methods"].items():
            lo, hi = e["hypervolume_ci95"]
            print(f"  {name:10s} HV {e['hypervolume']:.4f} [{lo:.4f}, {hi:.4f}] time {e['train_seconds']:.1f}s "
                  f"jobs {e['n_jobs']} params {e['trainable_params']}")
        for name, r in entry["hyperdpo_vs"].items():
            print(f"  hyperdpo/{name}: HV x{r['hv_ratio']:.3f}, time x{r['time_ratio']:.3f}, "
                  f"P(HV greater) {r['p_hyperdpo_hv_greater']:.3f}")


if __name__ == "__main__":
    main()
