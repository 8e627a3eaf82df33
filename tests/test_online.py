"""MO-ODPO, its online baselines, the weight prefix, the reward set and the TRL reward model, on a
tiny random Llama.

The tiny model samples from a four-token alphabet (``a``, ``b``, ``c``, space) and its eos: its
generation config suppresses every other token, so samples are real words of varying number and
decode/re-encode exactly, and the real ``length`` (words) and ``conciseness`` (-log(1 + words))
rewards conflict on them.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from moft.config import ConfigError, MoftConfig, OnlineSettings, load_config
from moft.llm.data import PreferenceGroups
from moft.llm.stages import load_groups, prepare
from moft.llm.train import LMPolicy
from moft.models.lm import load_causal_lm, prompt_token_ids, tiny_causal_lm
from moft.online.baselines import fit_odpo_soup, fit_pmorl, load_odpo_soup, pmorl_loss, reinforce_loss
from moft.online.front import ADAPTER_FILE, META_FILE, OnlineFront, parse_weights, steer
from moft.online.mo_odpo import fit_mo_odpo, mo_odpo_loss, preference_pairs
from moft.online.prefix import (
    DEFAULT_TEMPLATE,
    PromptCutWarning,
    WeightPrefix,
    conditioned_prompt,
    prompt_budget,
    quantise_weights,
    sample_weights,
    with_weights,
)
from moft.online.ric import RewardPrefix, RicFront, fit_ric, pareto_set, ric_targets
from moft.online.rewards import RewardSet
from moft.online.rollout import (
    OnlineTask,
    Rollout,
    new_online_policy,
    relabel_weights,
    relabelled,
    response_groups,
    rollout,
    sequence_scores,
    warn_cut_prompts,
)
from moft.rewards import RewardNormaliser, get_reward
from moft.rewards.trained import TrainedReward, pairs_from_groups, train_reward_model

NAMES = ["length", "conciseness"]
E1, E2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
ALPHABET = ["a", "b", "c", "Ġ", "<|im_end|>"]  # byte-level tokens: Ġ is the space
HEAD = DEFAULT_TEMPLATE.split("{weights}")[0]  # "[Begin System Instruction]\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-lm")
    model, tokenizer = tiny_causal_lm(seed=0)
    keep = set(tokenizer.convert_tokens_to_ids(ALPHABET))
    model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i not in keep]
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def cfg(model_dir):
    return MoftConfig.model_validate({
        "track": "llm",
        "data": {"path": "x.jsonl", "layout": "hh-rlhf"},
        "objectives": [{"name": "length", "reward": "length"}, {"name": "conciseness", "reward": "conciseness"}],
        "evaluate": {"grid": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]},
        "runtime": {"device": "cpu"},
        "llm": {
            "model": str(model_dir),
            "max_prompt_tokens": 128,  # the byte-level instruction alone takes ~90 tokens
            "max_response_tokens": 16,
            "lora": {"r": 4, "alpha": 8},
            "generation": {"max_new_tokens": 12, "do_sample": True, "temperature": 1.0, "seed": 0},
        },
    })


@pytest.fixture(scope="module")
def factory(model_dir):
    return lambda: load_causal_lm(model_dir)


@pytest.fixture(scope="module")
def reference(cfg, factory):
    model, tokenizer = factory()
    return LMPolicy(model, tokenizer, cfg.llm)


TEST_PROMPTS = [f"T{i}!" for i in range(32)]


@pytest.fixture(scope="module")
def rewards(reference):
    """Normalised with statistics of the reference policy's responses to (training) prompts."""
    responses = reference.generate(TEST_PROMPTS)
    return RewardSet.fit(NAMES, [get_reward("length"), get_reward("conciseness")], TEST_PROMPTS, responses)


def make_task(cfg, factory, rewards, **kw) -> OnlineTask:
    return OnlineTask(cfg, [f"Q{i}?" for i in range(8)], factory, rewards, **kw)


SETTINGS = OnlineSettings(steps=30, prompts_per_step=8, lr=3e-2, beta=1.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def fronts(cfg, factory, rewards):
    """MO-ODPO with weights drawn near each vertex: ``length`` favoured, then ``conciseness``."""
    task = make_task(cfg, factory, rewards)
    return {
        "length": fit_mo_odpo(task, SETTINGS.model_copy(update={"alpha": [8.0, 0.1]})),
        "conciseness": fit_mo_odpo(task, SETTINGS.model_copy(update={"alpha": [0.1, 8.0]})),
    }


def words(texts: list[str]) -> float:
    return float(np.mean([len(t.split()) for t in texts]))


# ------------------------------------------------------------------------------------------
# weights and the prefix


def test_quantised_weights_lie_on_the_grid_and_sum_to_one():
    rng = np.random.default_rng(0)
    raw = rng.dirichlet([0.5, 1.0, 2.0], size=200)
    q = quantise_weights(raw)
    units = np.rint(q * 10)
    assert np.allclose(q * 10, units, atol=1e-12) and (units.sum(1) == 10).all()
    assert np.allclose(q.sum(1), 1.0, atol=1e-12) and (np.abs(q - raw) < 0.1 + 1e-12).all()
    assert quantise_weights([0.33, 0.67]).tolist() == [0.3, 0.7]
    assert quantise_weights([1 / 3, 1 / 3, 1 / 3]).tolist() == [0.4, 0.3, 0.3]  # largest remainder, ties to index
    grid = np.array([[k / 10, 1 - k / 10] for k in range(11)])
    assert np.allclose(quantise_weights(grid), grid, rtol=0, atol=1e-15)  # the evaluation grid maps to itself
    assert quantise_weights([0.3, 0.7], step=0.25).tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match=r"w\[1\] = -0.1 is negative"):
        quantise_weights([1.1, -0.1])
    with pytest.raises(ValueError, match="sums to 0.9"):
        quantise_weights([0.4, 0.5])
    with pytest.raises(ValueError, match="must divide 1"):
        quantise_weights([0.5, 0.5], step=0.3)


def test_sampled_weights_are_dirichlet_draws_quantised_and_seeded():
    w = sample_weights(np.random.default_rng(1), 1.0, 3, 500)
    assert w.shape == (500, 3) and np.allclose(w.sum(1), 1) and np.allclose(w * 10, np.rint(w * 10))
    assert np.array_equal(w, sample_weights(np.random.default_rng(1), 1.0, 3, 500))
    assert abs(w.mean() - 1 / 3) < 0.02  # Dir(1) is symmetric
    vertex = lambda x: float((x.max(1) == 1.0).mean())  # noqa: E731
    sparse, dense = (sample_weights(np.random.default_rng(2), a, 2, 500) for a in (0.2, 5.0))
    assert vertex(sparse) > 0.4 > 0.05 > vertex(dense)  # alpha < 1 favours vertices, > 1 the centre
    skewed = sample_weights(np.random.default_rng(3), (8.0, 0.1), 2, 200)
    assert skewed[:, 0].mean() > 0.9
    with pytest.raises(ValueError, match="one per objective"):
        sample_weights(np.random.default_rng(0), (1.0, 1.0, 1.0), 2, 4)


def test_prefix_is_the_papers_instruction_for_text_and_a_system_message_for_chat():
    text = with_weights("How are you?", ["Helpfulness", "Harmlessness"], [0.33, 0.67])
    instruction = "[Begin System Instruction]\nHelpfulness: 0.3, Harmlessness: 0.7\n[End System Instruction]\n"
    assert text == instruction + "How are you?"
    chat = [{"role": "user", "content": "Hi"}]
    out = with_weights(chat, NAMES, E1)
    assert out == [
        {"role": "system",
         "content": "[Begin System Instruction]\nlength: 1.0, conciseness: 0.0\n[End System Instruction]"},
        {"role": "user", "content": "Hi"},
    ]
    assert chat == [{"role": "user", "content": "Hi"}]  # not modified
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert with_weights(system, NAMES, E2)[0]["content"].endswith("[End System Instruction]\nBe brief.")
    dialogue = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}]
    in_user = with_weights(dialogue, NAMES, E2, WeightPrefix(position="user"))
    assert in_user[:2] == dialogue[:2] and len(in_user) == 3  # no system message: the default one stays
    assert in_user[2] == {"role": "user", "content": "[Begin System Instruction]\nlength: 0.0, conciseness: 1.0\n"
                                                     "[End System Instruction]\nBye"}
    assert with_weights("Q", NAMES, E2, WeightPrefix(position="user")) == with_weights("Q", NAMES, E2)
    with pytest.raises(ValueError, match="no user message"):
        with_weights([{"role": "system", "content": "S"}], NAMES, E2, WeightPrefix(position="user"))
    custom = WeightPrefix(template="<w>{weights}</w> ", item="{weight}x{name}", separator="|", step=0.05)
    assert with_weights("Q", NAMES, [0.33, 0.67], custom) == "<w>0.35xlength|0.65xconciseness</w> Q"
    with pytest.raises(ValueError, match="one weight per objective"):
        with_weights("Q", NAMES, [0.2, 0.3, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": "weights: {w}\n"}, r"\{weights\} exactly once"),
        ({"template": "{weights} and {weights}\n"}, r"\{weights\} exactly once"),
        ({"template": "[{weights}"}, "must end with text after"),
        ({"template": "{weights!r}\n"}, "no format spec"),
        ({"template": "{weights\n"}, "not a valid format string"),
        ({"item": "{name}"}, r"\{name\} and \{weight\}"),
        ({"step": 0.0}, r"step must be in \(0, 1\]"),
        ({"position": "assistant"}, "position 'assistant' must be one of"),
    ],
)
def test_bad_prefix_settings_fail_early_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightPrefix(**kwargs)


def test_long_prompts_lose_their_start_not_the_instruction(cfg, reference):
    tokenizer, prefix = reference.tokenizer, WeightPrefix()
    n_tokens = lambda p: len(prompt_token_ids(tokenizer, p, True))  # noqa: E731
    long = "x" * 300 + " the question?"
    out = conditioned_prompt(long, NAMES, E1, prefix, tokenizer, 128, True)
    assert out.startswith(HEAD) and out.endswith(" the question?") and 120 < n_tokens(out) <= 128
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 4} for i in range(12)]
    out = conditioned_prompt(turns, NAMES, E1, prefix, tokenizer, 200, True)
    assert out[0]["role"] == "system" and out[0]["content"].startswith(HEAD) and n_tokens(out) <= 200
    assert out[-2:] == turns[-2:] and len(out) < len(turns)  # the oldest turns went first
    cut = conditioned_prompt(turns, NAMES, E1, prefix, tokenizer, 128, True)  # then the start of a turn
    assert len(cut) == 2 and turns[-1]["content"].endswith(cut[1]["content"]) and n_tokens(cut) <= 128
    asked = turns[:-1]  # a dialogue that ends with the user's turn
    in_user = conditioned_prompt(asked, NAMES, E1, WeightPrefix(position="user"), tokenizer, 128, True)
    assert in_user[-1]["content"].startswith(HEAD) and n_tokens(in_user) <= 128  # the instruction stays
    instruction = WeightPrefix().render(NAMES, E1)
    assert asked[-1]["content"].endswith(in_user[-1]["content"][len(instruction):]) and len(in_user) == 1
    short = conditioned_prompt("Q?", NAMES, E1, prefix, tokenizer, 128, True)
    assert short == with_weights("Q?", NAMES, E1)
    with pytest.raises(ValueError, match="max_prompt_tokens=40"):
        conditioned_prompt("Q?", NAMES, E1, prefix, tokenizer, 40, True)


def test_prompt_budget_counts_the_questions_the_instruction_cuts(cfg, reference):
    tokenizer = reference.tokenizer
    user = WeightPrefix(position="user")
    n_tokens = lambda p: len(prompt_token_ids(tokenizer, p, True))  # noqa: E731
    dialogue = [{"role": "user", "content": "old turn " * 20}, {"role": "assistant", "content": "answer " * 20},
                {"role": "user", "content": "What is the question here?"}]
    short = [{"role": "user", "content": "Q?"}]
    prompts = [dialogue, short, "a plain prompt"]
    whole = [n_tokens(with_weights(p, NAMES, [0.5, 0.5], user)) for p in ([dialogue[-1]], short, "a plain prompt")]
    budget = prompt_budget(prompts, NAMES, user, tokenizer, max(whole), True)
    assert (budget.prompts, budget.cut, budget.needed) == (3, 0, max(whole))  # old turns may go, questions stay
    out = conditioned_prompt(dialogue, NAMES, E1, user, tokenizer, max(whole), True)
    assert out == with_weights([dialogue[-1]], NAMES, E1, user)
    tight = prompt_budget(prompts, NAMES, user, tokenizer, max(whole) - 1, True)
    assert tight.cut == sum(n > max(whole) - 1 for n in whole) >= 1 and tight.needed == max(whole)
    cut = conditioned_prompt(dialogue, NAMES, E1, user, tokenizer, whole[0] - 1, True)
    assert len(cut) == 1 and cut[0]["content"] != with_weights([dialogue[-1]], NAMES, E1, user)[0]["content"]
    llm = cfg.llm.model_copy(update={"max_prompt_tokens": whole[0] - 1})
    with pytest.warns(PromptCutWarning, match=rf"1 of 1 prompts .* llm.max_prompt_tokens={whole[0]} keeps"):
        warn_cut_prompts([dialogue], NAMES, user, tokenizer, llm, "prompts")


def test_llm_online_profile_keeps_every_question_whole(tmp_path):
    """The profile's instruction fits its prompt budget with every question whole (at llm-hh's 64
    tokens 9 of its 72 training questions lost their start, 55 with the instruction in the user's
    turn, while the reward models scored them whole)."""
    profile = load_config("llm-online", [f"artifacts_dir={tmp_path / 'artifacts'}", f"reports_dir={tmp_path / 'reports'}",
                                         "tracking.enabled=false"], params_file=tmp_path / "none.yaml")
    prepare(profile)
    prompts = [p for split in ("train", "val", "test") for p in load_groups(profile, split, with_ref=False).prompts]
    _, tokenizer = load_causal_lm(profile.llm.model, cache_dir=Path(profile.llm.model_cache))
    prefix, llm = profile.llm.prefix.build(), profile.llm
    budget = prompt_budget(prompts, profile.objective_names, prefix, tokenizer, llm.max_prompt_tokens, llm.chat_template)
    assert budget.prompts == profile.data.max_records and budget.cut == 0, budget.message("profile prompts")
    tight = prompt_budget(prompts, profile.objective_names, prefix, tokenizer, 64, llm.chat_template)
    assert tight.cut > 0 and tight.needed == budget.needed <= llm.max_prompt_tokens


# ------------------------------------------------------------------------------------------
# rewards and pairs


class Recording:
    """A reward model that remembers every prompt it is shown."""

    def __init__(self, name: str):
        self.name, self.seen = name, []
        self.inner = get_reward(name)

    def score(self, prompts, responses):
        self.seen.extend(prompts)
        return self.inner.score(prompts, responses)


def test_reward_models_never_see_the_prefix(cfg, factory, rewards):
    recorders = [Recording("length"), Recording("conciseness")]
    spy = RewardSet.from_stats(recorders, rewards.stats())
    task = make_task(cfg, factory, spy)
    task.prompts = ["Q1?", [{"role": "user", "content": "Q2?"}]]
    policy = new_online_policy(task, seed=0)
    batch = rollout(policy, task, task.prompts, np.array([[0.3, 0.7], [1.0, 0.0]]), True, SETTINGS, seed=0)
    assert batch.inputs[0].startswith(HEAD) and batch.inputs[1][0]["content"].startswith(HEAD)  # the policy's
    for r in recorders:
        assert r.seen == ["Q1?", "Q1?", "User: Q2?", "User: Q2?"]  # two samples each, original prompts
    assert batch.rewards.shape == (2, 2, 2)
    raw = spy.raw(["Q1?"] * 2, batch.responses[0])
    assert np.allclose(batch.rewards[0], (raw - spy.normaliser.mean) / spy.normaliser.std)


def test_the_weighted_reward_orders_each_pair_and_ties_are_skipped():
    rewards = np.array([
        [[1.0, -1.0], [-1.0, 1.0]],  # sample 0 long, sample 1 concise
        [[1.0, -1.0], [-1.0, 1.0]],
        [[0.5, 0.5], [0.5, 0.5]],  # identical samples
        [[2.0, 0.0], [0.0, 2.0]],
    ])
    weights = np.array([[0.8, 0.2], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    batch = Rollout(["x"] * 4, ["x'"] * 4, weights, [["y0", "y1"]] * 4, rewards)
    assert np.allclose(batch.weighted, [[0.6, -0.6], [-0.6, 0.6], [0.5, 0.5], [1.0, 1.0]])
    chosen, rejected, keep = preference_pairs(batch.weighted, 1e-6)
    assert keep.tolist() == [True, True, False, False]
    assert chosen[:2].tolist() == [0, 1] and rejected[:2].tolist() == [1, 0]  # w decides the order
    three = np.array([[0.1, 0.9, -0.4]])
    c, r, k = preference_pairs(three, 1e-6)
    assert (c[0], r[0], k[0]) == (1, 2, True)  # k > 2: the best against the worst


def test_relabelling_reorders_the_same_samples_under_other_weights_on_their_own_prompts(cfg, factory, rewards, reference):
    task = make_task(cfg, factory, rewards)
    r = np.array([[[1.0, -1.0], [-1.0, 1.0]], [[0.5, 0.0], [0.0, 0.2]]])
    batch = Rollout(["Q0?", "Q1?"], task.condition(["Q0?", "Q1?"], np.array([E1, E1]), reference.tokenizer),
                    np.array([E1, E1]), [["a b", "a"], ["c", "a c"]], r)
    extra = np.array([[E2, E2], [[0.5, 0.5], [0.5, 0.5]]])
    out = relabelled(batch, task, extra, reference.tokenizer)
    assert out.prompts == ["Q0?", "Q1?"] * 3 and out.responses == batch.responses * 3
    assert out.inputs[:2] == batch.inputs and out.inputs[2] == with_weights("Q0?", NAMES, E2)
    assert out.inputs[5] == with_weights("Q1?", NAMES, [0.5, 0.5])
    assert np.array_equal(out.rewards, np.concatenate([r] * 3))
    chosen, _, keep = preference_pairs(out.weighted, 1e-6)
    assert chosen[[0, 2]].tolist() == [0, 1]  # the same pair, the opposite order under e_conciseness
    assert keep.tolist() == [True, True, True, True, False, True]  # (0, 0) vs (0, 0) at (0.5, 0.5) ties
    with pytest.raises(ValueError, match=r"extra weights must be \(r, 2, 2\)"):
        relabelled(batch, task, extra[0], reference.tokenizer)
    front = fit_mo_odpo(task, OnlineSettings(steps=2, prompts_per_step=4, max_new_tokens=6, relabel=2))
    assert front.history[-1]["pairs"] + front.history[-1]["ties"] == 3 * 4  # every prompt under 3 weights


def test_rotated_relabelling_mirrors_the_sampled_weights():
    w = np.array([[0.3, 0.7], [1.0, 0.0]])
    rotate = OnlineSettings(relabel=1, relabel_weights="rotate")
    extra = relabel_weights(w, 1, rotate, lambda rng, n: pytest.fail("rotation draws nothing"), np.random.default_rng(0))
    assert extra.tolist() == [[[0.7, 0.3], [0.0, 1.0]]]  # m = 2: the mirror, so a trade-off pair flips
    three = np.array([[0.2, 0.3, 0.5]])
    both = relabel_weights(three, 2, OnlineSettings(relabel=2, relabel_weights="rotate"), None, None)
    assert both.tolist() == [[[0.5, 0.2, 0.3]], [[0.3, 0.5, 0.2]]]
    drawn = relabel_weights(w, 2, OnlineSettings(relabel=2), lambda rng, n: np.full((n, 2), 0.5), None)
    assert drawn.shape == (2, 2, 2) and (drawn == 0.5).all()


def test_rotated_relabelling_needs_another_rotation(cfg, factory, rewards):
    task = make_task(cfg, factory, rewards)
    with pytest.raises(ValueError, match="relabel=2 with relabel_weights=rotate: 2 objectives"):
        task.check(OnlineSettings(relabel=2, relabel_weights="rotate", max_new_tokens=6))


def test_mo_odpo_loss_is_dpo_through_the_shared_loss_on_a_hand_computed_case():
    rewards = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    weights = np.array([[0.9, 0.1], [0.5, 0.5], [0.9, 0.1]])
    batch = Rollout(["x"] * 3, ["x'"] * 3, weights, [["a", "b"]] * 3, rewards)
    logps = torch.tensor([[-2.0, -3.0], [-1.0, -1.0], [-4.0, -1.0]], requires_grad=True)
    anchor = torch.tensor([[-2.5, -2.5], [-1.0, -1.0], [-3.0, -2.0]])
    settings = OnlineSettings(beta=0.5)
    loss, metrics = mo_odpo_loss(batch, logps, anchor, settings)
    # prompt 0: chosen 0, margin 0.5 ((-2 + 2.5) - (-3 + 2.5)) = 0.5; prompt 1 ties;
    # prompt 2: chosen 1, margin 0.5 ((-1 + 2) - (-4 + 3)) = 1.0
    expected = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(-1.0)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics == pytest.approx({"ties": 1.0, "pairs": 2.0, "accuracy": 1.0, "margin": 0.75})
    loss.backward()
    assert logps.grad[1].abs().sum() == 0  # the tied prompt contributes nothing
    all_tied = Rollout(["x"], ["x'"], weights[1:2], [["a", "b"]], rewards[1:2])
    assert mo_odpo_loss(all_tied, logps[1:2], anchor[1:2], settings)[0] is None


def test_pmorl_loss_is_reinforce_with_a_leave_one_out_baseline_and_kl_penalty():
    logps = torch.tensor([[-2.0, -3.0, -1.0]], requires_grad=True)
    anchor = torch.tensor([[-2.0, -2.0, -2.0]])
    rewards = torch.tensor([[1.0, 0.0, 0.5]])
    beta = 0.1
    loss, adv = reinforce_loss(logps, anchor, rewards, beta)
    reg = [1.0 - 0.1 * 0.0, 0.0 - 0.1 * -1.0, 0.5 - 0.1 * 1.0]  # R = w.r - beta (log pi - log pi_0)
    base = [(reg[1] + reg[2]) / 2, (reg[0] + reg[2]) / 2, (reg[0] + reg[1]) / 2]
    a = [r - b for r, b in zip(reg, base)]
    assert adv[0].tolist() == pytest.approx(a)
    assert loss.item() == pytest.approx(-(a[0] * -2.0 + a[1] * -3.0 + a[2] * -1.0) / 3)
    loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([-x / 3 for x in a])  # the penalty is not differentiated
    scored = np.array([[[1.0, 9.0], [0.0, 9.0], [0.5, 9.0]]])  # objective 2 has weight 0
    batch = Rollout(["x"], ["x'"], np.array([[1.0, 0.0]]), [["a", "b", "c"]], scored)
    via_rollout, metrics = pmorl_loss(batch, logps.detach(), anchor, OnlineSettings(beta=beta))
    assert via_rollout.item() == pytest.approx(loss.item()) and "advantage_std" in metrics
    with pytest.raises(ValueError, match=">= 2 samples"):
        reinforce_loss(logps[:, :1], anchor[:, :1], rewards[:, :1], beta)


# ------------------------------------------------------------------------------------------
# training


def test_a_step_moves_only_the_lora_and_the_anchor_stays_the_reference(cfg, factory, rewards, reference):
    task = make_task(cfg, factory, rewards)
    policy = new_online_policy(task, seed=0)
    batch = rollout(policy, task, task.prompts[:4], np.tile([0.5, 0.5], (4, 1)), True, SETTINGS, seed=3)
    groups = response_groups(batch.inputs, batch.responses, NAMES)
    logps, anchor = sequence_scores(policy, groups)
    assert torch.equal(anchor.cpu(), reference.logprobs(groups, batch_size=len(groups)))  # the base model
    assert torch.allclose(logps.detach(), anchor)  # LoRA's B starts at zero: the policy starts as the anchor
    loss = (logps[:, 0] - logps[:, 1]).pow(2).mean() - logps.mean()
    loss.backward()
    named = dict(policy.model.named_parameters())
    lora = [p for n, p in named.items() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora) and any(p.grad.abs().sum() > 0 for p in lora)
    frozen = [p for n, p in named.items() if "lora_" not in n]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    torch.optim.AdamW(policy.trainable(), lr=1e-2).step()
    after, anchor_after = sequence_scores(policy, groups)
    assert torch.equal(anchor_after, anchor)
    assert not torch.allclose(after.detach(), logps.detach())


def test_mo_odpo_moves_the_policy_towards_the_objective_its_weights_favour(fronts, reference):
    longs, shorts = ["ab ca bc ab", "c a b c a", "ba ab ca bb"] * 4, ["a", "bc", "cab"] * 4
    probes = response_groups(TEST_PROMPTS[:12], [[a, b] for a, b in zip(longs, shorts)], NAMES)
    ref = reference.logprobs(probes)

    def prefers_long(front) -> float:  # mean implicit-reward margin of the long over the short probe
        ratio = front.logprobs(probes, np.array([0.5, 0.5])) - ref
        return float((ratio[:, 0] - ratio[:, 1]).mean())

    assert prefers_long(fronts["length"]) > 1.0 and prefers_long(fronts["conciseness"]) < -1.0
    long_words, short_words = (words(fronts[k].generate(TEST_PROMPTS, E1)) for k in ("length", "conciseness"))
    assert long_words > words(reference.generate(TEST_PROMPTS)) > short_words
    history = fronts["length"].history
    assert [row["step"] for row in history] == list(range(1, 31))
    keys = {"loss", "weighted_reward", "reward_length", "reward_conciseness", "kl", "ties", "pairs", "accuracy",
            "trade_offs"}
    assert keys <= set().union(*history)
    # length and conciseness order every two samples of different lengths oppositely
    assert all(0.0 <= r["trade_offs"] <= 1.0 for r in history) and np.mean([r["trade_offs"] for r in history]) > 0.5
    assert history[0]["accuracy"] == 0.0  # before the first update the policy is the anchor
    assert np.mean([r["accuracy"] for r in history[-10:]]) > 0.6
    acc = fronts["length"].accounting
    assert acc.n_jobs == 1 and acc.trainable_params > 0 and acc.train_seconds > 0


def test_training_is_seeded_and_logs_every_step(cfg, factory, rewards):
    logged = []
    task = make_task(cfg, factory, rewards, log=lambda metrics, step: logged.append((step, metrics)))
    settings = OnlineSettings(steps=3, prompts_per_step=3, lr=1e-2, max_new_tokens=6)
    first = fit_mo_odpo(task, settings)
    assert [s for s, _ in logged] == [1, 2, 3] and "weighted_reward" in logged[0][1]
    again = fit_mo_odpo(make_task(cfg, factory, rewards), settings)
    assert first.history == again.history
    assert first.generate(["Q1?"], E1) == again.generate(["Q1?"], E1)


def test_odpo_soup_is_exactly_each_single_model_at_its_vertex(cfg, factory, rewards, tmp_path):
    recorders = [Recording("length"), Recording("conciseness")]
    task = make_task(cfg, factory, RewardSet.from_stats(recorders, rewards.stats()))
    soup = fit_odpo_soup(task, OnlineSettings(steps=4, prompts_per_step=4, lr=3e-2, max_new_tokens=8))
    singles = soup.singles
    groups = response_groups(TEST_PROMPTS[:4], [["ab c", "a"]] * 4, NAMES)
    for j, vertex in enumerate((E1, E2)):
        singles.policy.load_adapter(singles.states[j])
        alone = singles.policy.logprobs(groups)
        assert torch.equal(soup.logprobs(groups, vertex), alone)
    middle = soup.logprobs(groups, np.array([0.5, 0.5]))
    assert not torch.equal(middle, soup.logprobs(groups, E1)) and not torch.equal(middle, soup.logprobs(groups, E2))
    assert soup.name == "odpo_soup" and soup.accounting.n_jobs == 2
    assert [job["w"] for job in singles.history] == [[1.0, 0.0], [0.0, 1.0]]
    assert [len(job["history"]) for job in singles.history] == [2, 2]  # steps / m each: one MO-ODPO's compute
    assert not any(isinstance(p, str) and HEAD in p for p in recorders[0].seen)
    soup.save(tmp_path / "soup")
    loaded = load_odpo_soup(tmp_path / "soup", cfg, factory)
    assert torch.equal(loaded.logprobs(groups, np.array([0.3, 0.7])), soup.logprobs(groups, np.array([0.3, 0.7])))
    assert loaded.generate(["Q1?"], E2) == soup.generate(["Q1?"], E2)


# ------------------------------------------------------------------------------------------
# the front: conditioning, save/load, steering


def test_fronts_with_one_instruction_share_their_anchor_log_probs(fronts):
    from moft.llm.stages import AnchorCache, _reference_groups

    groups = response_groups(TEST_PROMPTS[:3], [["ab c", "a"]] * 3, NAMES)
    anchors, w = AnchorCache(), np.array([0.3, 0.7])
    first = _reference_groups(fronts["length"], groups, w, anchors)
    second = _reference_groups(fronts["conciseness"], groups, w, anchors)
    assert second.ref_logps is first.ref_logps  # the same p(w) + x: scored once
    assert torch.equal(second.ref_logps, _reference_groups(fronts["conciseness"], groups, w).ref_logps)
    other = _reference_groups(fronts["conciseness"], groups, np.array([0.7, 0.3]), anchors)
    assert not torch.equal(other.ref_logps, first.ref_logps)


def test_the_front_conditions_every_prompt_on_the_quantised_weights(fronts):
    front = fronts["length"]
    prompts = ["Q1?", [{"role": "user", "content": "Q2?"}]]
    inputs = front.inputs(prompts, np.array([0.33, 0.67]))
    assert inputs[0] == with_weights("Q1?", NAMES, [0.3, 0.7])
    assert inputs[1][0]["content"] == with_weights("", NAMES, [0.3, 0.7]).rstrip("\n")
    groups = response_groups(["Q1?", "Q2?"], [["a b", "c"]] * 2, NAMES)
    by_hand = LMPolicy(front.policy.model, front.policy.tokenizer, front.policy.llm)  # no conditioning
    conditioned = response_groups(front.inputs(["Q1?", "Q2?"], E1), [["a b", "c"]] * 2, NAMES)
    assert torch.equal(front.logprobs(groups, E1), by_hand.logprobs(conditioned))
    with front.policy.model.disable_adapter():
        anchor = by_hand.logprobs(conditioned)
    assert torch.equal(front.reference_logprobs(groups, E1), anchor)
    assert not torch.equal(anchor, front.logprobs(groups, E1))
    assert front.generate(["Q1?"], E1) == by_hand.generate(front.inputs(["Q1?"], E1))


def test_save_load_round_trip(fronts, cfg, factory, tmp_path):
    front = fronts["length"]
    front.save(tmp_path / "mo")
    loaded = OnlineFront.load(tmp_path / "mo", cfg, factory, method="mo_odpo")
    assert loaded.name == "mo_odpo" and loaded.accounting == front.accounting
    assert loaded.prefix == front.prefix and loaded.history == front.history
    assert loaded.reward_stats == front.reward_stats
    groups = response_groups(TEST_PROMPTS[:3], [["ab c", "a"]] * 3, NAMES)
    for w in (E1, np.array([0.5, 0.5]), E2):
        assert torch.equal(loaded.logprobs(groups, w), front.logprobs(groups, w))
        assert loaded.generate(TEST_PROMPTS[:3], w) == front.generate(TEST_PROMPTS[:3], w)


def test_pmorl_trains_a_front_of_its_own_name(cfg, factory, rewards, tmp_path):
    front = fit_pmorl(make_task(cfg, factory, rewards), OnlineSettings(steps=3, prompts_per_step=4, max_new_tokens=6))
    assert front.name == "pmorl" and {"loss", "advantage_std", "kl"} <= set(front.history[-1])
    front.save(tmp_path / "pm")
    assert OnlineFront.load(tmp_path / "pm", cfg, factory).name == "pmorl"
    with pytest.raises(ValueError, match=r"online.json: written by method 'pmorl', not 'mo_odpo'"):
        OnlineFront.load(tmp_path / "pm", cfg, factory, method="mo_odpo")


def test_loading_checks_files_objectives_and_shapes_naming_the_file(fronts, cfg, factory, tmp_path):
    with pytest.raises(FileNotFoundError, match="online.json is missing"):
        OnlineFront.load(tmp_path / "nothing", cfg, factory)
    fronts["length"].save(tmp_path / "mo")
    other = cfg.model_copy(update={"objectives": list(reversed(cfg.objectives))})
    with pytest.raises(ValueError, match=r"online.json: trained for objectives \['length', 'conciseness'\]"):
        OnlineFront.load(tmp_path / "mo", other, factory)
    weights = tmp_path / "mo" / ADAPTER_FILE
    state = load_file(str(weights))
    key = next(iter(state))
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=rf"{ADAPTER_FILE}: .*shape"):
        OnlineFront.load(tmp_path / "mo", cfg, factory)
    assert (tmp_path / "mo" / META_FILE).is_file()


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("0.3,0.3,0.4", r"3 values but the model has 2 objectives \['length', 'conciseness'\]"),
        ([0.5], "1 values but the model has 2"),
        ("1.2,-0.2", r"weights\[1\] = -0.2 is negative"),
        ("0.3,0.6", "sums to 0.9, not 1"),
        ("0.3,abc", "entry 1 'abc'"),
        ([float("nan"), 1.0], "non-finite"),
    ],
)
def test_steer_rejects_bad_weights_naming_the_problem(fronts, weights, message):
    with pytest.raises(ValueError, match=message):
        steer(fronts["length"], ["Q?"], weights)


def test_steer_generates_at_the_given_trade_off(fronts):
    front = fronts["length"]
    assert steer(front, ["Q1?", "Q2?"], "0.3, 0.7") == front.generate(["Q1?", "Q2?"], np.array([0.3, 0.7]))
    assert steer(front, [], [1.0, 0.0]) == []
    assert parse_weights([0.3, 0.7 + 5e-7], NAMES).tolist() == pytest.approx([0.3, 0.7])


def test_settings_and_task_are_validated_naming_the_field(cfg, factory, rewards):
    with pytest.raises(ValueError, match="samples_per_prompt"):
        OnlineSettings(samples_per_prompt=1)
    with pytest.raises(ValueError, match="beta"):
        OnlineSettings(beta=0)
    with pytest.raises(ValueError, match="alpha"):
        OnlineSettings(alpha=[1.0, 0.0])
    assert "Dirichlet" in OnlineSettings.model_fields["alpha"].description
    with pytest.raises(ConfigError, match="llm.prefix.*must contain the field"):
        load_config("llm-hh", ["llm.prefix.template=no field here"])
    with pytest.raises(ValueError, match="max_new_tokens=16 must be < llm.max_response_tokens=16"):
        fit_mo_odpo(make_task(cfg, factory, rewards), OnlineSettings(steps=1, max_new_tokens=16))
    other = RewardSet.from_stats(rewards.models[::-1], {n: rewards.stats()[n] for n in NAMES[::-1]})
    with pytest.raises(ValueError, match="do not match the objectives"):
        make_task(cfg, factory, other)
    with pytest.raises(ValueError, match="no training prompts"):
        OnlineTask(cfg, [], factory, rewards)


def test_reward_set_normalises_with_training_statistics(rewards):
    assert rewards.names == NAMES
    raw = rewards.raw(["Q"] * 3, ["a", "a b", "a b c"])
    assert raw[:, 0].tolist() == [1.0, 2.0, 3.0]
    expected = (raw - rewards.normaliser.mean) / rewards.normaliser.std
    assert np.allclose(rewards.score(["Q"] * 3, ["a", "a b", "a b c"]), expected)
    with pytest.raises(ValueError, match="not fitted"):
        RewardSet([get_reward("length")], RewardNormaliser(("length",)))


# ------------------------------------------------------------------------------------------
# the TRL reward model


@pytest.fixture(scope="module")
def reward_pairs(cfg):
    rows = [
        {"prompt_id": f"p{g}", "prompt": f"Question {g}?", "response_idx": r, "response": text,
         "pref_length": 1, "pref_conciseness": -1}  # a pair's preference: +1 first better, -1 second
        for g in range(12)
        for r, text in enumerate([f"yes indeed {string.ascii_lowercase[g]}", "no"])
    ]
    frame = pd.DataFrame(rows).astype({"pref_length": "int8", "pref_conciseness": "int8"})
    groups = PreferenceGroups.from_frame(frame, cfg)
    assert pairs_from_groups(groups, "conciseness")[0] == ("Question 0?", "no", "yes indeed a")
    return pairs_from_groups(groups, "length")


def test_pairs_come_from_the_preference_groups(reward_pairs, cfg):
    assert len(reward_pairs) == 12
    assert reward_pairs[0] == ("Question 0?", "yes indeed a", "no")


@pytest.fixture(scope="module")
def trained_reward(reward_pairs, model_dir, tmp_path_factory):
    torch.manual_seed(11)
    np.random.seed(11)
    expected = (torch.rand(1), np.random.rand())
    torch.manual_seed(11)
    np.random.seed(11)
    out = tmp_path_factory.mktemp("rm") / "reward"
    reward = train_reward_model(reward_pairs, model_dir, out, steps=20, lr=1e-3, batch_size=4, max_length=64)
    assert (torch.rand(1), np.random.rand()) == expected  # the caller's global RNGs are left alone
    return reward, out


def test_the_trl_reward_model_learns_its_pairs(trained_reward, reward_pairs):
    reward, _ = trained_reward
    losses = [row["loss"] for row in reward.history]
    assert len(losses) == 20 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    prompts = [p.prompt for p in reward_pairs]
    chosen = reward.score(prompts, [p.chosen for p in reward_pairs])
    rejected = reward.score(prompts, [p.rejected for p in reward_pairs])
    assert chosen.dtype == np.float64 and chosen.shape == (12,) and (chosen > rejected).all()
    assert np.array_equal(chosen, reward.score(prompts, [p.chosen for p in reward_pairs]))  # deterministic
    batched = reward.score(prompts[:5], [p.chosen for p in reward_pairs][:5])
    one_by_one = [reward.score([p], [c])[0] for p, c in zip(prompts[:5], [p.chosen for p in reward_pairs])]
    assert np.allclose(batched, one_by_one, atol=1e-5)  # padding does not change a score


def test_scoring_reads_the_pairs_as_trl_trained_on_them(trained_reward, reward_pairs):
    """TRL's own collator on the training tokenisation gives the rewards ``score`` returns."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from moft.rewards.trained import reward_token_ids

    reward, _ = trained_reward
    tok, some = reward.tokenizer, reward_pairs[:4]
    prompts, chosen, rejected = [p.prompt for p in some], [p.chosen for p in some], [p.rejected for p in some]
    ids = [reward_token_ids(tok, prompts, r, reward.separator, reward.max_length) for r in (chosen, rejected)]
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(
        [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(*ids)]
    )
    with torch.no_grad():
        trl_rewards = reward.model(**batch).logits[:, 0].double().numpy()  # [chosen..., rejected...]
    ours = np.concatenate([reward.score(prompts, chosen), reward.score(prompts, rejected)])
    assert np.allclose(trl_rewards, ours, atol=1e-5)
    assert all(ids[0][i][-1] == tok.eos_token_id for i in range(4))  # the eos closes every response
    assert reward.score([], []).shape == (0,)


def test_the_trl_reward_model_round_trips_and_serves_as_a_reward(trained_reward, reward_pairs):
    from moft.rewards import RewardModel

    reward, out = trained_reward
    loaded = TrainedReward.load(out, batch_size=3)
    assert isinstance(loaded, RewardModel) and loaded.name == "trained_reward"
    prompts, responses = [p.prompt for p in reward_pairs], [p.chosen for p in reward_pairs]
    assert np.allclose(loaded.score(prompts, responses), reward.score(prompts, responses), atol=1e-6)
    assert loaded.history == reward.history
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        loaded.score(["a", "b"], ["c"])


def test_reward_training_rejects_bad_pairs_and_leaves_outputs_intact_on_failure(model_dir, tmp_path):
    out = tmp_path / "reward"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(ValueError, match="at least one"):
        train_reward_model([], model_dir, out)
    with pytest.raises(ValueError, match="pair 1: chosen and rejected are the same"):
        train_reward_model([("q", "a", "b"), ("q", "c", "c")], model_dir, out)
    with pytest.raises(ValueError, match="is a GGUF model"):
        train_reward_model([("q", "a", "b")], "smollm2", out)
    with pytest.raises(TypeError):
        train_reward_model([("q", "a", "b")], model_dir, out, steps=1, trainer_args={"no_such_field": 1})
    assert (out / "keep.txt").read_text() == "previous" and list(out.iterdir()) == [out / "keep.txt"]
    with pytest.raises(FileNotFoundError, match="reward.json is missing"):
        TrainedReward.load(out)


# ------------------------------------------------------------------------------------------
# Rewards-in-Context


def test_ric_maps_a_trade_off_to_rewards_by_hand():
    lo, hi = np.array([-1.0, -2.0]), np.array([1.0, 2.0])
    assert ric_targets([0.5, 0.5], lo, hi).tolist() == [1.0, 2.0]  # both at their fair share: both best
    assert np.allclose(ric_targets([0.2, 0.8], lo, hi), [-1 + 2 * 0.2 * 2, 2.0])  # -0.2, 2
    assert ric_targets([1.0, 0.0], lo, hi).tolist() == [1.0, -2.0]
    three = ric_targets([0.2, 0.3, 0.5], np.zeros(3), np.ones(3))
    assert np.allclose(three, [0.6, 0.9, 1.0])  # 1/N = 1/3: lo + 3 w (hi - lo) below it
    with pytest.raises(ValueError, match="sums to"):
        ric_targets([0.5, 0.6], lo, hi)
    with pytest.raises(ValueError, match="reward range has 3"):
        ric_targets([0.5, 0.5], np.zeros(3), np.ones(3))


def test_the_ric_prefix_writes_reward_values_in_the_weight_template():
    prefix = RewardPrefix.from_weight_prefix(WeightPrefix(position="user"), 1, [-1.0, -2.0], [1.0, 2.0])
    text = prefix.render(NAMES, [0.04, -1.26])
    assert text == "[Begin System Instruction]\nlength: 0, conciseness: -1.3\n[End System Instruction]\n"
    assert with_weights("Q", NAMES, [0.04, -1.26], prefix) == text + "Q"
    assert RewardPrefix.from_dict(prefix.to_dict()) == prefix
    assert prefix.targets([1.0, 0.0]).tolist() == [1.0, -2.0]
    with pytest.raises(ValueError, match="not finite"):
        prefix.render(NAMES, [np.nan, 0.0])
    with pytest.raises(ValueError, match="one lo <= hi per objective"):
        RewardPrefix.from_weight_prefix(WeightPrefix(), 1, [1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="unknown RiC prefix settings"):
        RewardPrefix.from_dict({**prefix.to_dict(), "step": 0.1})


def test_pareto_set_keeps_the_samples_no_other_dominates():
    rewards = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [1.0, 0.0]])
    assert pareto_set(rewards).tolist() == [0, 1, 2, 4]  # (0.4, 0.4) is dominated; duplicates stay


def test_ric_learns_to_write_the_rewards_it_is_asked_for(cfg, factory, rewards, tmp_path):
    """SFT on short and long answers, each labelled with its own rewards: asked (at w = e_length)
    for the most words, the policy prefers the long answer over the short one by more than when
    asked (at w = e_conciseness) for the fewest. (The tiny model's 896 LoRA weights move its
    log-probs, not yet its greedy answers, in 40 steps.)"""
    from moft.config import RicSettings

    prompts = [f"Q{i}?" for i in range(8) for _ in range(2)]
    texts = ["a", "a b c a b c a b"] * 8
    task = make_task(cfg, factory, rewards)
    settings = RicSettings(sft_steps=40, batch_size=8, lr=3e-2, online_rounds=1, online_prompts=4, online_steps=2)
    front = fit_ric(task, settings, SETTINGS.model_copy(update={"max_new_tokens": 10}), prompts, texts)
    assert front.name == "ric" and isinstance(front, RicFront)
    sft = [h["loss"] for h in front.history if h["stage"] == 0]
    assert len(sft) == 40 and sft[-1] < sft[0]
    online = front.history[-1]
    assert online["stage"] == 1 and online["sampled"] == 4 * SETTINGS.samples_per_prompt
    assert 0 <= online["kept"] <= online["sampled"] - online["empty"]
    answers = response_groups(["Q0?", "Q1?"], [["a", "a b c a b c a b"]] * 2, NAMES)
    prefers_long = {i: front.logprobs(answers, w).diff(dim=1).squeeze(1) for i, w in enumerate((E1, E2))}
    assert (prefers_long[0] > prefers_long[1] + 1.0).all()
    untrained = fit_ric(task, settings.model_copy(update={"sft_steps": 1, "online_rounds": 0}), SETTINGS, prompts, texts)
    before = untrained.logprobs(answers, E1).diff(dim=1) - untrained.logprobs(answers, E2).diff(dim=1)
    assert (before.abs() < 0.5).all()  # the contrast is learnt, not the prefix's own effect
    assert front.inputs(["Q"], E2)[0].startswith("[Begin System Instruction]\nlength: ")  # the mapped rewards
    front.save(tmp_path / "ric")
    loaded = RicFront.load(tmp_path / "ric", cfg, factory, method="ric")
    assert loaded.prefix == front.prefix and isinstance(loaded.prefix, RewardPrefix)
    groups = response_groups(TEST_PROMPTS[:3], [["ab c", "a"]] * 3, NAMES)
    assert torch.equal(loaded.logprobs(groups, E2), front.logprobs(groups, E2))
    assert loaded.generate(TEST_PROMPTS[:3], E1) == front.generate(TEST_PROMPTS[:3], E1)
    with pytest.raises(ValueError, match="one training prompt per response"):
        fit_ric(task, settings, SETTINGS, prompts[:3], texts)


def test_reference_samples_for_the_normaliser_are_the_reference_policys_seeded_samples(cfg, factory):
    from moft.online.methods import reference_samples

    online = cfg.llm.online.model_copy(update={"samples_per_prompt": 3, "max_new_tokens": 6, "normalise": "samples"})
    sampled = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"online": online})})
    prompts = [f"Q{i}?" for i in range(10)]
    got_prompts, got = reference_samples(sampled, factory, prompts)
    assert got_prompts == [p for p in prompts for _ in range(3)] and len(got) == 30
    assert reference_samples(sampled, factory, prompts) == (got_prompts, got)  # seeded
    assert len(set(got)) > 1  # sampled, not greedy
