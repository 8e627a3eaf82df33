"""Benchmark (issue 7): do two rewards conflict on the samples the online methods train on?

Run:  python bench/online_conflict.py [--rewards relevance conciseness ...] [--prompts 32] [--samples 4]
                                      [--profile llm-online] [--set k=v ...] [--threads N] [--out FILE]

A prompt-conditioned method (MO-ODPO, P-MORL) learns to read ``w`` only from sample pairs that
trade the objectives off: pairs that every ``w`` orders alike teach one unconditional policy. This
script samples the untrained (reference) policy the way the first rollouts do (the profile's
instruction at the centre weight, its temperature, length and samples per prompt) on training
prompts, scores every sample with each reward model, and records per reward the within-prompt
Spearman correlation with the answer's word count (what the policy changes first: where to stop),
and per pair of rewards their within-prompt Spearman correlation and the share of sample pairs
that trade them off (:func:`moft.metrics.pareto.trade_off_share`). Two rewards that both prefer
shorter answers agree on the cheapest thing the policy can learn: expect one short answer at
every ``w``.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ltr_methods import header, profile_parser, say, setup  # noqa: E402

from moft.config import load_config  # noqa: E402
from moft.io import atomic_write_json  # noqa: E402
from moft.llm.methods import LMFitContext  # noqa: E402
from moft.llm.stages import load_groups, load_policy  # noqa: E402
from moft.metrics.pareto import spearman, trade_off_share  # noqa: E402
from moft.online.methods import online_task  # noqa: E402
from moft.online.rollout import new_online_policy, sample_responses  # noqa: E402
from moft.rewards import get_reward  # noqa: E402
from moft.rewards.length import word_counts  # noqa: E402
from moft.rewards.prompts import prompt_text  # noqa: E402
from moft.stages import evaluation_grid, prepare, validate  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "online_conflict.json"
REWARDS = ["relevance", "conciseness", "length", "toxicity", "sentiment"]


def within(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over prompts of the Spearman correlation of two ``(n, k)`` score arrays."""
    return float(np.mean([spearman(a, b) for a, b in zip(x, y)]))


def main() -> None:
    parser = profile_parser(__doc__, "llm-online", DEFAULT_OUT)
    parser.add_argument("--rewards", nargs="+", default=REWARDS)
    parser.add_argument("--prompts", type=int, default=32, help="training prompts sampled")
    parser.add_argument("--samples", type=int, default=4,
                        help="samples per prompt (a Spearman correlation of 2 samples is only +-1)")
    args = parser.parse_args()
    overrides, start = setup(args.threads, [f"llm.online.samples_per_prompt={args.samples}", *args.overrides])
    result = {**header(), "profile": args.profile, "rewards": {}, "pairs": {}}
    with tempfile.TemporaryDirectory(prefix="moft-bench-conflict-") as tmp:
        scratch = Path(tmp)
        cfg = load_config(args.profile, [f"artifacts_dir={scratch / 'artifacts'}", f"reports_dir={scratch / 'reports'}",
                                         "tracking.enabled=false", *overrides], params_file=scratch / "none.yaml")
        for stage in (prepare, validate):
            say(stage.__name__, start)
            stage(cfg)
        train = load_groups(cfg, "train", with_ref=False)
        ctx = LMFitContext(cfg, train, train, lambda: load_policy(cfg), evaluation_grid(cfg))
        task = online_task(ctx)
        policy = new_online_policy(task, 0)  # LoRA B = 0: exactly the reference policy
        rng = np.random.default_rng(cfg.llm.online.seed)
        prompts = [task.prompts[i] for i in rng.choice(len(task.prompts), min(args.prompts, len(task.prompts)),
                                                        replace=False)]
        m = len(task.names)
        inputs = task.condition(prompts, np.full((len(prompts), m), 1.0 / m), policy.tokenizer)
        k = cfg.llm.online.samples_per_prompt
        say(f"sampling {k} answers to {len(prompts)} prompts", start)
        samples = sample_responses(policy, inputs, k, cfg.llm.online, cfg.llm.online.seed)
        flat_prompts = [prompt_text(p) for p in prompts for _ in range(k)]
        flat = [s for group in samples for s in group]
        words = word_counts(flat).reshape(len(prompts), k)
        scores = {}
        for name in args.rewards:
            say(f"scoring {name}", start)
            scores[name] = get_reward(name).score(flat_prompts, flat).reshape(len(prompts), k)
            result["rewards"][name] = {"mean": float(scores[name].mean()), "std": float(scores[name].std()),
                                       "spearman_with_words": within(scores[name], words)}
        for a, b in itertools.combinations(args.rewards, 2):
            result["pairs"][f"{a} / {b}"] = {
                "spearman": within(scores[a], scores[b]),
                "trade_off_share": trade_off_share(np.stack([scores[a], scores[b]], -1)),
            }
        result.update(samples_per_prompt=k, prompts=len(prompts), mean_words=float(words.mean()),
                      temperature=cfg.llm.online.temperature, max_new_tokens=cfg.llm.online.max_new_tokens,
                      instruction_example=inputs[0], elapsed_seconds=time.perf_counter() - start)
        atomic_write_json(args.out, result)
    print(f"\n{args.profile}: {k} reference samples x {len(prompts)} prompts, {result['mean_words']:.1f} words on average")
    print("  within-prompt Spearman with the word count:")
    for name, row in result["rewards"].items():
        print(f"    {name:12s} {row['spearman_with_words']:+.2f}")
    print("  pairs: within-prompt Spearman, share of sample pairs that trade off")
    for name, row in result["pairs"].items():
        print(f"    {name:28s} {row['spearman']:+.2f}  {row['trade_off_share']:.2f}")


if __name__ == "__main__":
    main()
