"""Benchmark (issue 7): what the weight instruction alone does to the untrained policy.

Run:  python bench/online_prefix.py [--profile llm-online] [--set k=v ...] [--threads N] [--out FILE]

A prompt-conditioned method (MO-ODPO, P-MORL) starts from the reference policy reading
``p(w) + x``. Before any training, this script decodes greedily (the generation front's settings)
on the evaluate stage's held-out generation prompts, with no instruction and with each instruction
variant below at ``w = (1, 0), (0.5, 0.5), (0, 1)``, and scores the answers with the online reward
set (training-response statistics). An instruction the model cannot read shows up as a reward
change at every ``w`` (the prefix's own effect) and no change across ``w`` (no zero-shot steering).
Per variant it also counts the prompts whose question loses its start to the instruction at
``llm.max_prompt_tokens`` (``questions_cut``): such a cut, not the instruction, costs relevance.
"""

from __future__ import annotations

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
from moft.llm.stages import _generation_prompts, load_groups, load_policy  # noqa: E402
from moft.methods import Accounting  # noqa: E402
from moft.online.front import OnlineFront  # noqa: E402
from moft.online.methods import online_task  # noqa: E402
from moft.online.prefix import prompt_budget  # noqa: E402
from moft.online.rollout import new_online_policy  # noqa: E402
from moft.rewards.length import word_counts  # noqa: E402
from moft.stages import evaluation_grid, prepare, validate  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "online_prefix.json"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."
VARIANTS = {
    "system (paper's instruction as the system message)": ["llm.prefix.position=system"],
    "user (paper's instruction before the user's turn)": ["llm.prefix.position=user"],
    "system (SmolLM2's default system prompt, then the instruction)": [
        "llm.prefix.position=system",
        f"llm.prefix.template='{DEFAULT_SYSTEM} Objective weights: {{weights}}.'",
    ],
    "user (compact: '(relevance: 0.3, conciseness: 0.7) ')": [
        "llm.prefix.position=user", "llm.prefix.template='({weights}) '",
    ],
}
WEIGHTS = ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0])


def main() -> None:
    parser = profile_parser(__doc__, "llm-online", DEFAULT_OUT)
    args = parser.parse_args()
    overrides, start = setup(args.threads, args.overrides)
    result = {**header(), "profile": args.profile, "weights": [list(w) for w in WEIGHTS], "variants": {}}
    with tempfile.TemporaryDirectory(prefix="moft-bench-prefix-") as tmp:
        scratch = Path(tmp)
        common = [f"artifacts_dir={scratch / 'artifacts'}", f"reports_dir={scratch / 'reports'}",
                  "tracking.enabled=false", *overrides]
        cfg = load_config(args.profile, common, params_file=scratch / "none.yaml")
        for stage in (prepare, validate):
            say(stage.__name__, start)
            stage(cfg)
        test = load_groups(cfg, "test", with_ref=False)
        prompts = [test.prompts[i] for i in _generation_prompts(cfg, test)]
        result["prompts"] = len(prompts)
        # one reward set and one untrained policy (LoRA B = 0: exactly the reference policy) for all
        # variants; a variant changes only the instruction
        ctx = LMFitContext(cfg, load_groups(cfg, "train", with_ref=False), test, lambda: load_policy(cfg),
                           evaluation_grid(cfg))
        task = online_task(ctx)
        policy = new_online_policy(task, 0)
        result["objectives"] = task.names
        for name, variant in [("none", None), *VARIANTS.items()]:
            say(f"{name}", start)
            rows = []
            if variant is None:
                answers = [policy.generate(prompts)]
            else:
                prefix = load_config(args.profile, [*common, *variant], params_file=scratch / "none.yaml").llm.prefix
                front = OnlineFront(policy, task.names, prefix.build(), Accounting(0.0, 1, 0))
                answers = [front.generate(prompts, np.array(w)) for w in WEIGHTS]
                result.setdefault("instruction_example", {})[name] = front.inputs(prompts[:1], np.array([0.3, 0.7]))[0]
            for texts in answers:
                rows.append({
                    "rewards": task.rewards.score(prompts, texts).mean(0).tolist(),
                    "mean_words": float(word_counts(texts).mean()),
                    "example": texts[0],
                })
            entry = {"overrides": variant or [], "points": rows}
            if variant is not None:  # how many of the prompts lose the start of their question to it
                budget = prompt_budget(prompts, task.names, front.prefix, policy.tokenizer, cfg.llm.max_prompt_tokens,
                                       cfg.llm.chat_template)
                entry["questions_cut"] = budget.cut
                entry["max_prompt_tokens_needed"] = budget.needed
            result["variants"][name] = entry
            result["elapsed_seconds"] = time.perf_counter() - start
            atomic_write_json(args.out, result)
    print(f"\n{args.profile}: greedy answers of the untrained policy ({' / '.join(result['objectives'])})")
    for name, entry in result["variants"].items():
        cells = "  ".join("(" + ", ".join(f"{x:+.2f}" for x in p["rewards"]) + f"; {p['mean_words']:.1f} words)"
                          for p in entry["points"])
        cut = f" [{entry['questions_cut']} of {result['prompts']} questions cut]" if "questions_cut" in entry else ""
        print(f"  {name}: {cells}{cut}")


if __name__ == "__main__":
    main()
