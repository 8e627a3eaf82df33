"""Benchmark (SPEC 11, issue 7): the MO-ODPO paper's Dirichlet-alpha study on the online track.

Run:  python bench/online_alpha.py [--alphas 0.3 1 3] [--profile llm-online] [--set k=v ...]
                                   [--threads N] [--out FILE]

MO-ODPO draws the trade-off of every training prompt from Dir(alpha). Small alpha puts the weights
near the vertices (each prompt trains one objective: sharp steering, but the middle of the front
is rarely seen); large alpha concentrates them at the centre (the model may ignore the prefix and
collapse to one policy). For each alpha the real stages train MO-ODPO on the embedded SmolLM2
(same data, budget and seed) and the evaluate stage draws its generation front on held-out
prompts; the JSON records, per alpha, the steerability (Spearman of w_j and reward j), the spread
(mean distance of the front's points from their centroid; 0 = mode collapse), the generation-front
hypervolume and the training time.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from ltr_methods import header, profile_parser, say, setup  # noqa: E402

from moft.config import load_config  # noqa: E402
from moft.io import atomic_write_json, read_json  # noqa: E402
from moft.stages import evaluate, finetune, prepare, train_base, validate  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "online_alpha.json"


def last_steps(history: list[dict], n: int = 10) -> dict[str, float]:
    """Mean of each training metric over the last ``n`` steps (loss, accuracy, KL, rewards,
    ``trade_offs``: the share of sample pairs whose order depends on ``w``)."""
    rows = history[-n:]
    keys = sorted({k for row in rows for k in row} - {"step"})
    return {k: float(np.mean([row[k] for row in rows if k in row])) for k in keys}


def main() -> None:
    parser = profile_parser(__doc__, "llm-online", DEFAULT_OUT)
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.3, 1.0, 3.0])
    args = parser.parse_args()
    overrides, start = setup(args.threads, args.overrides)
    result = {**header(), "profile": args.profile, "alphas": {}, "complete": False}
    with tempfile.TemporaryDirectory(prefix="moft-bench-alpha-") as tmp:
        scratch = Path(tmp)
        common = [f"artifacts_dir={scratch / 'artifacts'}", f"reports_dir={scratch / 'reports'}",
                  "tracking.enabled=false", "finetune.methods=[mo_odpo]", *overrides]
        for i, alpha in enumerate(args.alphas):
            cfg = load_config(args.profile, [*common, f"llm.online.alpha={alpha}"], params_file=scratch / "none.yaml")
            if i == 0:  # data, validation and the reference policy are the same for every alpha
                for stage in (prepare, validate, train_base):
                    say(f"{stage.__name__}", start)
                    stage(cfg)
            say(f"alpha {alpha}: finetune mo_odpo", start)
            model_dir = finetune(cfg, "mo_odpo")
            say(f"alpha {alpha}: evaluate", start)
            summary = read_json(evaluate(cfg))
            method, gen = summary["methods"]["mo_odpo"], summary["generation"]["methods"]["mo_odpo"]
            result["alphas"][f"{alpha:g}"] = {
                "generation_steerability": gen["steerability"],
                "generation_spread": gen["spread"],
                "generation_hypervolume": gen["hypervolume"],
                "generation_reference_point": gen["reference_point"],
                "generation_points": [p["rewards"] for p in gen["points"]],
                "mean_words": [p["mean_words"] for p in gen["points"]],
                "ce_hypervolume": method["hypervolume"],
                "train_seconds": method["train_seconds"],
                "last_steps": last_steps(read_json(model_dir / "online.json")["history"]),
            }
            result["objectives"], result["grid"] = summary["objectives"], summary["grid"]
            result["elapsed_seconds"] = time.perf_counter() - start
            atomic_write_json(args.out, result)
    result["complete"] = True
    atomic_write_json(args.out, result)
    print(f"\n{args.profile}: MO-ODPO by Dirichlet alpha ({' vs '.join(result['objectives'])})")
    for alpha, e in result["alphas"].items():
        steer = ", ".join(f"{s:+.2f}" for s in e["generation_steerability"])
        print(f"  alpha {alpha:>4s}: steerability {steer}  spread {e['generation_spread']:.3f}  "
              f"HV {e['generation_hypervolume']:.4f}  train {e['train_seconds']:.0f}s")


if __name__ == "__main__":
    main()
