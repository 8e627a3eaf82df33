"""Non-toxicity reward: the Jigsaw BiLSTM of ``toxic-comment-classifier`` ported to PyTorch.

The package ships Keras 3 weights (``model/model.weights.h5``) and a pickled Keras tokenizer; its
own code needs TensorFlow, so only its files are used. The network, as built in the package's
``model.py``::

    ids (B, 100) -> Embedding(20000, 50) -> Bidirectional(LSTM(50, return_sequences), concat)
        -> GlobalMaxPooling1D -> Dense(50, relu) -> Dropout(0.1) -> Dense(6, sigmoid)

Keras' LSTM gates are ordered (i, f, c, o) like PyTorch's (i, f, g, o), with kernels stored
``(in, 4h)`` instead of ``(4h, in)`` and one bias instead of two, so the port transposes the
kernels and puts the bias on the input side. The Embedding has no ``mask_zero``: the LSTM reads
the left padding like any token, exactly as in Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from moft.rewards.base import batches, check_pairs, load_once, package_data_dir
from moft.rewards.keras_text import KerasTokenizer, pad_sequences

PIP_SPEC = "toxic-comment-classifier==0.3.0"
LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN = 100  # the package pads/truncates every comment to 100 tokens, on the left ("pre")
_WEIGHTS = "model/model.weights.h5"
_TOKENIZER = "model/tokenizer.pickle"


class BiLSTMToxicityNet(nn.Module):
    """Token ids ``(B, T)`` -> per-label probabilities ``(B, n_labels)``."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, dense: int, n_labels: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * hidden, dense)
        self.out = nn.Linear(dense, n_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embedding(ids))  # (B, T, 2*hidden): [forward, backward] per step
        pooled = h.amax(dim=1)  # (B, 2*hidden)
        return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))

    @classmethod
    def from_keras_h5(cls, path: Path) -> BiLSTMToxicityNet:
        """Build the net with the shapes and weights of a Keras 3 ``.weights.h5`` file."""
        w = read_keras_weights(path)
        vocab_size, embed_dim = w["embedding"].shape
        hidden = w["forward/recurrent_kernel"].shape[0]
        dense, n_labels = w["dense_1/kernel"].shape
        net = cls(vocab_size, embed_dim, hidden, dense, n_labels)
        state = {
            "embedding.weight": w["embedding"],
            "dense.weight": w["dense/kernel"].T,
            "dense.bias": w["dense/bias"],
            "out.weight": w["dense_1/kernel"].T,
            "out.bias": w["dense_1/bias"],
        }
        for keras_dir, suffix in (("forward", ""), ("backward", "_reverse")):
            state[f"lstm.weight_ih_l0{suffix}"] = w[f"{keras_dir}/kernel"].T
            state[f"lstm.weight_hh_l0{suffix}"] = w[f"{keras_dir}/recurrent_kernel"].T
            state[f"lstm.bias_ih_l0{suffix}"] = w[f"{keras_dir}/bias"]
            state[f"lstm.bias_hh_l0{suffix}"] = np.zeros_like(w[f"{keras_dir}/bias"])
        net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        return net.eval()


def read_keras_weights(path: Path) -> dict[str, np.ndarray]:
    """The classifier's arrays from a Keras 3 weights file, by short name.

    Keras 3 stores each layer's variables as ``layers/<layer>/vars/<k>`` in creation order:
    Embedding (embeddings), LSTM cell (kernel, recurrent_kernel, bias), Dense (kernel, bias).
    """
    cell = ("kernel", "recurrent_kernel", "bias")
    with h5py.File(path, "r") as f:
        layers = f["layers"]
        out = {"embedding": layers["embedding/vars/0"][()]}
        for direction in ("forward", "backward"):
            cell_vars = layers[f"bidirectional/{direction}_layer/cell/vars"]
            for k, name in enumerate(cell):
                out[f"{direction}/{name}"] = cell_vars[str(k)][()]
        for dense in ("dense", "dense_1"):
            out[f"{dense}/kernel"] = layers[f"{dense}/vars/0"][()]
            out[f"{dense}/bias"] = layers[f"{dense}/vars/1"][()]
    return out


def classifier_files() -> tuple[Path, Path]:
    """Paths of the installed classifier's (weights .h5, tokenizer pickle)."""
    root = package_data_dir("toxic_classifier", PIP_SPEC, _WEIGHTS, _TOKENIZER)
    return root / _WEIGHTS, root / _TOKENIZER


@load_once
def load_toxicity_classifier() -> tuple[KerasTokenizer, BiLSTMToxicityNet]:
    """The tokenizer and the ported network, loaded once per process."""
    weights, tokenizer = classifier_files()
    return KerasTokenizer.from_pickle(tokenizer), BiLSTMToxicityNet.from_keras_h5(weights)


@dataclass
class ToxicityReward:
    """Non-toxicity of the response: ``1 - P(label | response)``; the prompt is not read.

    ``label`` picks one of the six Jigsaw outputs (default ``toxic``, the broad one).
    """

    label: str = "toxic"
    batch_size: int = 256
    name: str = field(default="toxicity", init=False)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"toxicity label {self.label!r} is not one of {LABELS}")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Keras-identical model inputs ``(N, 100)`` int64, left-padded and left-truncated."""
        tokenizer, _ = load_toxicity_classifier()
        return pad_sequences(tokenizer.texts_to_sequences(texts), MAXLEN, "pre", "pre")

    @torch.no_grad()
    def label_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities ``(N, 6)`` float64 for the labels in ``LABELS`` order."""
        _, net = load_toxicity_classifier()
        ids = torch.from_numpy(self.encode(texts))
        probs = [net(ids[s]) for s in batches(len(texts), self.batch_size)]
        return torch.cat(probs).double().numpy() if probs else np.zeros((0, len(LABELS)))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Non-toxicity ``(N,)`` in [0, 1]."""
        check_pairs(self.name, prompts, responses)
        return 1.0 - self.label_probabilities(responses)[:, LABELS.index(self.label)]
