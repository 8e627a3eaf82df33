"""Preference data for the LLM track (SPEC 3.1, 3.2): readers, the canonical table, splits.

**Canonical table.** One row per (prompt, response); the rows of one prompt are contiguous and
ordered by ``response_idx``:

=================  ========  =======================================================================
column             dtype     meaning
=================  ========  =======================================================================
``prompt_id``      str       ``"<first 12 hex digits of sha1(prompt)>-<source row>"``: stable across
                             runs, distinct for a prompt repeated on several source rows
``prompt``         str       the prompt as read (HH-RLHF: the dialogue up to and including the last
                             ``"\\n\\nAssistant:"``; :func:`dialogue_to_messages` gives chat turns)
``response_idx``   int64     ``0 .. k-1`` within the prompt, ``k >= 2``
``response``       str       the response text, verbatim (HH: ``prompt + response`` is the dialogue)
``score_<name>``   float64   listwise objective: a per-response score, higher is better
``pref_<name>``    int8      pairwise objective, only on ``k = 2`` prompts, the same value on both
                             rows: ``+1`` response 0 better, ``-1`` response 1 better, ``0`` tie or
                             unknown
=================  ========  =======================================================================

Pairs are the ``k = 2`` case of lists: :func:`response_scores` turns every ``pref_<name>`` into a
per-response score (winner 1, loser 0; a 0 becomes 0.5/0.5 with ``ties="half"`` or NaN/NaN, "no
signal for this objective on this prompt", with ``ties="skip"``), so losses see one listwise
shape. :func:`padded_scores` packs those into ``(prompts, k_max, objectives)`` arrays.

**Sources** (:func:`read_preferences`; JSON lines, plain or ``.gz``, or a Hugging Face dataset id):

- ``hh-rlhf``: ``{"chosen": dialogue, "rejected": dialogue}``. Each dialogue is split after its last
  ``"\\n\\nAssistant:"`` into the prompt and the final response; the chosen one is response 0 and
  preferred on the one human-label objective (``harmless`` by default), so its ``pref`` is +1.
- ``pku-saferlhf``: ``prompt``, ``response_0``, ``response_1``, ``better_response_id`` (objective
  ``helpful``) and ``safer_response_id`` (objective ``harmless``), ids 0 or 1.
- ``listwise`` (UltraFeedback-style): ``{"prompt" (or "instruction"): str, "completions": [c,
  ...]}`` with ``c = {"response": str, "<aspect>": rating, ...}`` or, as UltraFeedback writes it,
  ``c = {"response": str, "annotations": {"<aspect>": {"Rating": "4", ...}, ...}}``. Ratings are
  numbers or numeric strings; the aspects are the ``objectives`` argument or, when omitted, the
  annotation keys of the first completion, else its numeric keys. Any k >= 2 per prompt.

**Bad input.** A line that is not the layout fails at once with :class:`DataFormatError` naming
``file:line`` (malformed JSON, not an object, a missing key, a wrong type, an id other than 0/1).
A line that is the layout but carries no usable preference is skipped, listed in
:attr:`PreferenceData.skipped` with its ``file:line``, and counted in one
:class:`SkippedRecordsWarning`: an empty prompt or response, identical responses, fewer than two
responses, HH dialogues whose chosen and rejected prompts differ or that have no assistant turn,
and non-numeric ratings such as UltraFeedback's ``"N/A"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from moft.data.letor import DataFormatError, _numbered_lines
from moft.data.splits import SPLIT_NAMES, split_groups
from moft.io import atomic_dir, atomic_write_json, read_json

LAYOUTS = ("hh-rlhf", "pku-saferlhf", "listwise")
BASE_COLUMNS = ("prompt_id", "prompt", "response_idx", "response")
SCORE_PREFIX = "score_"
PREF_PREFIX = "pref_"
ASSISTANT_TURN = "\n\nAssistant:"
HH_DEFAULT_OBJECTIVE = "harmless"
PKU_OBJECTIVES = {"helpful": "better_response_id", "harmless": "safer_response_id"}
PROMPT_ID_HEX = 12  # 48 bits of sha1: collisions are negligible below millions of prompts
SKIPPED_SHOWN = 5  # locations named per reason in the warning
HUB_PROBE_SECONDS = 3.0
META_FILE = "preferences.json"

Ties = Literal["half", "skip"]

_OBJECTIVE_NAME = re.compile(r"[A-Za-z0-9][\w-]*")
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")
_FILE_SUFFIXES = (".jsonl", ".json", ".gz", ".txt")
_CHAT_ROLES = {"Human": "user", "Assistant": "assistant"}


class SkippedRecordsWarning(UserWarning):
    """Some source records were valid but carried no usable preference and were skipped."""


class PreferenceSourceError(OSError):
    """A source that is neither a local file nor a loadable Hugging Face dataset."""


@dataclass(frozen=True)
class SkippedRecord:
    """One skipped source record: where it is (``file:line``) and why it was skipped."""

    location: str
    reason: str


@dataclass
class PreferenceData:
    """The canonical table read from one source, with what was skipped on the way."""

    frame: pd.DataFrame
    layout: str
    source: str
    records_read: int  # source records looked at (blank lines excluded)
    skipped: list[SkippedRecord] = field(default_factory=list)

    @property
    def objectives(self) -> dict[str, str]:
        """Objective name -> column (``score_<name>`` or ``pref_<name>``)."""
        return objective_columns(self.frame)

    def skip_counts(self) -> dict[str, int]:
        """Skipped records per reason."""
        return dict(Counter(s.reason for s in self.skipped))


@dataclass(frozen=True)
class ScoreLists:
    """Per-response scores of every prompt, padded to the longest list."""

    prompt_ids: list[str]
    objectives: list[str]
    scores: np.ndarray  # (G, k_max, m) float64, NaN on padding and on skipped ties
    mask: np.ndarray  # (G, k_max) bool, True on real responses


@dataclass(frozen=True)
class _Record:
    """One parsed source record: a prompt, its k responses and their labels."""

    prompt: str
    responses: list[str]
    scores: dict[str, list[float]]  # listwise objective -> one score per response
    prefs: dict[str, int]  # pairwise objective -> +1 / -1 / 0 (k = 2)


class _Malformed(ValueError):
    """The record is not the layout: reading fails with file:line."""


class _Skip(ValueError):
    """The record is the layout but has no usable preference: it is skipped and counted."""


# --- reading -----------------------------------------------------------------------------------


def read_preferences(
    source: str | Path,
    layout: str = "auto",
    objectives: Sequence[str] | None = None,
    max_records: int | None = None,
    sample_seed: int | None = None,
    hf_split: str = "train",
    hf_data_dir: str | None = None,
) -> PreferenceData:
    """Read preference records from a JSON-lines file or a Hugging Face dataset id.

    ``source`` is a local ``.jsonl``/``.jsonl.gz`` file; if no such file exists and ``source``
    looks like a hub id (``org/name``), it is loaded with ``datasets.load_dataset(source,
    data_dir=hf_data_dir, split=hf_split)``, which fails fast with PreferenceSourceError offline.
    ``layout`` is one of LAYOUTS or ``"auto"`` (chosen from the keys of the first record).
    ``objectives`` names the objectives: hh-rlhf, the one human label (default ``harmless``);
    pku-saferlhf, a subset of ``helpful``/``harmless`` (default both); listwise, the rated aspects
    (default inferred). ``max_records`` keeps that many prompts: the first ones, or a seeded
    sample when ``sample_seed`` is given. Malformed records raise DataFormatError naming
    ``file:line``; degenerate ones are skipped with one SkippedRecordsWarning (module docstring).
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(
            f"unknown layout {layout!r}; expected 'auto' or one of {', '.join(LAYOUTS)}"
        )
    if max_records is not None and max_records < 1:
        raise ValueError(f"max_records must be >= 1 or None, got {max_records}")
    if sample_seed is not None and max_records is None:
        raise ValueError("sample_seed samples max_records prompts: give max_records too")
    where, rows = _source_rows(source, hf_split, hf_data_dir)
    records: list[tuple[int, _Record]] = []
    skipped: list[SkippedRecord] = []
    records_read = 0
    names: list[str] = []
    for row, record in rows:
        if not records_read:  # the first record settles the layout and the objectives
            if layout == "auto":
                layout = detect_layout(record, where, row)
            if objectives is None:
                objectives = _default_objectives(layout, record, where, row)
            names = _checked_objectives(layout, objectives)
        records_read += 1
        try:
            records.append((row, _PARSERS[layout](record, names)))
        except _Malformed as e:
            raise DataFormatError(where, row, f"{layout} record: {e}") from None
        except _Skip as e:
            skipped.append(SkippedRecord(f"{where}:{row}", str(e)))
        if sample_seed is None and max_records is not None and len(records) == max_records:
            break
    if not records:
        raise DataFormatError(where, None, _nothing_read(records_read, skipped))
    if skipped:
        summary = _skip_summary(where, records_read, skipped)
        warnings.warn(SkippedRecordsWarning(summary), stacklevel=2)
    frame = _records_frame(records)
    if max_records is not None:
        frame = cap_records(frame, max_records, sample_seed)
    return PreferenceData(frame, layout, where, records_read, skipped)


def detect_layout(
    record: Mapping[str, Any], where: str = "<record>", row: int | None = None
) -> str:
    """The layout whose keys ``record`` has; DataFormatError naming the keys when none fits."""
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        return "hh-rlhf"
    if {"response_0", "response_1"} <= keys:
        return "pku-saferlhf"
    if "completions" in keys:
        return "listwise"
    raise DataFormatError(
        where, row, f"unknown layout: keys {sorted(keys)} match none of hh-rlhf ('chosen', "
        "'rejected'), pku-saferlhf ('response_0', 'response_1', ...), listwise ('completions'); "
        "pass layout= explicitly or convert the data",
    )


def split_dialogue(dialogue: str) -> tuple[str, str] | None:
    """Split an HH dialogue after its last ``"\\n\\nAssistant:"``: ``(prompt, response)``.

    ``prompt + response == dialogue``; the response keeps its leading space. None when the
    dialogue has no assistant turn.
    """
    at = dialogue.rfind(ASSISTANT_TURN)
    if at < 0:
        return None
    cut = at + len(ASSISTANT_TURN)
    return dialogue[:cut], dialogue[cut:]


def dialogue_to_messages(dialogue: str) -> list[dict[str, str]]:
    """HH dialogue text -> chat messages ``[{"role": "user"|"assistant", "content": str}, ...]``.

    ``Human:`` turns become ``user``, ``Assistant:`` turns ``assistant``; contents are stripped.
    A trailing empty assistant turn (the end of an HH prompt) is dropped, so an HH prompt becomes
    messages ending with the user turn, ready for ``apply_chat_template(...,
    add_generation_prompt=True)``. Consecutive turns of one role (two in the embedded HH file)
    are merged with a blank line, since many chat templates require alternating roles.
    """
    parts = _TURN.split(dialogue)  # [before, role, text, role, text, ...]
    if parts[0].strip() or len(parts) == 1:
        raise ValueError(
            f"not an HH dialogue: expected it to start with '\\n\\nHuman:', found {dialogue[:40]!r}"
        )
    messages: list[dict[str, str]] = []
    for role, text in zip(parts[1::2], parts[2::2]):
        role, text = _CHAT_ROLES[role], text.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{text}".strip()
        else:
            messages.append({"role": role, "content": text})
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def _source_rows(
    source: str | Path, hf_split: str, hf_data_dir: str | None
) -> tuple[str, Iterator[tuple[int, dict]]]:
    """``(location name, iterator of (row number, record))`` for a local file or a hub id."""
    path = Path(source)
    if path.is_file():
        return str(path), _jsonl_records(path)
    if path.exists():
        raise PreferenceSourceError(f"{path} is not a file (expected a .jsonl or .jsonl.gz file)")
    text = str(source)
    if not _HUB_ID.fullmatch(text) or text.endswith(_FILE_SUFFIXES):
        raise FileNotFoundError(f"preference file {text} does not exist")
    return f"{text}[{hf_split}]", _hub_records(text, hf_split, hf_data_dir)


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """``(1-based line number, JSON object)`` per non-blank line."""
    for lineno, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problem = f"malformed JSON ({e.msg} at column {e.colno})"
            raise DataFormatError(path, lineno, problem) from None
        if not isinstance(record, dict):
            raise DataFormatError(
                path, lineno, f"expected a JSON object per line, found {type(record).__name__}"
            )
        yield lineno, record


def _hub_records(dataset_id: str, split: str, data_dir: str | None) -> Iterator[tuple[int, dict]]:
    """``(0-based row index, record)`` of a Hugging Face dataset split."""
    hint = (
        f"{dataset_id!r} is not a local file, and loading it as a Hugging Face dataset "
        f"(split {split!r}) failed"
    )
    advice = "without a reachable hub, download the data and pass the path of a local .jsonl file"
    if not _hub_offline() and not _hub_reachable():
        raise PreferenceSourceError(f"{hint}: cannot reach the hub ({_hub_endpoint()}); {advice}")
    import datasets  # ~1 s import, only when a hub id is used

    try:
        dataset = datasets.load_dataset(dataset_id, data_dir=data_dir, split=split)
    except Exception as e:  # many kinds: ConnectionError, DatasetNotFoundError, ValueError, ...
        raise PreferenceSourceError(f"{hint}: {type(e).__name__}: {e}; {advice}") from e
    yield from enumerate(dataset)


def _hub_offline() -> bool:
    """Offline mode as huggingface_hub reads it; ``datasets`` then fails fast from its cache."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_reachable() -> bool:
    """A quick TCP probe, so that a machine without network fails in seconds, not after retries.

    Behind a proxy the probe cannot tell, so ``datasets`` is left to try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(_hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def _default_objectives(layout: str, record: dict, where: str, row: int) -> list[str]:
    if layout == "hh-rlhf":
        return [HH_DEFAULT_OBJECTIVE]
    if layout == "pku-saferlhf":
        return list(PKU_OBJECTIVES)
    try:
        return _listwise_aspects(record)
    except _Malformed as e:
        raise DataFormatError(where, row, f"listwise record: {e}") from None


def _checked_objectives(layout: str, objectives: Sequence[str]) -> list[str]:
    objectives = list(objectives)
    if not objectives:
        raise ValueError(f"{layout}: at least one objective is needed, got none")
    if len(set(objectives)) != len(objectives):
        raise ValueError(f"{layout}: objective names must be distinct, got {objectives}")
    for name in objectives:
        if not isinstance(name, str) or not _OBJECTIVE_NAME.fullmatch(name):
            raise ValueError(
                f"objective name {name!r} must be letters, digits, '_' or '-' (it names a column)"
            )
    if layout == "hh-rlhf" and len(objectives) != 1:
        raise ValueError(
            f"hh-rlhf carries one human label, so one objective name; got {objectives}"
        )
    if layout == "pku-saferlhf" and not set(objectives) <= set(PKU_OBJECTIVES):
        raise ValueError(
            f"pku-saferlhf objectives must be among {list(PKU_OBJECTIVES)}, got {objectives}"
        )
    return objectives


# --- layouts -----------------------------------------------------------------------------------


def _parse_hh(record: dict, objectives: list[str]) -> _Record:
    chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
    chosen_split, rejected_split = split_dialogue(chosen), split_dialogue(rejected)
    if chosen_split is None or rejected_split is None:
        raise _Skip("no '\\n\\nAssistant:' turn")
    if chosen_split[0] != rejected_split[0]:
        raise _Skip("chosen/rejected prompts differ")
    prompt = chosen_split[0]
    return _checked_record(
        _Record(prompt, [chosen_split[1], rejected_split[1]], {}, {objectives[0]: 1})
    )


def _parse_pku(record: dict, objectives: list[str]) -> _Record:
    prompt = _text(record, "prompt")
    responses = [_text(record, "response_0"), _text(record, "response_1")]
    prefs = {}
    for name in objectives:
        key = PKU_OBJECTIVES[name]
        if key not in record:
            raise _Malformed(f"missing key {key!r} (objective {name!r})")
        value = record[key]
        if isinstance(value, bool) or value not in (0, 1):
            raise _Malformed(f"key {key!r} must be 0 or 1, found {value!r}")
        prefs[name] = 1 if value == 0 else -1
    return _checked_record(_Record(prompt, responses, {}, prefs))


def _parse_listwise(record: dict, objectives: list[str]) -> _Record:
    prompt_key = "instruction" if "prompt" not in record and "instruction" in record else "prompt"
    prompt = _text(record, prompt_key)
    completions = record.get("completions")
    if not isinstance(completions, list):
        raise _Malformed(
            "missing key 'completions'" if completions is None
            else f"key 'completions' must be a list, found {type(completions).__name__}"
        )
    responses: list[str] = []
    scores: dict[str, list[float]] = {name: [] for name in objectives}
    for i, completion in enumerate(completions):
        if not isinstance(completion, dict):
            found = type(completion).__name__
            raise _Malformed(f"completions[{i}] must be an object, found {found}")
        responses.append(_text(completion, "response", f"completions[{i}]"))
        for name in objectives:
            scores[name].append(_rating(completion, name, i))
    return _checked_record(_Record(prompt, responses, scores, {}))


def _listwise_aspects(record: dict) -> list[str]:
    """Aspects of the first completion: its annotation keys, else its numeric keys."""
    completions = record.get("completions")
    if not isinstance(completions, list) or not completions or not isinstance(completions[0], dict):
        raise _Malformed(
            "cannot infer the rated aspects: 'completions' is not a non-empty list of objects"
        )
    first = completions[0]
    if isinstance(first.get("annotations"), dict) and first["annotations"]:
        return list(first["annotations"])
    aspects = [
        k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if not aspects:
        raise _Malformed(
            "cannot infer the rated aspects: completions[0] has no numeric key and no "
            "'annotations'; pass objectives=[...]"
        )
    return aspects


def _rating(completion: dict, aspect: str, i: int) -> float:
    """``completion[aspect]`` or UltraFeedback's ``completion["annotations"][aspect]["Rating"]``."""
    if aspect in completion:
        value, key = completion[aspect], f"completions[{i}].{aspect}"
    elif isinstance(completion.get("annotations"), dict) and aspect in completion["annotations"]:
        value, key = completion["annotations"][aspect], f"completions[{i}].annotations.{aspect}"
        if isinstance(value, dict):
            if "Rating" not in value:
                raise _Malformed(f"missing key 'Rating' in {key}")
            value, key = value["Rating"], f"{key}.Rating"
    else:
        raise _Malformed(
            f"missing key {aspect!r} in completions[{i}] (looked for '{aspect}' and "
            f"'annotations.{aspect}')"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Malformed(f"{key} must be a number or a numeric string, found {value!r}")
    try:
        rating = float(value)
    except ValueError:
        raise _Skip(f"non-numeric rating for '{aspect}'") from None
    if not np.isfinite(rating):
        raise _Skip(f"non-numeric rating for '{aspect}'")
    return rating


def _text(record: dict, key: str, within: str = "") -> str:
    if key not in record:
        raise _Malformed(f"missing key {key!r}" + (f" in {within}" if within else ""))
    value = record[key]
    if not isinstance(value, str):
        name = f"{within}.{key}" if within else key
        raise _Malformed(f"key {name!r} must be a string, found {type(value).__name__}")
    return value


def _checked_record(record: _Record) -> _Record:
    """Skip records that carry no usable preference (the module docstring lists them)."""
    if not record.prompt.strip():
        raise _Skip("empty prompt")
    if len(record.responses) < 2:
        raise _Skip("fewer than 2 responses")
    if any(not r.strip() for r in record.responses):
        raise _Skip("empty response")
    if len(set(record.responses)) < len(record.responses):
        raise _Skip("identical responses")
    return record


_PARSERS = {"hh-rlhf": _parse_hh, "pku-saferlhf": _parse_pku, "listwise": _parse_listwise}


def _nothing_read(records_read: int, skipped: list[SkippedRecord]) -> str:
    if not records_read:
        return "no records (the source is empty)"
    reasons = Counter(s.reason for s in skipped)
    counts = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
    return f"all {records_read} records were skipped: {counts}"


def _skip_summary(where: str, records_read: int, skipped: list[SkippedRecord]) -> str:
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason, []).append(s.location)
    parts = []
    for reason, locations in by_reason.items():
        shown = ", ".join(locations[:SKIPPED_SHOWN])
        shown += ", ..." if len(locations) > SKIPPED_SHOWN else ""
        parts.append(f"{len(locations)} {reason} ({shown})")
    return f"{where}: skipped {len(skipped)} of {records_read} records: " + "; ".join(parts)


def _records_frame(records: list[tuple[int, _Record]]) -> pd.DataFrame:
    """The canonical table of parsed records (module docstring)."""
    first = records[0][1]
    columns: dict[str, list] = {name: [] for name in BASE_COLUMNS}
    columns |= {SCORE_PREFIX + name: [] for name in first.scores}
    columns |= {PREF_PREFIX + name: [] for name in first.prefs}
    for row, record in records:
        k = len(record.responses)
        columns["prompt_id"] += [make_prompt_id(record.prompt, row)] * k
        columns["prompt"] += [record.prompt] * k
        columns["response_idx"] += range(k)
        columns["response"] += record.responses
        for name, values in record.scores.items():
            columns[SCORE_PREFIX + name] += values
        for name, value in record.prefs.items():
            columns[PREF_PREFIX + name] += [value] * k
    dtypes = {"prompt_id": "str", "prompt": "str", "response_idx": np.int64, "response": "str"}
    dtypes |= {SCORE_PREFIX + name: np.float64 for name in first.scores}
    dtypes |= {PREF_PREFIX + name: np.int8 for name in first.prefs}
    return pd.DataFrame(
        {col: pd.Series(values, dtype=dtypes[col]) for col, values in columns.items()}
    )


def make_prompt_id(prompt: str, row: int) -> str:
    """``"<12 hex digits of sha1(prompt)>-<source row>"``: stable, and distinct per source row."""
    return f"{_prompt_digest(prompt)[:PROMPT_ID_HEX]}-{row}"


def _prompt_digest(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()


# --- objectives as per-response scores ---------------------------------------------------------


def objective_columns(frame: pd.DataFrame) -> dict[str, str]:
    """Objective name -> column, for every ``score_<name>`` and ``pref_<name>`` column in order."""
    found: dict[str, str] = {}
    for col in frame.columns:
        for prefix in (SCORE_PREFIX, PREF_PREFIX):
            if col.startswith(prefix):
                name = col[len(prefix):]
                if name in found:
                    raise ValueError(
                        f"objective {name!r} has both {found[name]} and {col}; keep one of them"
                    )
                found[name] = col
    return found


def response_scores(frame: pd.DataFrame, ties: Ties = "half") -> pd.DataFrame:
    """Every objective as a per-response score: ``score_<name>`` columns, rows as in ``frame``.

    Listwise columns are copied. A pairwise ``pref_<name>`` (prompts of exactly two responses)
    becomes 1 for the preferred response and 0 for the other; a 0 (tie or unknown) becomes 0.5 on
    both with ``ties="half"`` (a uniform ListNet target; a DPO label of 1/2) or NaN on both with
    ``ties="skip"`` (the loss should leave that prompt out for that objective).
    """
    if ties not in ("half", "skip"):
        raise ValueError(f"ties must be 'half' or 'skip', got {ties!r}")
    out = pd.DataFrame(index=frame.index)
    for name, col in objective_columns(frame).items():
        if col.startswith(SCORE_PREFIX):
            out[SCORE_PREFIX + name] = frame[col].to_numpy(np.float64)
            continue
        idx = frame["response_idx"].to_numpy()
        sizes = frame.groupby("prompt_id", sort=False)["response_idx"].transform("size").to_numpy()
        if (sizes != 2).any() or not np.isin(idx, (0, 1)).all():
            raise ValueError(
                f"pairwise objective {name!r} ({col}) needs exactly two responses (response_idx "
                "0 and 1) per prompt; some prompt has a different number"
            )
        pref = frame[col].to_numpy(np.float64)
        side = np.where(idx == 0, 1.0, -1.0)  # +1 on response 0, -1 on response 1
        score = 0.5 + 0.5 * pref * side  # winner 1, loser 0, tie 0.5
        if ties == "skip":
            score[pref == 0] = np.nan
        out[SCORE_PREFIX + name] = score
    return out


def padded_scores(frame: pd.DataFrame, ties: Ties = "half") -> ScoreLists:
    """Per-response scores of every prompt as ``(G, k_max, m)`` arrays (see response_scores).

    Rows of one prompt must be contiguous (the canonical table guarantees it).
    """
    scores = response_scores(frame, ties).to_numpy(np.float64)  # (N, m)
    gid = frame["prompt_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]]) if len(gid) else np.array([], int)
    sizes = np.diff(np.r_[starts, len(gid)])
    k_max = int(sizes.max()) if len(sizes) else 0
    slot = np.arange(len(gid)) - np.repeat(starts, sizes)  # position within its prompt
    group = np.repeat(np.arange(len(starts)), sizes)
    padded = np.full((len(starts), k_max, scores.shape[1]), np.nan)
    padded[group, slot] = scores
    mask = np.zeros((len(starts), k_max), dtype=bool)
    mask[group, slot] = True
    return ScoreLists([str(g) for g in gid[starts]], list(objective_columns(frame)), padded, mask)


# --- caps, splits, files -----------------------------------------------------------------------


def cap_records(frame: pd.DataFrame, max_records: int, seed: int | None = None) -> pd.DataFrame:
    """Keep ``max_records`` prompts: the first ones, or a seeded sample (in source order)."""
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    ids = frame["prompt_id"].unique()
    if len(ids) <= max_records:
        return frame
    if seed is None:
        keep = ids[:max_records]
    else:
        chosen = np.random.default_rng(seed).choice(len(ids), max_records, replace=False)
        keep = ids[np.sort(chosen)]
    return frame[frame["prompt_id"].isin(keep)].reset_index(drop=True)


def split_preferences(
    frame: pd.DataFrame,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Split by prompt into ``{"train", "val", "test"}``, deterministically from ``seed``.

    The unit is the prompt *text* (its sha1), not the prompt id, so a prompt repeated on several
    source rows lands in one split and never leaks between train and test.
    """
    digests = frame["prompt"].map(_prompt_digest)
    assignment = split_groups(digests.unique().tolist(), fractions, seed)
    split_of = {d: name for name, members in assignment.items() for d in members}
    which = digests.map(split_of)
    return {name: frame[which == name].reset_index(drop=True) for name in SPLIT_NAMES}


def save_splits(
    splits: Mapping[str, pd.DataFrame], out_dir: Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write ``<split>.parquet`` per split and ``preferences.json`` into ``out_dir``, atomically.

    ``preferences.json`` holds the objective columns, per-split prompt and response counts and
    ``meta``. The directory is replaced as a whole; a failure leaves the previous one intact.
    """
    columns = {name: list(frame.columns) for name, frame in splits.items()}
    if len({tuple(c) for c in columns.values()}) > 1:
        raise ValueError(f"all splits must have the same columns, got {columns}")
    first = next(iter(splits.values()))
    summary = {
        "objectives": objective_columns(first),
        "splits": {
            name: {"prompts": int(frame["prompt_id"].nunique()), "responses": len(frame)}
            for name, frame in splits.items()
        },
        **dict(meta or {}),
    }
    with atomic_dir(Path(out_dir)) as tmp:
        for name, frame in splits.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        atomic_write_json(tmp / META_FILE, summary)
    return Path(out_dir)


def load_splits(directory: Path, names: Iterable[str] = SPLIT_NAMES) -> dict[str, pd.DataFrame]:
    """Read the splits written by save_splits; FileNotFoundError names a missing one."""
    directory = Path(directory)
    splits = {}
    for name in names:
        path = directory / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"prepared preference split {path} does not exist (run prepare)"
            )
        splits[name] = pd.read_parquet(path)
    return splits


def load_split_meta(directory: Path) -> dict[str, Any]:
    """The ``preferences.json`` summary written by save_splits."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (run prepare)")
    return read_json(path)
