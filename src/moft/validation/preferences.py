"""Great Expectations suite for prepared preference splits (SPEC 3.4, LLM track).

The splits (the canonical table of ``moft.data.preferences``) are checked through four tables,
one GX batch each, in the manner of ``moft.validation.ltr``:

- ``schema``: one row per (split, required column) with its dtype (``None`` when missing);
- ``responses``: every split stacked with a ``split`` column: ids, stripped text lengths, the
  objective columns as float64, and per pairwise objective its per-response target (winner 1,
  loser 0, tie 0.5), on which "non-constant" is judged;
- ``prompts``: one row per contiguous run of a prompt id within a split: its number of responses,
  whether ``response_idx`` runs ``0..k-1``, and the distinct preference values of each pair;
- ``prompt_splits``: one row per distinct (prompt id, split).

Failures are reported, one readable line each, through the LTR suite's ValidationResult,
DataValidationError (raise_for_failures) and write_report (JSON + GX data docs).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import pandas as pd

from moft.data.preferences import PREF_PREFIX, SCORE_PREFIX, objective_columns
from moft.validation.ltr import (
    FINITE_MAX,
    GROUP_ID_DTYPES,
    NUMERIC_DTYPES,
    DataValidationError,
    RunIdentifier,
    ValidationResult,
    _constant,
    _ephemeral_context,
    _examples,
    _located_rows,
    _missing_column,
    _null_values,
    _out_of_bounds,
    _run_tables,
    split_describers,
    _Table,
    _where,
    gxe,
    raise_for_failures,
    write_report,
)

__all__ = ["DataValidationError", "raise_for_failures", "validate_preferences", "write_report"]

TEXT_DTYPES = GROUP_ID_DTYPES
INTEGER_DTYPES = tuple(d for d in NUMERIC_DTYPES if "int" in d.lower())
PREF_VALUES = [-1.0, 0.0, 1.0]
ROW_INDEX = ["split", "prompt_id", "response_idx"]  # columns that locate a bad response
PROMPT_INDEX = ["split", "prompt_id"]

_ROLE_DTYPES = {
    "text": TEXT_DTYPES,
    "index": INTEGER_DTYPES,
    "score": NUMERIC_DTYPES,
    "pref": NUMERIC_DTYPES,
}
_EXPECTED_DTYPE = {
    "text": "a string dtype",
    "index": "an integer dtype",
    "score": "a numeric dtype (float or int)",
    "pref": "a numeric dtype (int8 values -1, 0, 1)",
}


def validate_preferences(
    splits: Mapping[str, pd.DataFrame], objective_cols: Mapping[str, str] | None = None
) -> ValidationResult:
    """Run the preference suite over prepared splits.

    ``objective_cols`` maps an objective name to its column (``{"harmless": "pref_harmless"}``);
    by default every ``score_<name>``/``pref_<name>`` column of any split. Checks: required
    columns and dtypes per split; no nulls; non-empty (not blank) prompts and responses;
    ``response_idx`` running 0..k-1 within each prompt, k >= 2, and k = 2 where an objective is
    pairwise; preference values in {-1, 0, 1} and the same on both rows of a pair; scores finite;
    (prompt_id, response_idx) unique per split and the rows of a prompt contiguous; no prompt id in
    two splits; no split empty; every objective non-constant across the dataset (a pairwise one
    must have at least one pair that is not a tie).
    """
    if not splits:
        raise ValueError("validate_preferences needs at least one split, got none")
    objective_cols = dict(objective_cols) if objective_cols is not None else _all_objectives(splits)
    if not objective_cols:
        raise ValueError(
            "validate_preferences needs at least one objective column (score_<name> or "
            "pref_<name>), found none"
        )
    for name, col in objective_cols.items():
        if not col.startswith((SCORE_PREFIX, PREF_PREFIX)):
            raise ValueError(
                f"objective {name!r}: column {col!r} must start with {SCORE_PREFIX!r} (listwise) "
                f"or {PREF_PREFIX!r} (pairwise)"
            )

    roles = {
        "prompt_id": ("text", "prompt id"),
        "prompt": ("text", "prompt text"),
        "response_idx": ("index", "response index"),
        "response": ("text", "response text"),
    }
    roles |= {
        col: ("score" if col.startswith(SCORE_PREFIX) else "pref", f"objective '{name}'")
        for name, col in objective_cols.items()
    }
    usable = _usable_columns(splits, roles)
    stacked = pd.concat(
        [frame[usable].assign(split=split) for split, frame in splits.items()], ignore_index=True
    )
    context = _ephemeral_context()
    source = context.data_sources.add_pandas("moft_preferences")
    run_id = RunIdentifier(
        run_name="validate_preferences", run_time=datetime.datetime.now(datetime.UTC)
    )
    tables = [
        _schema_table(splits, roles),
        _responses_table(stacked, usable, objective_cols),
        *_prompt_tables(stacked, usable, objective_cols, list(splits)),
    ]
    return _run_tables(source, tables, run_id, _DESCRIBERS)


def _all_objectives(splits: Mapping[str, pd.DataFrame]) -> dict[str, str]:
    found: dict[str, str] = {}
    for frame in splits.values():
        found |= objective_columns(frame)
    return found


def _usable_columns(
    splits: Mapping[str, pd.DataFrame], roles: dict[str, tuple[str, str]]
) -> list[str]:
    """Columns present in every split with a dtype of their role (the schema table names others)."""
    return [
        col
        for col, (role, _) in roles.items()
        if all(
            col in frame.columns and str(frame[col].dtype) in _ROLE_DTYPES[role]
            for frame in splits.values()
        )
    ]


# --- tables ------------------------------------------------------------------------------------


def _schema_table(
    splits: Mapping[str, pd.DataFrame], roles: dict[str, tuple[str, str]]
) -> _Table:
    rows = [
        {
            "split": split,
            "column": col,
            "role": role,
            "describes": describes,
            "dtype": str(frame[col].dtype) if col in frame.columns else None,
        }
        for split, frame in splits.items()
        for col, (role, describes) in roles.items()
    ]
    allowed = [(role, dtype) for role, dtypes in _ROLE_DTYPES.items() for dtype in dtypes]
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="dtype", meta={"check": "missing_column"}),
        gxe.ExpectColumnPairValuesToBeInSet(
            column_A="role",
            column_B="dtype",
            value_pairs_set=allowed,
            ignore_row_if="either_value_is_missing",  # a missing column is reported above
            meta={"check": "dtype"},
        ),
    ]
    return _Table("schema", pd.DataFrame(rows), expectations, ["split", "column", "describes"])


def _responses_table(
    stacked: pd.DataFrame, usable: list[str], objective_cols: dict[str, str]
) -> _Table:
    """One row per response. Numeric columns are float64 (GX is vectorised only for those)."""
    table = pd.DataFrame({"split": stacked["split"]})
    for col in ("prompt_id", "response_idx"):
        if col in usable:
            table[col] = stacked[col].to_numpy()
    expectations = []
    for col, describes in (("prompt", "prompt text"), ("response", "response text")):
        if col in usable:
            table[f"{col}_chars"] = stacked[col].str.strip().str.len().astype(np.float64)
            subject = f"{describes} column '{col}'"
            expectations += [
                gxe.ExpectColumnValuesToNotBeNull(
                    column=f"{col}_chars", meta={"check": "null", "subject": subject}
                ),
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{col}_chars", min_value=1, meta={"check": "empty_text", "subject": col}
                ),
            ]
    for col, subject in (("prompt_id", "prompt id column 'prompt_id'"),
                         ("response_idx", "response index column 'response_idx'")):  # fmt: skip
        if col in usable:
            expectations.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=col, meta={"check": "null", "subject": subject}
                )
            )
    if "response_idx" in usable:
        table["response_idx"] = table["response_idx"].astype(np.float64)
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="response_idx", min_value=0,
                meta={"check": "bounds", "subject": "response index column 'response_idx'",
                      "expected": "values >= 0"},
            )
        )  # fmt: skip
    if {"prompt_id", "response_idx"} <= set(usable):
        expectations.append(
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=ROW_INDEX, meta={"check": "duplicate_response"}
            )
        )
    for name, col in objective_cols.items():
        if col not in usable:
            continue
        values = stacked[col].to_numpy(np.float64)
        table[col] = values
        subject = f"objective '{name}' (column {col})"
        expectations.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=col, meta={"check": "null", "subject": subject}
            )
        )
        if col.startswith(SCORE_PREFIX):
            expectations += [
                gxe.ExpectColumnValuesToBeBetween(
                    column=col, min_value=-FINITE_MAX, max_value=FINITE_MAX,
                    meta={"check": "bounds", "subject": subject,
                          "expected": "finite values (no +/-inf)"},
                ),
                gxe.ExpectColumnUniqueValueCountToBeBetween(
                    column=col, min_value=2,
                    meta={"check": "constant", "subject": subject, "role": "objective"},
                ),
            ]  # fmt: skip
            continue
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=col, value_set=PREF_VALUES, meta={"check": "pref_values", "subject": subject}
            )
        )
        if "response_idx" in table:
            side = np.where(table["response_idx"].to_numpy() == 0, 1.0, -1.0)
            table[f"target_{name}"] = 0.5 + 0.5 * values * side  # winner 1, loser 0, tie 0.5
            expectations.append(
                gxe.ExpectColumnUniqueValueCountToBeBetween(
                    column=f"target_{name}", min_value=2,
                    meta={"check": "no_signal", "subject": subject},
                )
            )
    index = [c for c in ROW_INDEX if c in table]
    return _Table("responses", table, expectations, index)


def _prompt_tables(
    stacked: pd.DataFrame, usable: list[str], objective_cols: dict[str, str], split_names: list[str]
) -> list[_Table]:
    """The per-prompt table (one row per contiguous run) and the (prompt id, split) table.

    Without a usable prompt id column there are no prompts to check (the schema names it).
    """
    if "prompt_id" not in usable:
        return []
    runs = _contiguous_prompts(stacked, usable, objective_cols)
    pairwise = [name for name, col in objective_cols.items() if col.startswith(PREF_PREFIX)]
    expectations = [
        gxe.ExpectColumnValuesToBeBetween(
            column="n_responses", min_value=2, meta={"check": "too_few_responses"}
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=PROMPT_INDEX, meta={"check": "collision"}),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=split_names, meta={"check": "empty_split"}
        ),
    ]
    if pairwise:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="n_responses", max_value=2,
                meta={"check": "not_a_pair", "objectives": pairwise},
            )
        )  # fmt: skip
    if "response_order_ok" in runs:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="response_order_ok", value_set=[True], meta={"check": "response_order"}
            )
        )
    for name in pairwise:
        col = objective_cols[name]
        if f"{col}_distinct" in runs:
            subject = f"objective '{name}' (column {col})"
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{col}_distinct", max_value=1,
                    meta={"check": "pref_mismatch", "subject": subject},
                )
            )  # fmt: skip
    prompts = _Table("prompts", runs, expectations, PROMPT_INDEX)
    prompt_splits = _Table(
        "prompt_splits",
        runs[["prompt_id", "split"]].drop_duplicates(ignore_index=True),
        [gxe.ExpectColumnValuesToBeUnique(column="prompt_id", meta={"check": "leak"})],
        PROMPT_INDEX,
    )
    return [prompts, prompt_splits]


def _contiguous_prompts(
    stacked: pd.DataFrame, usable: list[str], objective_cols: dict[str, str]
) -> pd.DataFrame:
    """One row per run of equal consecutive (split, prompt id): a prompt is a block of rows."""
    ids = stacked["prompt_id"].to_numpy()
    split = stacked["split"].to_numpy()
    starts = np.ones(len(ids), dtype=bool)
    starts[1:] = (ids[1:] != ids[:-1]) | (split[1:] != split[:-1])
    run = np.cumsum(starts) - 1  # (N,) run number of each row
    first = np.flatnonzero(starts)
    sizes = np.diff(np.append(first, len(ids)))
    runs = pd.DataFrame({
        "split": split[first], "prompt_id": ids[first], "n_responses": sizes.astype(np.int64),
    })  # fmt: skip
    if "response_idx" in usable:
        slot = np.arange(len(ids)) - np.repeat(first, sizes)  # (N,) position within the run
        in_place = stacked["response_idx"].to_numpy() == slot
        runs["response_order_ok"] = np.logical_and.reduceat(in_place, first) if len(first) else []
    for col in objective_cols.values():
        if col.startswith(PREF_PREFIX) and col in usable:
            distinct = pd.Series(stacked[col].to_numpy()).groupby(run).nunique()
            runs[f"{col}_distinct"] = distinct.to_numpy(np.int64)
    return runs


# --- reading results ---------------------------------------------------------------------------


def _prompt_ids(rows: list[dict]) -> str:
    return "prompt_id " + _examples([row["prompt_id"] for row in rows if "prompt_id" in row])


def _bad_dtype(table: _Table, result) -> list[str]:
    return [
        f"split '{row['split']}': column '{row['column']}' ({row['describes']}) has dtype "
        f"{row['dtype']}, expected {_EXPECTED_DTYPE[row['role']]}"
        for row in _located_rows(result)
    ]


def _empty_text(table: _Table, result) -> list[str]:
    rows, what = _located_rows(result), result.expectation_config.meta["subject"]
    where = f"{_where(rows)}: " if rows else ""
    return [
        f"{where}{result.result['unexpected_count']} {what}(s) are empty or blank "
        f"({_prompt_ids(rows)}), expected non-empty {what}s"
    ]


def _pref_values(table: _Table, result) -> list[str]:
    rows, res = _located_rows(result), result.result
    return [
        f"{_where(rows)}: {result.expectation_config.meta['subject']} has "
        f"{res['unexpected_count']} value(s) outside {{-1, 0, 1}} (e.g. "
        f"{_examples(res['partial_unexpected_list'])}), expected +1 (response 0 better), "
        "-1 (response 1 better) or 0 (tie/unknown)"
    ]


def _no_signal(table: _Table, result) -> list[str]:
    return [
        f"{result.expectation_config.meta['subject']} carries no preference: every pair is a "
        "tie/unknown (0) across the dataset; it cannot be an objective"
    ]


def _duplicate_responses(table: _Table, result) -> list[str]:
    rows = _located_rows(result)
    pairs = _examples([(row["prompt_id"], int(row["response_idx"])) for row in rows])
    return [
        f"{_where(rows)}: (prompt_id, response_idx) {pairs} appear(s) more than once: "
        "responses must be unique per prompt within a split"
    ]


def _too_few_responses(table: _Table, result) -> list[str]:
    rows = _located_rows(result)
    return [
        f"{_where(rows)}: {result.result['unexpected_count']} prompt(s) have fewer than 2 "
        f"responses ({_prompt_ids(rows)}), expected k >= 2 responses per prompt"
    ]


def _not_a_pair(table: _Table, result) -> list[str]:
    rows, names = _located_rows(result), result.expectation_config.meta["objectives"]
    return [
        f"{_where(rows)}: {result.result['unexpected_count']} prompt(s) have more than 2 "
        f"responses ({_prompt_ids(rows)}), but pairwise objective(s) "
        + ", ".join(f"'{n}'" for n in names)
        + " need exactly 2 (use score_<name> columns for lists)"
    ]


def _response_order(table: _Table, result) -> list[str]:
    rows = _located_rows(result)
    return [
        f"{_where(rows)}: {_prompt_ids(rows)}: response_idx does not run 0, 1, ..., k-1 in row "
        "order within the prompt"
    ]


def _pref_mismatch(table: _Table, result) -> list[str]:
    rows = _located_rows(result)
    return [
        f"{_where(rows)}: {result.expectation_config.meta['subject']} differs between the two "
        f"rows of {_prompt_ids(rows)}: a pair has one preference, repeated on both rows"
    ]


def _collisions(table: _Table, result) -> list[str]:
    rows = _located_rows(result)
    return [
        f"{_where(rows)}: {_prompt_ids(rows)} names more than one block of rows: the rows of a "
        "prompt must be contiguous and prompt ids unique per split"
    ]


_DESCRIBERS: dict[str, Callable[[_Table, Any], list[str]]] = {
    "missing_column": _missing_column,
    "dtype": _bad_dtype,
    "null": _null_values,
    "bounds": _out_of_bounds,
    "constant": _constant,
    "empty_text": _empty_text,
    "pref_values": _pref_values,
    "no_signal": _no_signal,
    "duplicate_response": _duplicate_responses,
    "too_few_responses": _too_few_responses,
    "not_a_pair": _not_a_pair,
    "response_order": _response_order,
    "pref_mismatch": _pref_mismatch,
    "collision": _collisions,
    **split_describers("prompt_id", "prompt"),
}
