"""Reader for svmlight / LETOR ranking files (MSLR-WEB10K/30K, LETOR 4.0).

One line is one item of one query::

    <label> qid:<id> <i>:<value> <i>:<value> ... [# comment]

Feature indices are 1-based and strictly increasing on a line; absent indices are 0. A query is a
contiguous run of lines with the same qid. LETOR 4.0 comments carry ``key = value`` pairs
(``docid = GX015-44-4118282 inc = 1 prob = 0.109``) that may be read as extra columns.

The result is one row per item: ``group_id`` (str), ``label`` (float64), ``f1..fd`` (float32),
then ``c_<field>`` (float64) per requested comment field.

Speed: the per-line Python work is one split and one regex match; the feature values of a whole
chunk of lines are parsed in one call to pandas' C float parser, so no Python object is made per
value (the 5,000-line, 136-feature MSLR sample reads in about 0.3 s).
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# Lines per bulk value parse: bounds the transient memory on million-line MSLR files.
CHUNK_LINES = 50_000
# Inferred feature counts above this mean a garbled index, not a real data set: the dense output
# would need rows * index * 4 bytes. Pass n_features explicitly to go beyond it.
MAX_INFERRED_FEATURES = 100_000

_VALUE = r"[0-9A-Za-z.+-]"  # characters of a float as float() spells it, nan and inf included
# Possessive quantifiers: no backtracking, twice as fast on 136-pair lines.
_PAIRS = re.compile(rf"(?:[0-9]++:{_VALUE}++(?:\s++[0-9]++:{_VALUE}++)*+)?")
_QID = re.compile(r"qid:([^\s:]+)")
_COMMENT_PAIR = re.compile(r"([A-Za-z_]\w*)\s*=\s*(\S+)")
_SEPARATORS = str.maketrans({c: "\n" for c in " \t\r\f\v:"})
_NAN_SPELLINGS = ["nan", "NaN", "NAN", "-nan", "+nan"]


class DataFormatError(ValueError):
    """Malformed input; the message starts with ``<path>:<line>: `` if the line is known."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


@dataclass
class _Chunk:
    """Items of up to CHUNK_LINES data lines, before their features are parsed."""

    line_numbers: list[int] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    pair_texts: list[str] = field(default_factory=list)  # "i:v i:v ..." per line
    comment_values: list[list[float]] = field(default_factory=list)  # per line, per field


def read_letor(
    path: str | Path,
    n_features: int | None = None,
    comment_fields: Sequence[str] = (),
) -> pd.DataFrame:
    """Read one svmlight/LETOR file (plain or ``.gz``) into an ``(n_items, 2 + d + c)`` frame.

    Columns: ``group_id`` (str, the qid), ``label`` (float64), ``f1..fd`` (float32) where ``d`` is
    ``n_features`` or, if None, the largest index in the file, and ``c_<field>`` (float64) for each
    of ``comment_fields``. Raises DataFormatError naming the file and line for malformed input.
    """
    path = Path(path)
    if n_features is not None and n_features < 0:
        raise ValueError(f"n_features must be >= 0 or None, got {n_features}")
    comment_fields = list(comment_fields)
    heads: list[pd.DataFrame] = []  # group_id, label per chunk
    blocks: list[np.ndarray] = []  # (rows, d_chunk) float32 per chunk
    comments: list[pd.DataFrame] = []  # c_<field> per chunk
    for chunk in _read_chunks(path, comment_fields):
        blocks.append(_pairs_to_dense(chunk, path, n_features))
        heads.append(pd.DataFrame({
            "group_id": pd.Series(chunk.group_ids, dtype=str),
            "label": np.array(chunk.labels, dtype=np.float64),
        }))
        comments.append(pd.DataFrame(
            np.array(chunk.comment_values, dtype=np.float64).reshape(len(chunk.labels), -1),
            columns=[f"c_{name}" for name in comment_fields],
        ))
    if not blocks:
        raise DataFormatError(path, None, "no data lines (only blank or comment lines)")
    d = n_features if n_features is not None else max(b.shape[1] for b in blocks)
    features = np.vstack([_pad_columns(b, d) for b in blocks])  # (n_items, d)
    return pd.concat([
        pd.concat(heads, ignore_index=True),
        pd.DataFrame(features, columns=[f"f{i}" for i in range(1, d + 1)]),
        pd.concat(comments, ignore_index=True),
    ], axis=1)


def read_letor_files(
    paths: Sequence[str | Path],
    n_features: int | None = None,
    comment_fields: Sequence[str] = (),
) -> pd.DataFrame:
    """Read several LETOR files into one frame with a common feature count.

    The feature count is ``n_features`` or the largest one inferred over the files (shorter files
    get zero columns). With more than one file, group ids become ``<file stem>:<qid>`` (stem
    without ``.txt``/``.gz``) so that queries of different files never merge.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_letor_files needs at least one path")
    frames = [read_letor(p, n_features, comment_fields) for p in paths]
    if len(frames) == 1:
        return frames[0]
    d = max(_feature_count(f) for f in frames)
    owner: dict[str, Path] = {}
    for path, frame in zip(paths, frames):
        frame["group_id"] = _file_stem(path) + ":" + frame["group_id"]
        for gid in frame["group_id"].unique():
            if gid in owner:
                raise DataFormatError(
                    path, None, f"group id {gid!r} also comes from {owner[gid]}; "
                    "files with the same stem and qids would merge queries, rename one file"
                )
            owner[gid] = path
    return pd.concat([_widen(f, d) for f in frames], ignore_index=True)


def _read_chunks(path: Path, comment_fields: list[str]) -> Iterator[_Chunk]:
    """Yield the data lines of ``path`` in chunks, checking everything but the feature pairs."""
    chunk = _Chunk()
    current_qid: str | None = None
    finished_qids: set[str] = set()
    for lineno, raw in _numbered_lines(path):
        body, _, comment = raw.partition("#")
        fields = body.split(None, 2)
        if not fields:
            continue  # blank or comment-only line
        label, qid, pairs = _parse_head(fields, path, lineno)
        if qid != current_qid:
            if qid in finished_qids:
                raise DataFormatError(
                    path, lineno, f"qid {qid} reappears after other queries; "
                    "the lines of one query must be contiguous"
                )
            if current_qid is not None:
                finished_qids.add(current_qid)
            current_qid = qid
        chunk.line_numbers.append(lineno)
        chunk.group_ids.append(qid)
        chunk.labels.append(label)
        chunk.pair_texts.append(pairs)
        if comment_fields:
            chunk.comment_values.append(_comment_values(comment, comment_fields, path, lineno))
        if len(chunk.labels) == CHUNK_LINES:
            yield chunk
            chunk = _Chunk()
    if chunk.labels:
        yield chunk


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line)``; decoding problems become DataFormatError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(path, lineno, f"not UTF-8 text ({e.reason})") from e
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataFormatError(path, None, f"not a readable gzip file ({e})") from e


def _parse_head(fields: list[str], path: Path, lineno: int) -> tuple[float, str, str]:
    """Split ``[label, qid:<id>, rest]`` into (label, qid, feature-pair text), checking each."""
    try:
        label = float(fields[0])
    except ValueError:
        raise DataFormatError(path, lineno, f"label {fields[0]!r} is not a number") from None
    if len(fields) < 2:
        raise DataFormatError(path, lineno, "missing 'qid:<id>' after the label")
    qid = _QID.fullmatch(fields[1])
    if qid is None:
        raise DataFormatError(
            path, lineno, f"expected 'qid:<id>' after the label, found {fields[1]!r}"
        )
    pairs = fields[2].strip() if len(fields) == 3 else ""
    if not _PAIRS.fullmatch(pairs):
        raise DataFormatError(path, lineno, _describe_bad_pairs(pairs))
    return label, qid.group(1), pairs


def _describe_bad_pairs(pairs: str) -> str:
    """Name the first token of a feature-pair text that is not ``<index>:<value>``."""
    for token in pairs.split():
        index, colon, value = token.partition(":")
        if not colon or not re.fullmatch(f"{_VALUE}+", value):
            return f"feature token {token!r} is not '<index>:<value>'"
        if not re.fullmatch("[0-9]+", index):
            return f"feature index {index!r} in {token!r} is not an integer >= 1"
    return f"feature pairs {pairs[:80]!r} do not parse as '<index>:<value> ...'"


def _comment_values(
    comment: str, comment_fields: list[str], path: Path, lineno: int
) -> list[float]:
    """Values of the requested ``key = value`` fields of one line's trailing comment."""
    found = dict(_COMMENT_PAIR.findall(comment))
    values = []
    for name in comment_fields:
        if name not in found:
            raise DataFormatError(
                path, lineno, f"comment field {name!r} missing (comment: {comment.strip()!r})"
            )
        try:
            values.append(float(found[name]))
        except ValueError:
            raise DataFormatError(
                path, lineno, f"comment field {name!r} = {found[name]!r} is not a number"
            ) from None
    return values


def _pairs_to_dense(chunk: _Chunk, path: Path, n_features: int | None) -> np.ndarray:
    """Parse a chunk's feature pairs into a dense ``(rows, d_chunk)`` float32 block."""
    counts = np.fromiter((t.count(":") for t in chunk.pair_texts), np.int64, len(chunk.pair_texts))
    numbers = _bulk_floats(chunk.pair_texts, int(counts.sum()))
    if numbers is None:
        numbers = _line_by_line_floats(chunk, path)
    indices, values = numbers[0::2], numbers[1::2]  # (n_pairs,) each
    rows = np.repeat(np.arange(len(counts)), counts)  # (n_pairs,) row of each pair
    _check_indices(indices, rows, chunk.line_numbers, path, n_features)
    d_chunk = int(indices.max()) if len(indices) else 0
    block = np.zeros((len(counts), d_chunk), dtype=np.float32)
    block[rows, indices.astype(np.int64) - 1] = values
    return block


def _bulk_floats(pair_texts: list[str], n_pairs: int) -> np.ndarray | None:
    """All indices and values of the chunk, interleaved, ``(2 * n_pairs,)``; None if any fails."""
    if n_pairs == 0:
        return np.empty(0, dtype=np.float64)
    one_per_line = " ".join(pair_texts).translate(_SEPARATORS)
    try:
        frame = pd.read_csv(
            io.StringIO(one_per_line), header=None, names=["v"], dtype=np.float64,
            engine="c", keep_default_na=False, na_values=_NAN_SPELLINGS,
        )
    except ValueError:
        return None
    numbers = frame["v"].to_numpy()
    return numbers if len(numbers) == 2 * n_pairs else None


def _line_by_line_floats(chunk: _Chunk, path: Path) -> np.ndarray:
    """Slow path after a bulk failure: parse each token with float() to name the bad one."""
    numbers: list[float] = []
    for lineno, text in zip(chunk.line_numbers, chunk.pair_texts):
        for token in text.split():
            index, _, value = token.partition(":")
            try:
                numbers.extend((float(index), float(value)))
            except ValueError:
                raise DataFormatError(
                    path, lineno, f"feature value {value!r} in {token!r} is not a number"
                ) from None
    return np.array(numbers, dtype=np.float64)


def _check_indices(
    indices: np.ndarray, rows: np.ndarray, line_numbers: list[int], path: Path,
    n_features: int | None,
) -> None:
    """Indices must be >= 1, strictly increasing within a line, and within the feature count."""
    if not len(indices):
        return
    below = np.flatnonzero(indices < 1)
    if len(below):
        k = below[0]
        raise DataFormatError(
            path, line_numbers[rows[k]], f"feature index {indices[k]:.0f} < 1 (indices are 1-based)"
        )
    same_line = rows[1:] == rows[:-1]
    not_increasing = np.flatnonzero(same_line & (indices[1:] <= indices[:-1]))
    if len(not_increasing):
        k = not_increasing[0] + 1
        raise DataFormatError(
            path, line_numbers[rows[k]],
            f"feature index {indices[k]:.0f} follows {indices[k - 1]:.0f}; "
            "indices must be strictly increasing",
        )
    limit = n_features if n_features is not None else MAX_INFERRED_FEATURES
    above = np.flatnonzero(indices > limit)
    if len(above):
        k = above[0]
        why = (
            f"n_features is {n_features}" if n_features is not None
            else f"more than {MAX_INFERRED_FEATURES} features is taken as a garbled index; "
            "pass n_features to allow it"
        )
        raise DataFormatError(
            path, line_numbers[rows[k]], f"feature index {indices[k]:.0f} is too large ({why})"
        )


def _pad_columns(block: np.ndarray, d: int) -> np.ndarray:
    """Zero-pad ``(rows, d_chunk)`` to ``(rows, d)``."""
    if block.shape[1] == d:
        return block
    return np.pad(block, ((0, 0), (0, d - block.shape[1])))


def _feature_count(frame: pd.DataFrame) -> int:
    return sum(1 for c in frame.columns if re.fullmatch(r"f[0-9]+", c))


def _widen(frame: pd.DataFrame, d: int) -> pd.DataFrame:
    """Insert zero float32 columns so ``frame`` has features ``f1..fd`` in order."""
    have = _feature_count(frame)
    if have == d:
        return frame
    extra = pd.DataFrame(
        np.zeros((len(frame), d - have), dtype=np.float32),
        columns=[f"f{i}" for i in range(have + 1, d + 1)], index=frame.index,
    )
    at = 2 + have  # after group_id, label and the existing features
    return pd.concat([frame.iloc[:, :at], extra, frame.iloc[:, at:]], axis=1)


def _file_stem(path: Path) -> str:
    """``fold1-train-5k.txt.gz`` -> ``fold1-train-5k``."""
    name = path.name
    for suffix in (".gz", ".txt"):
        name = name.removesuffix(suffix)
    return name
