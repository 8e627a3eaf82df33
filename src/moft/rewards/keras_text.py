"""Keras' legacy text preprocessing without Keras: a pickled ``Tokenizer`` and ``pad_sequences``.

The pickle is read by a restricted unpickler that builds nothing but plain containers, so a
tampered file cannot run code. ``texts_to_sequences`` and ``pad_sequences`` follow
``keras.src.legacy.preprocessing.text`` and ``keras.src.utils.sequence_utils`` line for line.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

# Classes the toxic-comment-classifier tokenizer pickle refers to; any other is refused.
_KERAS_TOKENIZER = {
    ("keras.src.legacy.preprocessing.text", "Tokenizer"),
    ("keras.preprocessing.text", "Tokenizer"),
    ("keras_preprocessing.text", "Tokenizer"),
}
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,
}


class _TokenizerState:
    """Receives the pickled Tokenizer's ``__dict__``; has no behaviour of its own."""


class _TokenizerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _KERAS_TOKENIZER:
            return _TokenizerState
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing {module}.{name} in a Keras tokenizer pickle; only the Tokenizer and "
            f"{sorted(f'{m}.{n}' for m, n in _ALLOWED)} are allowed"
        )


@dataclass(frozen=True)
class KerasTokenizer:
    """The parts of a fitted Keras ``Tokenizer`` that ``texts_to_sequences`` uses.

    ``word_index`` keeps only the words ``texts_to_sequences`` can emit (index < ``num_words``)
    plus the OOV token, if any.
    """

    word_index: dict[str, int]
    filters: str
    lower: bool
    split: str
    num_words: int | None
    oov_token: str | None

    @classmethod
    def from_pickle(cls, path: Path) -> KerasTokenizer:
        """Read a pickled ``keras...Tokenizer`` without Keras (word-level, no custom analyzer)."""
        with open(path, "rb") as fh:
            state = vars(_TokenizerUnpickler(fh).load())
        if state.get("char_level") or state.get("analyzer") is not None:
            raise ValueError(
                f"{path}: only word-level Keras tokenizers without a custom analyzer are supported"
            )
        num_words, oov = state["num_words"], state["oov_token"]
        word_index = {
            w: i for w, i in state["word_index"].items() if not num_words or i < num_words or w == oov
        }
        return cls(word_index, state["filters"], state["lower"], state["split"], num_words, oov)

    def text_to_word_sequence(self, text: str) -> list[str]:
        """Lower-case, turn every filter character into the separator, split, drop empties."""
        if self.lower:
            text = text.lower()
        text = text.translate(str.maketrans({c: self.split for c in self.filters}))
        return [w for w in text.split(self.split) if w]

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        """Word indices per text; words that are unknown or ranked ``>= num_words`` become the OOV
        index when the tokenizer has an OOV token and are dropped otherwise."""
        oov_index = self.word_index.get(self.oov_token) if self.oov_token is not None else None
        sequences = []
        for text in texts:
            seq = []
            for word in self.text_to_word_sequence(text):
                i = self.word_index.get(word)
                if i is not None and not (self.num_words and i >= self.num_words):
                    seq.append(i)
                elif oov_index is not None:
                    seq.append(oov_index)
            sequences.append(seq)
        return sequences


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    maxlen: int,
    padding: Literal["pre", "post"] = "pre",
    truncating: Literal["pre", "post"] = "pre",
    value: int = 0,
) -> np.ndarray:
    """Keras ``pad_sequences`` for int sequences: ``(N, maxlen)`` int64.

    ``truncating="pre"`` keeps the last ``maxlen`` items, ``padding="pre"`` fills on the left;
    empty sequences become all ``value``.
    """
    for arg, given in (("padding", padding), ("truncating", truncating)):
        if given not in ("pre", "post"):
            raise ValueError(f"{arg} must be 'pre' or 'post', got {given!r}")
    out = np.full((len(sequences), maxlen), value, dtype=np.int64)
    for row, seq in zip(out, sequences):
        kept = list(seq[-maxlen:] if truncating == "pre" else seq[:maxlen])
        if not kept:
            continue
        if padding == "pre":
            row[-len(kept):] = kept
        else:
            row[: len(kept)] = kept
    return out
