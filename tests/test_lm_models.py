"""The LLM track's model layer on a tiny random Llama: pairs, log-probs, LoRA, Hyper Prompt Tuning."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from moft.models.hpt import (
    HPT_META,
    HPT_WEIGHTS,
    HPTConfig,
    HyperPromptTuning,
    forward_logprobs,
    generate_with_prefix,
    load_hyper_lm,
    prepend_virtual_tokens,
    save_hyper_lm,
)
from moft.models.lm import (
    add_lora,
    encode_groups,
    encode_pairs,
    interpolate_lora,
    load_causal_lm,
    load_lora_state,
    lora_state,
    sequence_logprobs,
    shared_prefix_logprobs,
    tiny_causal_lm,
    trainable_parameters,
)

M = 2
PROMPTS = ["What is 2+2?", [{"role": "user", "content": "Say something kind about cats, please."}]]
RESPONSES = ["4", "Cats are wonderful."]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


def tiny(seed: int = 0, init_std: float = 0.3):
    """A tiny model whose outputs depend visibly on its input (see ``tiny_causal_lm``)."""
    return tiny_causal_lm(seed=seed, init_std=init_std)


def pairs(tokenizer, max_prompt: int = 64, max_response: int = 32):
    return encode_pairs(tokenizer, PROMPTS, RESPONSES, max_prompt, max_response, chat_template=True)


def randomise_lora(model, seed: int) -> dict[str, torch.Tensor]:
    """Random adapter weights (LoRA's B starts at zero, which hides bugs), loaded into ``model``."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in lora_state(model).items()}
    load_lora_state(model, state)
    return state


# ------------------------------------------------------------------------------------------
# tiny model, loading


def test_tiny_model_is_deterministic_from_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = tiny_causal_lm(seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    b, _ = tiny_causal_lm(seed=0)
    c, _ = tiny_causal_lm(seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.model_type == "llama" and a.config.tie_word_embeddings


def test_tiny_model_saves_and_loads_through_load_causal_lm(tmp_path):
    model, tokenizer = tiny()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_causal_lm(tmp_path)
    batch = pairs(tokenizer)
    assert torch.equal(pairs(loaded_tok)["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(sequence_logprobs(loaded, **batch), sequence_logprobs(model, **batch))
    assert not loaded.training and loaded.config.use_cache is False
    assert loaded_tok.pad_token_id is not None


def test_tiny_tokenizer_round_trips_text():
    _, tokenizer = tiny()
    text = "héllo, wörld ✓\n"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_hub_id_offline_fails_fast_naming_the_switch(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        load_causal_lm("moft-tests/no-such-model")
    assert time.perf_counter() - start < 30  # no network retries


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not-here"):
        load_causal_lm(tmp_path / "not-here")


# ------------------------------------------------------------------------------------------
# pairs and sequence log-probabilities


def test_encode_pairs_masks_and_right_padding():
    _, tokenizer = tiny()
    batch = pairs(tokenizer)
    ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert ids.shape == attn.shape == resp.shape and ids.shape[0] == 2
    for i, response in enumerate(RESPONSES):
        n = int(attn[i].sum())
        assert attn[i, :n].all() and not attn[i, n:].any()  # right padded
        expected = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        assert ids[i][resp[i].bool()].tolist() == expected
        assert resp[i, n - len(expected) : n].all()
    prompt = tokenizer.decode(ids[0][(attn[0] - resp[0]).bool()])
    assert prompt.startswith("<|im_start|>user\nWhat is 2+2?") and prompt.endswith("<|im_start|>assistant\n")


def test_prompts_truncate_from_the_left_and_responses_from_the_right():
    _, tokenizer = tiny()
    batch = encode_pairs(tokenizer, ["abcdefghij"], ["0123456789"], 4, 3, chat_template=False)
    assert tokenizer.decode(batch["input_ids"][0]) == "ghij012"
    assert batch["response_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_sequence_logprobs_equals_a_loop_over_tokens():
    model, tokenizer = tiny()
    batch = pairs(tokenizer)
    with torch.no_grad():
        got = sequence_logprobs(model, **batch)
        mean = sequence_logprobs(model, **batch, average=True)
        expected = []
        for ids, attn, resp in zip(batch["input_ids"], batch["attention_mask"], batch["response_mask"]):
            ids = ids[attn.bool()]  # unpadded row
            total = 0.0
            for t in resp[: len(ids)].nonzero().flatten().tolist():
                logits = model(input_ids=ids[None, :t]).logits[0, -1]
                total += torch.log_softmax(logits, -1)[ids[t]].item()
            expected.append(total)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mean, got / batch["response_mask"].sum(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("max_prompt", [64, 5, 1])
def test_shared_prefix_logprobs_equal_the_flat_path_values_and_gradients(max_prompt):
    """Each prompt run once for all its responses (the cache gathered to the rows) gives the flat
    path's log-probs and LoRA gradients: prompts of different lengths, a prompt cut to its last
    ``max_prompt`` tokens (1: an empty prefix), a group of three responses, a response cut by the
    response budget, groups in any order."""
    model, tokenizer = tiny()
    model = add_lora(model)
    randomise_lora(model, 3)
    prompts = [*PROMPTS, "A much longer prompt about the weather in several European cities today"]
    responses = ["4", "four", "Cats are wonderful.", "Sunny.", "Rain in the north, sun in the south, and more", "x"]
    rows = [0, 0, 1, 2, 2, 2]
    model.train(True)
    flat = encode_pairs(tokenizer, [prompts[g] for g in rows], responses, max_prompt, 8, chat_template=True)
    expected = sequence_logprobs(model, **flat)
    (expected * torch.arange(1.0, 7.0)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    shared = encode_groups(tokenizer, prompts, responses, rows, max_prompt, 8, chat_template=True)
    assert shared["prefix_ids"].shape[0] == 3 and shared["tail_ids"].shape[0] == 6
    assert int(shared["response_mask"].sum()) == int(flat["response_mask"].sum())
    got = shared_prefix_logprobs(model, **shared)
    (got * torch.arange(1.0, 7.0)).sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            scale = float(grads[n].abs().max())  # float rounding differs in the order of the sums
            torch.testing.assert_close(p.grad, grads[n], atol=1e-4 * scale, rtol=1e-4)
    averaged = shared_prefix_logprobs(model, **shared, average=True)
    torch.testing.assert_close(averaged, got / shared["response_mask"].sum(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_group", [False, True])
def test_shared_prefix_with_virtual_tokens_equals_the_flat_path(per_group):
    """HPT: a group's virtual tokens and prompt run once for its responses; log-probs and the
    gradients of LoRA and of the HPT prefix equal :func:`forward_logprobs` on the flat rows, for one
    ``w`` for the batch and for one ``w`` per group."""
    from moft.models.hpt import shared_forward_logprobs

    model, tokenizer = tiny()
    model = add_lora(model)
    randomise_lora(model, 4)
    hpt = HyperPromptTuning.for_model(model, M, init_std=0.3)
    prompts = [*PROMPTS, "A third prompt"]
    responses = ["4", "four", "Cats are wonderful.", "Yes.", "No, it is not"]
    rows = [0, 0, 1, 2, 2]
    w = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]]) if per_group else torch.tensor([0.3, 0.7])
    weights = torch.arange(1.0, 6.0)
    params = [p for p in [*model.parameters(), *hpt.parameters()] if p.requires_grad]
    flat = encode_pairs(tokenizer, [prompts[g] for g in rows], responses, 64, 8, chat_template=True)
    row_w = w[torch.tensor(rows)] if per_group else w
    expected = forward_logprobs(model, hpt, flat["input_ids"], flat["attention_mask"], flat["response_mask"], row_w)
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    shared = encode_groups(tokenizer, prompts, responses, rows, 64, 8, chat_template=True)
    got = shared_forward_logprobs(model, hpt, **shared, w=w)
    got_grads = torch.autograd.grad((got * weights).sum(), params)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-4)


def test_encode_groups_refuses_rows_without_a_prompt():
    _, tokenizer = tiny()
    with pytest.raises(ValueError, match="row indices"):
        encode_groups(tokenizer, PROMPTS, ["a", "b"], [0, 2], 16, 8, chat_template=True)
    with pytest.raises(ValueError, match="2 responses but 1 row"):
        encode_groups(tokenizer, PROMPTS, ["a", "b"], [0], 16, 8, chat_template=True)


def test_sequence_logprobs_rejects_a_response_without_context():
    model, tokenizer = tiny()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="position 0"):
        sequence_logprobs(model, ids, torch.ones_like(ids), torch.ones_like(ids))


# ------------------------------------------------------------------------------------------
# Hyper Prompt Tuning


def test_hpt_shapes_and_near_identity_mask_at_init():
    model, _ = tiny()
    hpt = HyperPromptTuning.for_model(model, M)
    d = model.config.hidden_size
    assert hpt(torch.tensor([0.5, 0.5])).shape == (1, 8, d)
    w = torch.tensor([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0]])
    assert hpt(w).shape == (3, 8, d)
    mask = hpt.mask(w)
    assert mask.shape == (3, 8, d)
    assert (mask - 1).abs().max() < 0.2  # M starts near all-ones: the prefix starts as P
    assert not torch.equal(mask[0], mask[2])  # ... but already depends on w
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        hpt(torch.tensor([1.0, 0.0, 0.0]))
    again = HyperPromptTuning.for_model(model, M)
    assert all(torch.equal(a, b) for a, b in zip(hpt.state_dict().values(), again.state_dict().values()))
    from_tokens = HyperPromptTuning.for_model(model, M, init_token_ids=[7, 9])
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(from_tokens.prefix[:3].detach(), embeddings[[7, 9, 7]].detach())


def test_prefix_extends_attention_with_ones_and_targets_with_ignored_positions():
    model, tokenizer = tiny()
    hpt = HyperPromptTuning.for_model(model, M, n_virtual=5)
    batch = pairs(tokenizer)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    virtual = hpt(torch.tensor([0.5, 0.5]))
    out_embeds, attn, resp, ids = prepend_virtual_tokens(
        virtual, embeds, batch["attention_mask"], batch["response_mask"], batch["input_ids"]
    )
    batch_size, length = batch["input_ids"].shape
    assert out_embeds.shape == (batch_size, 5 + length, model.config.hidden_size)
    assert attn[:, :5].eq(1).all() and torch.equal(attn[:, 5:], batch["attention_mask"])
    assert resp[:, :5].eq(0).all() and torch.equal(resp[:, 5:], batch["response_mask"])
    assert torch.equal(ids[:, 5:], batch["input_ids"])
    assert torch.equal(out_embeds[:, :5], virtual.expand(batch_size, -1, -1))
    with pytest.raises(ValueError, match="prefixes for a batch"):
        masks = batch["attention_mask"], batch["response_mask"]
        prepend_virtual_tokens(hpt(torch.rand(3, M)), embeds, *masks, batch["input_ids"])


def test_weights_change_log_probs_and_rows_take_their_own_weights():
    model, tokenizer = tiny()
    hpt = HyperPromptTuning.for_model(model, M)
    batch = pairs(tokenizer)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        a = forward_logprobs(model, hpt, *args, torch.tensor([1.0, 0.0]))
        b = forward_logprobs(model, hpt, *args, torch.tensor([0.0, 1.0]))
        mixed = forward_logprobs(model, hpt, *args, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert (a - b).abs().min() > 1e-5
    torch.testing.assert_close(mixed, torch.stack([a[0], b[1]]))


def test_gradients_reach_hpt_lora_and_prefix_but_not_the_frozen_base():
    model, tokenizer = tiny()
    policy = add_lora(model, r=4, alpha=8)
    randomise_lora(policy, seed=0)
    hpt = HyperPromptTuning.for_model(policy, M)
    batch = pairs(tokenizer)
    w = torch.tensor([[0.3, 0.7], [0.9, 0.1]])
    forward_logprobs(policy, hpt, *batch.values(), w).sum().backward()
    for name, p in hpt.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    lora = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad and p.grad.abs().sum() > 0 for p in lora.values())
    frozen = [p for n, p in policy.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert trainable_parameters(policy) == sum(p.numel() for p in lora.values())


def test_temperature_conditioned_hpt_needs_beta_bar():
    model, tokenizer = tiny()
    hpt = HyperPromptTuning.for_model(model, M, temperature=True)
    assert hpt.mlp_a[0].in_features == 2 * M
    batch = pairs(tokenizer)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"], torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="beta_bar"):
        forward_logprobs(model, hpt, *args)
    with torch.no_grad():
        cold = forward_logprobs(model, hpt, *args, torch.tensor([0.5, 0.5]))
        hot = forward_logprobs(model, hpt, *args, torch.tensor([0.9, 0.1]))
    assert (cold - hot).abs().min() > 1e-6


# ------------------------------------------------------------------------------------------
# LoRA states and interpolation (DPO Soup)


def test_interpolated_adapters_are_exact_at_the_vertices_and_linear_between():
    model, tokenizer = tiny()
    policy = add_lora(model)
    first, second = randomise_lora(policy, seed=1), randomise_lora(policy, seed=2)
    batch = pairs(tokenizer)
    with torch.no_grad():
        load_lora_state(policy, first)
        expected = sequence_logprobs(policy, **batch)
        vertex = interpolate_lora([first, second], [1.0, 0.0])
        assert all(torch.equal(vertex[k], first[k]) for k in first)
        load_lora_state(policy, vertex)
        assert torch.equal(sequence_logprobs(policy, **batch), expected)
    middle = interpolate_lora([first, second], torch.tensor([0.25, 0.75]))
    for key in first:
        torch.testing.assert_close(middle[key], 0.25 * first[key] + 0.75 * second[key])


def test_adapter_layout_mismatches_name_the_key():
    model, _ = tiny()
    policy = add_lora(model)
    state = lora_state(policy)
    key = next(iter(state))
    bad_shape = dict(state, **{key: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        interpolate_lora([state, bad_shape], [0.5, 0.5])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_lora_state(policy, bad_shape)
    with pytest.raises(KeyError, match="missing keys"):
        load_lora_state(policy, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match="one weight per state"):
        interpolate_lora([state, state], [1.0])


# ------------------------------------------------------------------------------------------
# save / load


def test_save_load_round_trip_gives_identical_log_probs(tmp_path):
    model, tokenizer = tiny()
    policy = add_lora(model)
    randomise_lora(policy, seed=3)
    hpt = HyperPromptTuning.for_model(policy, M, n_virtual=6, rank=3)
    with torch.no_grad():
        for p in hpt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
    batch = pairs(tokenizer)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"], torch.tensor([0.4, 0.6]))
    with torch.no_grad():
        expected = forward_logprobs(policy, hpt, *args)
    save_hyper_lm(tmp_path / "hyper", policy, hpt, {"method": "hyperdpo", "objectives": ["a", "b"]})
    assert not list(tmp_path.glob(".hyper.*"))  # no temporary directory left behind

    fresh, _ = tiny()
    loaded, loaded_hpt, meta = load_hyper_lm(tmp_path / "hyper", fresh)
    assert meta == {"method": "hyperdpo", "objectives": ["a", "b"]}
    assert loaded_hpt.config == hpt.config
    with torch.no_grad():
        assert torch.equal(forward_logprobs(loaded, loaded_hpt, *args), expected)


def test_load_names_the_file_on_mismatch(tmp_path):
    model, _ = tiny()
    policy = add_lora(model)
    save_hyper_lm(tmp_path / "hyper", policy, HyperPromptTuning.for_model(policy, M), {})

    wider, _ = tiny_causal_lm(hidden=48)
    with pytest.raises(ValueError, match=HPT_META):
        load_hyper_lm(tmp_path / "hyper", wider)

    weights = tmp_path / "hyper" / HPT_WEIGHTS
    state = load_file(weights)
    state["prefix"] = torch.zeros(3, 3)
    save_file(state, weights)
    with pytest.raises(ValueError, match=rf"{HPT_WEIGHTS}.*prefix"):
        load_hyper_lm(tmp_path / "hyper", tiny()[0])

    meta = json.loads((tmp_path / "hyper" / HPT_META).read_text())
    meta["hpt"]["n_objectives"] = 0
    (tmp_path / "hyper" / HPT_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{HPT_META}.*n_objectives"):
        load_hyper_lm(tmp_path / "hyper", tiny()[0])


def test_hpt_without_adapter_round_trips(tmp_path):
    model, tokenizer = tiny()
    hpt = HyperPromptTuning(HPTConfig(n_objectives=3, hidden_size=model.config.hidden_size))
    save_hyper_lm(tmp_path / "h", model, hpt)
    loaded, loaded_hpt, meta = load_hyper_lm(tmp_path / "h", tiny()[0])
    assert meta == {} and not (tmp_path / "h" / "adapter").exists()
    assert all(torch.equal(a, b) for a, b in zip(hpt.state_dict().values(), loaded_hpt.state_dict().values()))


# ------------------------------------------------------------------------------------------
# generation


def greedy_loop(model, hpt, tokenizer, prompt: str, w: torch.Tensor, n: int) -> str:
    """Reference decoding: one unpadded prompt, full forward per token, no KV cache."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    embedding = model.get_input_embeddings()
    embeds = torch.cat([hpt(w), embedding(ids)], dim=1)
    out: list[int] = []
    for _ in range(n):
        token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
        embeds = torch.cat([embeds, embedding(torch.tensor([[token]]))], dim=1)
    return tokenizer.decode(out, skip_special_tokens=True)


def test_generation_with_prefix_matches_a_reference_loop_under_left_padding():
    model, tokenizer = tiny()
    policy = add_lora(model)
    randomise_lora(policy, seed=5)
    hpt = HyperPromptTuning.for_model(policy, M)
    prompts = ["hi", "a much longer prompt than the first one"]
    w = torch.tensor([0.3, 0.7])
    got = generate_with_prefix(policy, hpt, tokenizer, prompts, w, max_new_tokens=8)
    assert all(isinstance(s, str) for s in got) and len(got) == 2
    with torch.no_grad():
        assert got == [greedy_loop(policy, hpt, tokenizer, p, w, 8) for p in prompts]


def test_sampled_generation_is_deterministic_from_seed_and_works_without_prefix():
    model, tokenizer = tiny()
    hpt = HyperPromptTuning.for_model(model, M)
    prompts = [[{"role": "user", "content": "tell me a story"}]] * 3
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.0)
    a = generate_with_prefix(model, hpt, tokenizer, prompts, torch.tensor([0.5, 0.5]), seed=7, **kwargs)
    b = generate_with_prefix(model, hpt, tokenizer, prompts, torch.tensor([0.5, 0.5]), seed=7, **kwargs)
    c = generate_with_prefix(model, hpt, tokenizer, prompts, torch.tensor([0.5, 0.5]), seed=8, **kwargs)
    assert a == b and a != c
    assert len(set(a)) > 1  # rows sample independently
    plain = generate_with_prefix(model, None, tokenizer, ["hi"], max_new_tokens=4)
    assert len(plain) == 1 and isinstance(plain[0], str)
    with pytest.raises(ValueError, match="needs the trade-off w"):
        generate_with_prefix(model, hpt, tokenizer, ["hi"])


@pytest.mark.parametrize("do_sample", [False, True])
def test_several_samples_per_prompt_run_each_prompt_once_and_equal_repeating_it(do_sample):
    """``num_samples`` without a prefix prefills each prompt once and repeats its cache: the same
    tokens (greedy, and sampled from the same seed) as the prompt repeated ``num_samples`` times
    under left padding, samples consecutive per prompt; with an HPT prefix the prompt is repeated."""
    model, tokenizer = tiny()
    policy = add_lora(model)
    randomise_lora(policy, seed=2)
    prompts = ["hi", "a much longer prompt than the first one", [{"role": "user", "content": "tell me a story"}]]
    kwargs = dict(max_new_tokens=10, do_sample=do_sample, temperature=1.0, seed=11)
    repeated = generate_with_prefix(policy, None, tokenizer, [p for p in prompts for _ in range(3)], **kwargs)
    shared = generate_with_prefix(policy, None, tokenizer, prompts, num_samples=3, **kwargs)
    assert shared == repeated
    if do_sample:
        assert len(set(shared[:3])) > 1  # a prompt's samples differ
    hpt = HyperPromptTuning.for_model(policy, M)
    w = torch.tensor([0.5, 0.5])
    assert generate_with_prefix(policy, hpt, tokenizer, prompts, w, num_samples=2, **kwargs) == generate_with_prefix(
        policy, hpt, tokenizer, [p for p in prompts for _ in range(2)], w, **kwargs)
    with pytest.raises(ValueError, match="num_samples"):
        generate_with_prefix(policy, None, tokenizer, prompts, num_samples=0)


def test_seeded_sampling_draws_what_transformers_sampling_draws_and_keeps_the_models_processors():
    """Sampling through :class:`SeededSampler` gives the tokens of ``generate(do_sample=True)``
    after ``torch.manual_seed`` (plain sampling), with the model's own processors (here its
    ``suppress_tokens``) applied first, and leaves the global generator where it was."""
    from moft.models.hpt import SeededSampler

    model, tokenizer = tiny()
    allowed = tokenizer.convert_tokens_to_ids(["a", "b", "c", "Ġ", "<|im_end|>"])
    model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i not in allowed]
    ids = torch.tensor([tokenizer("tell me a story", add_special_tokens=False).input_ids])
    common = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, pad_token_id=0,
                  eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        expected = model.generate(**common, do_sample=True, temperature=0.7, top_k=0, top_p=1.0)
    before = torch.random.get_rng_state()
    got = model.generate(**common, do_sample=False, logits_processor=[SeededSampler(0.7, 9)])
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(got, expected)
    assert set(got[0, ids.shape[1]:].tolist()) <= set(allowed)
    with pytest.raises(ValueError, match="temperature > 0"):
        SeededSampler(0.0, 1)


def test_concurrent_samplers_keep_their_own_draws():
    """Sampling in several threads at once (finetune jobs of one process) gives each call the
    samples its seed gives alone: no call draws from another's generator."""
    from concurrent.futures import ThreadPoolExecutor

    model, tokenizer = tiny()
    prompts = ["tell me a story", "hi there", "what is the weather like"]
    kwargs = dict(max_new_tokens=16, do_sample=True, temperature=1.0, num_samples=2)
    alone = {seed: generate_with_prefix(model, None, tokenizer, prompts, seed=seed, **kwargs) for seed in range(6)}
    with ThreadPoolExecutor(6) as pool:
        together = dict(zip(range(6), pool.map(
            lambda s: generate_with_prefix(model, None, tokenizer, prompts, seed=s, **kwargs), range(6))))
    assert together == alone
    assert len({tuple(v) for v in alone.values()}) == 6
