"""The LM methods (HyperDPO, single objective, DPO-LS, DPO Soup, MO-DPO) on a tiny random Llama.

The toy preference conflicts on purpose: on every prompt ``harmless`` prefers response 0
("aaaa") and ``relevance`` response 1 ("bbbb"), so which response a model favours depends on the
trade-off ``w``, and a model that learnt something shows it at the vertices.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from moft.config import MoftConfig
from moft.llm.data import PreferenceGroups
from moft.llm.methods import ADAPTERS_FILE, META_FILE, LMFitContext, get_lm_method, new_policy
from moft.llm.train import LMPolicy, margin_loss, objective_betas, train_lm, weighted_loss
from moft.losses import dpo_loss, multi_objective_losses
from moft.models.lm import (
    load_causal_lm,
    load_lora_state,
    sequence_logprobs,
    tiny_causal_lm,
    trainable_parameters,
)

GRID = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
E1, E2 = GRID[0], GRID[2]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-lm")
    model, tokenizer = tiny_causal_lm(seed=0, init_std=0.3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def cfg(model_dir):
    return MoftConfig.model_validate({
        "track": "llm",
        "data": {"path": "x.jsonl", "layout": "hh-rlhf"},
        "objectives": [
            {"name": "harmless", "label": "harmless", "beta": 1.0},
            {"name": "relevance", "reward": "relevance", "beta": 1.0},
        ],
        "evaluate": {"grid": GRID.tolist()},
        "runtime": {"device": "cpu"},
        "llm": {
            "model": str(model_dir),
            "max_prompt_tokens": 16,
            "max_response_tokens": 8,
            "hpt": {"k": 2, "r": 2, "hidden": 16},
            "hyperdpo": {"epochs": 20, "batch_pairs": 4, "lr": 1e-2},
            "baselines": {"epochs": 3, "batch_pairs": 4, "lr": 1e-2},
            "generation": {"max_new_tokens": 4},
        },
    })


def toy_frame(n: int, first: int) -> pd.DataFrame:
    rows = [
        {"prompt_id": f"p{g}", "prompt": f"Q{g}?", "response_idx": r, "response": text,
         "pref_harmless": 1, "pref_relevance": -1}
        for g in range(first, first + n)
        for r, text in enumerate(["aaaa", "bbbb"])
    ]
    return pd.DataFrame(rows).astype({"pref_harmless": "int8", "pref_relevance": "int8"})


@pytest.fixture(scope="module")
def factory(model_dir):
    return lambda: load_causal_lm(model_dir)


@pytest.fixture(scope="module")
def splits(cfg, factory):
    train = PreferenceGroups.from_frame(toy_frame(16, 0), cfg)
    val = PreferenceGroups.from_frame(toy_frame(4, 100), cfg)
    model, tokenizer = factory()
    reference = LMPolicy(model, tokenizer, cfg.llm)  # the plain model: the reference policy
    train.ref_logps, val.ref_logps = reference.logprobs(train), reference.logprobs(val)
    return train, val


class Recorder:
    def __init__(self):
        self.rows: list[tuple[int, dict[str, float]]] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, metrics))

    def series(self, key: str) -> list[float]:
        return [m[key] for _, m in self.rows if key in m]


@pytest.fixture(scope="module")
def ctx(cfg, splits, factory):
    train, val = splits
    return LMFitContext(cfg, train, val, factory, GRID, log=Recorder())


@pytest.fixture(scope="module")
def fronts(ctx):
    """Every method fitted once (the soup and MO-DPO on the single models)."""
    out = {"hyperdpo": get_lm_method("hyperdpo").fit(ctx)}
    out["single_objective"] = get_lm_method("single_objective").fit(ctx)
    out["dpo_ls"] = get_lm_method("dpo_ls").fit(ctx)
    needs = {"single_objective": out["single_objective"]}
    singles_ctx = LMFitContext(ctx.cfg, ctx.train, ctx.val, ctx.policy_factory, GRID, prerequisites=needs)
    out["dpo_soup"] = get_lm_method("dpo_soup").fit(singles_ctx)
    out["mo_dpo"] = get_lm_method("mo_dpo").fit(singles_ctx)
    out["mopo"] = get_lm_method("mopo").fit(ctx)
    return out


def preference(front, groups, w) -> float:
    """Mean implicit-reward margin of response 0 over response 1 at ``w`` (> 0: "aaaa" preferred)."""
    ratio = front.logprobs(groups, np.asarray(w)) - groups.ref_logps
    return float((ratio[:, 0] - ratio[:, 1]).mean())


# ------------------------------------------------------------------------------------------
# the loss on LM log-probs


def test_listwise_loss_on_lm_logprobs_equals_trls_dpo_loss(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, tokenizer = tiny_causal_lm(seed=1, init_std=0.3)
    reference, _ = tiny_causal_lm(seed=0, init_std=0.3)
    pairs = Dataset.from_list([
        {"prompt": "Hello there", "chosen": " yes indeed", "rejected": " no"},
        {"prompt": "What is 2+2?", "chosen": " 4", "rejected": " five or so"},
    ])
    beta = 0.3
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, report_to="none", use_cpu=True, max_length=None)
    trainer = DPOTrainer(
        policy, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])  # rows [chosen.., rejected..]
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        tokens = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        # (pairs, [chosen, rejected])
        scores = torch.stack(sequence_logprobs(policy, *tokens).chunk(2), dim=-1)
        base = torch.stack(sequence_logprobs(reference, *tokens).chunk(2), dim=-1)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])[..., None]  # (B, 2, m = 1)
    valid, mask = torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)
    ours = multi_objective_losses(scores, base, target, valid, mask, torch.tensor([beta])).mean()
    assert trl_loss.item() > 0.01  # the two models differ: a non-trivial value
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)


def test_mo_dpo_margin_loss_is_the_pairwise_formula(ctx, fronts):
    policy = fronts["mo_dpo"].policy
    policy.load_adapter(fronts["mo_dpo"].adapter_at(GRID[1]))  # a trained adapter
    train = ctx.train
    idx = np.array([0, 3, 5])
    w = np.array([0.3, 0.7])  # objective i = 1 (relevance); the margin comes from the harmless model
    betas = objective_betas(ctx.cfg)
    with torch.no_grad():
        single_h = fronts["single_objective"].logprobs(train.subset(idx), E1)
        others = 0.3 * (single_h - train.ref_logps[idx])
        got = margin_loss(policy, train, idx, w, others, betas)
        s = policy.group_logprobs(train, idx)
    r = (s - train.ref_logps[idx] - others) / 0.7
    # relevance prefers response 1: chosen = slot 1; DPO with both references at 0
    expected = dpo_loss(r[:, 1], r[:, 0], torch.zeros(3), torch.zeros(3), beta=1.0).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_weighted_loss_gives_gradients_to_lora_and_both_hpt_mlps_only(ctx):
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    policy = new_policy(ctx, seed=0, hyper=True)
    assert torch.equal(torch.rand(1), expected_next)  # seeded init leaves the global generator alone
    policy.train(True)
    w = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    loss = weighted_loss(policy, ctx.train, np.array([0, 1]), w, objective_betas(ctx.cfg))
    loss.backward()
    named = dict(policy.model.named_parameters())
    lora_b = [p for n, p in named.items() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    for name, p in policy.hpt.named_parameters():  # prefix, mlp_a.{0,2}, mlp_b.{0,2}
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    frozen = [p for n, p in named.items() if "lora_" not in n]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


# ------------------------------------------------------------------------------------------
# the training loop


def test_train_loop_validates_per_epoch_and_at_max_steps_and_restores_the_best(cfg, splits):
    train, _ = splits
    weight = torch.nn.Linear(1, 1, bias=False)
    policy = LMPolicy(weight, tokenizer=None, llm=cfg.llm)
    scripted = iter([3.0, 1.0, 2.0])
    seen: list[float] = []

    def validate() -> float:
        seen.append(weight.weight.item())
        return next(scripted)

    log = Recorder()
    update = {"epochs": 3, "max_steps": 10, "batch_pairs": 4, "lr": 0.1, "seed": 3}
    settings = cfg.llm.baselines.model_copy(update=update)
    batches: list[np.ndarray] = []

    def step_loss(idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        batches.append(idx)
        return (weight.weight - 5.0).pow(2).sum()

    result = train_lm(policy, train, settings, step_loss, validate, log)
    # 16 groups / 4 per step = 4 steps an epoch: validation after steps 4, 8 and 10 (max_steps)
    assert [row["step"] for row in result.history] == [4, 8, 10] and result.steps == 10
    assert log.series("train_loss")[-1] < log.series("train_loss")[0]
    assert [s for s, m in log.rows if "train_loss" in m] == list(range(1, 11))
    assert result.best_step == 8 and weight.weight.item() == seen[1]  # the second validation's state
    assert len(set(seen)) == 3  # it did train between validations
    # shuffled by the loop's own generator, seeded from the settings
    assert np.array_equal(np.concatenate(batches[:4]), np.random.default_rng(3).permutation(16))
    assert {len(b) for b in batches} == {4}


def test_train_loop_with_validate_every_keeps_the_start_when_training_never_helps(cfg, splits):
    train, _ = splits
    weight = torch.nn.Linear(1, 1, bias=False)
    start = weight.weight.item()
    policy = LMPolicy(weight, tokenizer=None, llm=cfg.llm)
    scripted = iter([1.0, 2.0, 1.5, 3.0, 4.0])
    update = {"epochs": 3, "max_steps": 10, "batch_pairs": 4, "lr": 0.1, "validate_every": 3}
    settings = cfg.llm.baselines.model_copy(update=update)
    result = train_lm(
        policy, train, settings, lambda idx, rng: (weight.weight - 5.0).pow(2).sum(), lambda: next(scripted)
    )
    # validation at the start, after steps 3, 6, 9 and at the end (10); epochs end at 4 and 8
    assert [row["step"] for row in result.history] == [0, 3, 6, 9, 10]
    assert result.best_step == 0 and weight.weight.item() == start  # the start was never beaten


# ------------------------------------------------------------------------------------------
# HyperDPO


def test_hyperdpo_learns_the_trade_off_through_the_prefix(ctx, fronts):
    front = fronts["hyperdpo"]
    losses = ctx.log.series("train_loss")
    assert len(losses) == 80  # 20 epochs x 4 steps
    assert np.mean(losses[-20:]) < np.mean(losses[:8]) - 0.3
    # harmless prefers response 0, relevance response 1: the vertices disagree, the middle lies between
    at_e1, mid, at_e2 = (preference(front, ctx.val, w) for w in GRID)
    assert at_e1 > 0.5 and at_e2 < -0.5 and at_e2 < mid < at_e1
    assert front.accounting.n_jobs == 1
    assert front.accounting.trainable_params == trainable_parameters(front.policy.model, front.policy.hpt) > 0
    best = min(row["val_loss"] for row in front.history)
    assert best < front.history[0]["val_loss"] and best < math.log(2)


# ------------------------------------------------------------------------------------------
# baselines


def test_single_models_learn_their_objective_and_dpo_ls_trains_every_grid_point(ctx, fronts):
    singles, ls = fronts["single_objective"], fronts["dpo_ls"]
    assert preference(singles, ctx.val, E1) > 0 > preference(singles, ctx.val, E2)
    assert singles.accounting.n_jobs == 2 and ls.accounting.n_jobs == 3
    assert len(ctx.log.series("dpo_ls_job_seconds")) == 3 and len(ctx.log.series("job2_train_loss")) >= 12
    per_model = trainable_parameters(singles.policy.model, singles.policy.hpt)  # LoRA + prompt tuning
    assert ls.accounting.trainable_params == 3 * per_model
    # same seed, init, batches and loss: DPO-LS at a vertex is exactly the single model
    for vertex in (E1, E2):
        a, b = ls.adapter_at(vertex), singles.adapter_at(vertex)
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="one model per trained weight vector"):
        ls.logprobs(ctx.val, np.array([0.3, 0.7]))


def test_soup_is_exactly_the_single_model_at_each_vertex(ctx, fronts):
    soup, singles = fronts["dpo_soup"], fronts["single_objective"]
    for vertex in (E1, E2):
        assert torch.equal(soup.logprobs(ctx.val, vertex), singles.logprobs(ctx.val, vertex))
    middle = soup.logprobs(ctx.val, GRID[1])
    assert not torch.equal(middle, singles.logprobs(ctx.val, E1))
    assert not torch.equal(middle, singles.logprobs(ctx.val, E2))
    assert soup.accounting == singles.accounting  # no jobs of its own
    assert soup.generate(["Q1?"], E2) == singles.generate(["Q1?"], E2)


def test_mo_dpo_reuses_the_single_models_at_vertices_and_trains_inside(ctx, fronts):
    mo, singles = fronts["mo_dpo"], fronts["single_objective"]
    for vertex in (E1, E2):
        assert torch.equal(mo.logprobs(ctx.val, vertex), singles.logprobs(ctx.val, vertex))
    inside = mo.logprobs(ctx.val, GRID[1])
    assert not torch.equal(inside, singles.logprobs(ctx.val, E1))
    assert [job["job"] for job in mo.history] == [1]  # one job: the interior point
    acc = mo.accounting
    assert acc.n_jobs == 3 and acc.train_seconds > singles.accounting.train_seconds
    assert acc.trainable_params == singles.accounting.trainable_params + trainable_parameters(mo.policy.model, mo.policy.hpt)


def test_mopo_clones_the_constrained_policy_of_each_grid_point(ctx, fronts):
    """Toy data: harmless (primary) prefers response 0, relevance response 1. At w_2 = 0 the
    constraint is slack (lambda = 0) and MOPO follows harmlessness; at w_2 = 1 it must reach
    relevance's own optimum and follows relevance."""
    mopo = fronts["mopo"]
    assert preference(mopo, ctx.val, E1) > 0 > preference(mopo, ctx.val, E2)
    facts = mopo.extra["mopo"]
    assert [f["active"] for f in facts] == [[False], [True], [True]]
    assert facts[0]["multipliers"][0] < 1e-12 and facts[2]["multipliers"][0] > facts[1]["multipliers"][0]
    assert all(f["values"][1] >= f["thresholds"][0] - 1e-4 for f in facts)  # b = hi converges slowly
    assert mopo.accounting.n_jobs == len(GRID)
    assert mopo.accounting.trainable_params == len(GRID) * trainable_parameters(mopo.policy.model, mopo.policy.hpt)


def test_methods_that_need_single_models_say_so(ctx):
    with pytest.raises(ValueError, match="single_objective"):
        get_lm_method("mo_dpo").fit(ctx)
    with pytest.raises(KeyError, match="dpo_ls"):
        get_lm_method("dpo-ls")


# ------------------------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize("name", ["hyperdpo", "single_objective", "dpo_ls", "dpo_soup", "mo_dpo", "mopo"])
def test_save_load_round_trip(name, ctx, fronts, factory, tmp_path):
    front = fronts[name]
    front.save(tmp_path / name)
    loaded = get_lm_method(name).load(tmp_path / name, ctx.cfg, factory)
    assert type(loaded) is type(front) and loaded.accounting == front.accounting
    prompts = ["Q1?", [{"role": "user", "content": "Q2?"}]]
    weights = GRID if name != "single_objective" else [E1, E2]
    for w in weights:
        assert torch.equal(loaded.logprobs(ctx.val, w), front.logprobs(ctx.val, w))
        texts = loaded.generate(prompts, w)
        assert texts == front.generate(prompts, w)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_loading_checks_shapes_methods_and_objectives_naming_the_file(ctx, fronts, factory, tmp_path):
    fronts["dpo_ls"].save(tmp_path / "ls")
    weights = tmp_path / "ls" / ADAPTERS_FILE
    state = load_file(str(weights))
    key = next(k for k in state if k.startswith("1."))
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=rf"{ADAPTERS_FILE}: adapter 1.*shape"):
        get_lm_method("dpo_ls").load(tmp_path / "ls", ctx.cfg, factory)
    with pytest.raises(ValueError, match=rf"{META_FILE}.*'dpo_ls', not 'dpo_soup'"):
        get_lm_method("dpo_soup").load(tmp_path / "ls", ctx.cfg, factory)
    other = ctx.cfg.model_copy(update={"objectives": list(reversed(ctx.cfg.objectives))})
    fronts["hyperdpo"].save(tmp_path / "hyper")
    with pytest.raises(ValueError, match=r"hyper_lm.json.*\['harmless', 'relevance'\]"):
        get_lm_method("hyperdpo").load(tmp_path / "hyper", other, factory)


def test_training_leaves_the_reference_policy_untouched(ctx, fronts, factory):
    """Methods train LoRA on their own copy: a fresh factory model still scores as the reference."""
    singles = fronts["single_objective"]
    model, tokenizer = factory()
    fresh = LMPolicy(model, tokenizer, ctx.cfg.llm).logprobs(ctx.val)
    assert torch.equal(fresh, ctx.val.ref_logps)
    assert (singles.logprobs(ctx.val, E1) - fresh).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------
# one architecture and one starting policy for every method (the paper's fair comparison)


def test_baselines_get_prompt_tuning_that_starts_where_hyperdpos_prefix_starts(ctx, fronts):
    hyper, plain = new_policy(ctx, seed=0, hyper=True), new_policy(ctx, seed=0)
    assert plain.hpt is not None and not plain.conditioned and hyper.conditioned
    assert torch.equal(plain.hpt.prefix, hyper.hpt.prefix)  # the same P from the same seed
    assert not hasattr(plain.hpt.mlp_a, "weight") and plain.hpt.mlp_a is None  # no w-MLPs
    w = torch.tensor([0.5, 0.5])
    # HPT's mask starts near all ones: the untrained policies agree to within HPT's small w-term
    start_hyper, start_plain = hyper.logprobs(ctx.val, w), plain.logprobs(ctx.val)
    assert (start_hyper - start_plain).abs().max() < 0.05 * start_plain.abs().max()
    with pytest.raises(ValueError, match="pass w=None"):
        plain.logprobs(ctx.val, w)
    # the prefix is trained per fixed-weight model and saved, swapped and interpolated with LoRA
    soup, singles = fronts["dpo_soup"], fronts["single_objective"]
    p1, p2 = (singles.adapter_at(e)["prompt.prefix"] for e in (E1, E2))
    assert not torch.equal(p1, p2)
    assert torch.allclose(soup.adapter_at(GRID[1])["prompt.prefix"], 0.5 * p1 + 0.5 * p2)
    lora_only = {k: v for k, v in singles.adapter_at(E1).items() if not k.startswith("prompt.")}
    with pytest.raises(KeyError, match="lacks prompt-tuning keys"):
        singles.policy.load_adapter(lora_only)


def test_baselines_without_prompt_tuning_are_lora_only(ctx):
    cfg = ctx.cfg.model_copy(deep=True)
    cfg.llm.baseline_prompt_tuning = False
    plain_ctx = LMFitContext(cfg, ctx.train, ctx.val, ctx.policy_factory, GRID)
    policy = new_policy(plain_ctx, seed=0)
    assert policy.hpt is None and not policy.conditioned
    assert not any(k.startswith("prompt.") for k in policy.adapter_state())
    # no prefix and a zero LoRA B: the untrained policy is the reference policy exactly
    assert torch.equal(policy.logprobs(ctx.val), ctx.val.ref_logps)
