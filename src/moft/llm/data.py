"""Preference groups of the LLM track: prompts, their k responses and per-objective targets.

A prepared split (one row per (prompt, response), see :mod:`moft.data.preferences`) becomes a
:class:`PreferenceGroups`: the unit of batching, training and evaluation of every LM method.
Pairs are the ``k = 2`` case; targets are the ListNet targets ``t(z^j)`` of SPEC 5.1, so with a
binary pair label and ``t = l1`` the listwise loss is exactly DPO's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from moft.config import MoftConfig
from moft.data.preferences import padded_scores
from moft.losses import normalise_labels
from moft.models.lm import Prompt

MESSAGES_COL = "messages"  # chat messages of the prompt as JSON (HH dialogues), optional


@dataclass
class PreferenceGroups:
    """``G`` prompts with up to ``k`` responses each.

    ``targets (G, k, m)`` are normalised per objective (zeros where invalid), ``valid (G, m)``
    says which (prompt, objective) pairs carry a preference (ties and unknowns do not),
    ``mask (G, k)`` marks real responses, ``ref_logps (G, k)`` are the reference policy's
    sequence log-probabilities once the base stage computed them.
    """

    prompt_ids: list[str]
    prompts: list[Prompt]
    responses: list[list[str]]
    targets: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    objectives: list[str]
    ref_logps: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, cfg: MoftConfig) -> PreferenceGroups:
        """Groups of a prepared split; objective columns are ``pref_<name>``/``score_<name>``."""
        if frame.empty:
            raise ValueError("a preference split with no rows cannot form groups")
        lists = padded_scores(frame, ties="skip")
        names = cfg.objective_names
        missing = [n for n in names if n not in lists.objectives]
        if missing:
            raise ValueError(f"prepared preferences lack objective(s) {missing}; have {lists.objectives}")
        raw = torch.as_tensor(lists.scores[..., [lists.objectives.index(n) for n in names]], dtype=torch.float32)
        mask = torch.as_tensor(lists.mask)
        targets, valid = [], []
        for j, objective in enumerate(cfg.objectives):
            z = raw[..., j]
            unknown = (torch.isnan(z) & mask).any(-1)  # a tie/unknown pair: no signal
            t, v = normalise_labels(torch.nan_to_num(z), mask, objective.label_norm)
            targets.append(t * mask)
            valid.append(v & ~unknown)
        first = frame.groupby("prompt_id", sort=False).head(1)
        if MESSAGES_COL in frame.columns:
            prompts: list[Prompt] = [
                json.loads(m) if isinstance(m, str) and m else p
                for m, p in zip(first[MESSAGES_COL], first["prompt"])
            ]
        else:
            prompts = first["prompt"].tolist()
        responses = frame.groupby("prompt_id", sort=False)["response"].apply(list)
        return cls(
            prompt_ids=lists.prompt_ids,
            prompts=prompts,
            responses=[responses[p] for p in lists.prompt_ids],
            targets=torch.stack(targets, -1),
            valid=torch.stack(valid, -1),
            mask=mask,
            objectives=names,
        )

    def subset(self, idx: np.ndarray | list[int]) -> PreferenceGroups:
        idx = np.asarray(idx, dtype=np.int64)
        t = torch.as_tensor(idx)
        return replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            responses=[self.responses[i] for i in idx],
            targets=self.targets[t],
            valid=self.valid[t],
            mask=self.mask[t],
            ref_logps=None if self.ref_logps is None else self.ref_logps[t],
        )

    def batches(self, size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
        """Group indices in batches of ``size``; shuffled when ``rng`` is given."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), size):
            yield order[start : start + size]

    def flat(self, idx: np.ndarray | list[int] | None = None) -> tuple[list[Prompt], list[str], np.ndarray, np.ndarray]:
        """Every (prompt, response) of the groups ``idx`` in order, with its group row (within
        ``idx``) and response slot, for encoding with :func:`moft.models.lm.encode_pairs`."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        prompts, responses, rows, slots = [], [], [], []
        for row, g in enumerate(idx):
            for slot, response in enumerate(self.responses[g]):
                prompts.append(self.prompts[g])
                responses.append(response)
                rows.append(row)
                slots.append(slot)
        return prompts, responses, np.asarray(rows), np.asarray(slots)

    def unflat(self, values: torch.Tensor, rows: np.ndarray, slots: np.ndarray, n_groups: int) -> torch.Tensor:
        """Scatter per-response ``values (N,)`` back into a ``(n_groups, k)`` tensor (0 on padding)."""
        out = values.new_zeros(n_groups, self.mask.shape[1])
        out[torch.as_tensor(rows), torch.as_tensor(slots)] = values
        return out

