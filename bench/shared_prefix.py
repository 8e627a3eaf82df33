"""Benchmark: scoring each prompt once for all its responses (shared-prefix log-probs).

Run:  python bench/shared_prefix.py [--threads N] [--batches 6] [--out FILE]

Every preference and online method scores responses that share a prompt: a DPO pair's chosen and
rejected answer, an online step's ``k`` samples of one conditioned prompt. The flat path
(:func:`moft.models.lm.sequence_logprobs` on :func:`~moft.models.lm.encode_pairs`) runs the prompt
once per response; the shared path (:func:`~moft.models.lm.shared_prefix_logprobs` on
:func:`~moft.models.lm.encode_groups`, what :meth:`LMPolicy.group_logprobs` uses) runs it once per
prompt and gathers its key/value cache to the responses. On the embedded SmolLM2-135M with the
configured LoRA, in the same process, this times both paths on the batches the pipeline scores:

- ``llm-online``: the training prompts with the weight instruction (``w`` drawn as MO-ODPO draws
  it) and ``samples_per_prompt`` samples of the reference policy each, ``prompts_per_step`` per
  batch: the anchor's log-probs (no gradients) and the policy's forward + backward of one step;
- ``llm-hh``: the training split's preference pairs, ``llm.baselines.batch_pairs`` per batch,
  forward + backward, with LoRA alone and with HyperDPO's HPT prefix (``w`` per pair) in front;
- the rollout's sampling (``llm-online``): each prompt repeated ``samples_per_prompt`` times vs
  each prompt prefilled once (:func:`moft.models.hpt.generate_with_prefix` ``num_samples``), with
  the number of identical samples.

It reports seconds per batch, the ratio shared / flat (below 1 = faster), the positions each path
runs, and the largest difference of the log-probs and of the LoRA gradients between the paths.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ltr_methods import header, profile_parser, say, setup  # noqa: E402

from moft.config import load_config  # noqa: E402
from moft.io import atomic_write_json  # noqa: E402
from moft.llm.stages import load_groups, load_policy  # noqa: E402
from moft.llm.train import new_lora  # noqa: E402
from moft.models.hpt import (  # noqa: E402
    HyperPromptTuning,
    forward_logprobs,
    generate_with_prefix,
    shared_forward_logprobs,
)
from moft.models.lm import encode_groups, encode_pairs, sequence_logprobs, shared_prefix_logprobs  # noqa: E402
from moft.online.methods import reference_samples  # noqa: E402
from moft.online.prefix import sample_weights  # noqa: E402
from moft.online.rollout import conditioned_prompts  # noqa: E402
from moft.stages import prepare, validate  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "shared_prefix.json"


def online_batches(cfg, n_batches: int) -> list[tuple[list, list[str], list[int]]]:
    """``(prompts, responses, rows)`` batches shaped like MO-ODPO's steps: conditioned training
    prompts with ``samples_per_prompt`` reference-policy samples each."""
    settings = cfg.llm.online
    train = load_groups(cfg, "train", with_ref=False)
    rng = np.random.default_rng(settings.seed)
    size = settings.prompts_per_step
    idx = rng.permutation(len(train))[: n_batches * size]
    weights = sample_weights(rng, settings.alpha, len(cfg.objective_names), len(idx), cfg.llm.prefix.step)
    _, tokenizer = load_policy(cfg)
    inputs = conditioned_prompts([train.prompts[i] for i in idx], weights, cfg.objective_names,
                                 cfg.llm.prefix.build(), tokenizer, cfg.llm)
    flat_prompts, flat = reference_samples(cfg, lambda: load_policy(cfg), inputs)
    k = settings.samples_per_prompt
    out = []
    for b in range(n_batches):
        rows = slice(b * size * k, (b + 1) * size * k)
        out.append((inputs[b * size : (b + 1) * size], flat[rows], [i // k for i in range(size * k)]))
    assert all(p == q for p, q in zip(flat_prompts[::k], inputs))
    return out


def offline_batches(cfg, n_batches: int) -> list[tuple[list, list[str], list[int]]]:
    """``(prompts, responses, rows)`` batches of the training split's preference groups, as many
    per batch as the DPO baselines take per step (``llm.baselines.batch_pairs``)."""
    train = load_groups(cfg, "train", with_ref=False)
    size = cfg.llm.baselines.batch_pairs
    out = []
    for b in range(n_batches):
        idx = np.arange(b * size, (b + 1) * size) % len(train)
        prompts, responses, rows, _ = train.flat(idx)
        out.append(([train.prompts[i] for i in idx], responses, rows.tolist()))
    return out


def time_paths(cfg, batches, grad: bool, hpt: bool = False) -> dict:
    """Seconds per batch of the flat and the shared path, positions, largest differences; with
    ``hpt``, HyperDPO's prefix (virtual tokens from a ``w`` per group) in front of every prompt."""
    model, tokenizer = load_policy(cfg)
    model = new_lora(model, cfg.llm.lora, 0)
    for name, p in model.named_parameters():  # B = 0 hides the adapter from the gradient check
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
    prefix = HyperPromptTuning.for_model(model, len(cfg.objective_names), init_std=0.3) if hpt else None
    m, groups = len(cfg.objective_names), max(len(b[0]) for b in batches)
    weights = torch.as_tensor(np.random.default_rng(0).dirichlet(np.ones(m), groups), dtype=torch.float32)
    llm = cfg.llm
    budgets = (llm.max_prompt_tokens, llm.max_response_tokens, llm.chat_template)
    seconds = {"flat": 0.0, "shared": 0.0}
    positions = {"flat": 0, "shared": 0}
    diff_logp, diff_grad = 0.0, 0.0
    model.train(grad)
    warm = batches[0]
    with torch.no_grad():  # first calls pay one-off allocation costs; time neither path with them
        sequence_logprobs(model, **encode_pairs(tokenizer, [warm[0][g] for g in warm[2]], warm[1], *budgets))
        shared_prefix_logprobs(model, **encode_groups(tokenizer, *warm, *budgets))
    for prompts, responses, rows in batches:
        flat_batch = encode_pairs(tokenizer, [prompts[g] for g in rows], responses, *budgets)
        shared_batch = encode_groups(tokenizer, prompts, responses, rows, *budgets)
        positions["flat"] += int(flat_batch["input_ids"].numel())
        positions["shared"] += int(shared_batch["prefix_ids"].numel() + shared_batch["tail_ids"].numel())
        results = {}
        for path in ("flat", "shared"):
            model.zero_grad(set_to_none=True)
            if prefix is not None:
                prefix.zero_grad(set_to_none=True)
            start = time.perf_counter()
            with torch.set_grad_enabled(grad):
                if prefix is not None:
                    w = weights[: len(prompts)]
                    if path == "flat":
                        tokens = (flat_batch["input_ids"], flat_batch["attention_mask"], flat_batch["response_mask"])
                        logps = forward_logprobs(model, prefix, *tokens, w[torch.tensor(rows)])
                    else:
                        logps = shared_forward_logprobs(model, prefix, **shared_batch, w=w)
                elif path == "flat":
                    logps = sequence_logprobs(model, **flat_batch)
                else:
                    logps = shared_prefix_logprobs(model, **shared_batch)
                if grad:
                    logps.sum().backward()
            seconds[path] += time.perf_counter() - start
            params = [*model.parameters(), *(prefix.parameters() if prefix is not None else [])]
            grads = [p.grad.clone() for p in params if p.grad is not None] if grad else []
            results[path] = (logps.detach(), grads)
        diff_logp = max(diff_logp, float((results["flat"][0] - results["shared"][0]).abs().max()))
        for a, b in zip(results["flat"][1], results["shared"][1]):
            diff_grad = max(diff_grad, float((a - b).abs().max() / a.abs().max().clamp(min=1e-12)))
    n = len(batches)
    out = {
        "batches": n,
        "rows_per_batch": len(batches[0][1]),
        "seconds_per_batch": {k: round(v / n, 3) for k, v in seconds.items()},
        "ratio_shared_to_flat": round(seconds["shared"] / seconds["flat"], 3),
        "positions": positions,
        "max_abs_logprob_difference": diff_logp,
    }
    if grad:
        out["max_relative_gradient_difference"] = diff_grad
    return out


def time_generation(cfg, batches) -> dict:
    """Seconds per batch of sampling ``samples_per_prompt`` responses per prompt (the rollout's
    settings) with each prompt repeated vs each prompt prefilled once; how many samples agree."""
    model, tokenizer = load_policy(cfg)
    model.train(False)
    settings, llm = cfg.llm.online, cfg.llm
    k = settings.samples_per_prompt
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=True, temperature=settings.temperature,
                  chat_template=llm.chat_template, max_prompt_tokens=llm.max_prompt_tokens)
    generate_with_prefix(model, None, tokenizer, batches[0][0][:1], seed=0, **kwargs)  # warm-up
    seconds = {"repeated": 0.0, "shared": 0.0}
    same = total = 0
    for b, (prompts, _, _) in enumerate(batches):
        start = time.perf_counter()
        repeated = generate_with_prefix(model, None, tokenizer, [p for p in prompts for _ in range(k)], seed=b, **kwargs)
        seconds["repeated"] += time.perf_counter() - start
        start = time.perf_counter()
        shared = generate_with_prefix(model, None, tokenizer, prompts, seed=b, num_samples=k, **kwargs)
        seconds["shared"] += time.perf_counter() - start
        same += sum(a == c for a, c in zip(repeated, shared))
        total += len(shared)
    n = len(batches)
    return {
        "batches": n,
        "samples_per_batch": total // n,
        "seconds_per_batch": {key: round(v / n, 3) for key, v in seconds.items()},
        "ratio_shared_to_repeated": round(seconds["shared"] / seconds["repeated"], 3),
        "identical_samples": f"{same}/{total}",
    }


def main() -> None:
    parser = profile_parser(__doc__, "llm-online", DEFAULT_OUT)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--profiles", nargs="+", default=["llm-online", "llm-hh"], choices=["llm-online", "llm-hh"])
    args = parser.parse_args()
    overrides, start = setup(args.threads, args.overrides)
    result = {**header(), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="moft-bench-shared-") as tmp:
        scratch = Path(tmp)
        for profile, make, grads in (("llm-online", online_batches, (False, True)),
                                     ("llm-hh", offline_batches, (True, "hpt"))):
            if profile not in args.profiles:
                continue
            cfg = load_config(profile, [f"artifacts_dir={scratch / profile}", f"reports_dir={scratch / 'reports'}",
                                        "tracking.enabled=false", *overrides], params_file=scratch / "none.yaml")
            for stage in (prepare, validate):
                say(f"{profile}: {stage.__name__}", start)
                stage(cfg)
            say(f"{profile}: batches", start)
            batches = make(cfg, args.batches)
            if profile == "llm-online":
                case = f"{profile}: sampling the rollout ({cfg.llm.online.samples_per_prompt} per prompt)"
                say(case, start)
                result["cases"][case] = time_generation(cfg, batches)
                print(result["cases"][case], flush=True)
            for grad in grads:
                case = {False: "forward, no gradients (anchor)", True: "forward + backward (LoRA)",
                        "hpt": "forward + backward (LoRA + HPT prefix, one w per pair)"}[grad]
                case = f"{profile}: {case}"
                say(case, start)
                result["cases"][case] = time_paths(cfg, batches, bool(grad), hpt=grad == "hpt")
                print(result["cases"][case], flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(args.out, result)
    say(f"wrote {args.out}", start)


if __name__ == "__main__":
    main()
