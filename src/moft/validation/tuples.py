"""Great Expectations suite for preference tuples ``(x, y, y', o)`` (SPEC 5.5, synthetic track).

The table (``case, context, action, other, o_<label>...``, one row per tuple) is checked through
two GX batches, run by the LTR suite's runner:

- ``schema``: one row per required column with its dtype (``None`` when missing);
- ``tuples``: the tuples with a ``split`` column holding the case (the runner locates failing rows
  by ``split``) and whether each tuple compares two different actions.

Checks: required columns and dtypes; no nulls; contexts and actions in range; ``y != y'``; outcomes
in {0, 1/2, 1}; every configured case has tuples.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

import numpy as np
import pandas as pd

from moft.validation.ltr import (
    GROUP_ID_DTYPES,
    NUMERIC_DTYPES,
    DataValidationError,
    RunIdentifier,
    ValidationResult,
    _ephemeral_context,
    _examples,
    _located_rows,
    _run_tables,
    _Table,
    gxe,
    raise_for_failures,
    write_report,
)

__all__ = ["DataValidationError", "raise_for_failures", "validate_tuples", "write_report"]

OUTCOME_VALUES = [0.0, 0.5, 1.0]
INTEGER_DTYPES = [d for d in NUMERIC_DTYPES if "int" in d.lower()]
_ROLE_DTYPES = {"case": list(GROUP_ID_DTYPES), "index": INTEGER_DTYPES, "outcome": list(NUMERIC_DTYPES)}
_EXPECTED_DTYPE = {"case": "a string dtype", "index": "an integer dtype", "outcome": "a numeric dtype"}


def validate_tuples(
    frame: pd.DataFrame, outcome_cols: dict[str, str], cases: list[str], n_contexts: int, n_actions: int
) -> ValidationResult:
    """Run the tuple suite.

    Args:
        frame: one row per tuple: ``case``, ``context``, ``action``, ``other`` and the outcome
            columns.
        outcome_cols: objective name -> its outcome column (``{"quality": "o_primary"}``).
        cases: the cases that must each have at least one tuple.
        n_contexts, n_actions: contexts and actions must lie in ``[0, n)``.
    """
    roles = {
        "case": ("case", "case name"),
        "context": ("index", "context x"),
        "action": ("index", "action y"),
        "other": ("index", "action y'"),
    }
    roles |= {col: ("outcome", f"outcome o of objective '{name}'") for name, col in outcome_cols.items()}
    usable = [c for c, (role, _) in roles.items() if c in frame and str(frame[c].dtype) in _ROLE_DTYPES[role]]
    context = _ephemeral_context()
    source = context.data_sources.add_pandas("moft_tuples")
    run_id = RunIdentifier(run_name="validate_tuples", run_time=datetime.datetime.now(datetime.UTC))
    tables = [_schema_table(frame, roles), _tuples_table(frame, roles, usable, cases, n_contexts, n_actions)]
    return _run_tables(source, tables, run_id, _DESCRIBERS)


def _schema_table(frame: pd.DataFrame, roles: dict[str, tuple[str, str]]) -> _Table:
    rows = [
        {"split": "tuples", "column": col, "role": role, "describes": describes,
         "dtype": str(frame[col].dtype) if col in frame else None}
        for col, (role, describes) in roles.items()
    ]  # fmt: skip
    allowed = [(role, dtype) for role, dtypes in _ROLE_DTYPES.items() for dtype in dtypes]
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="dtype", meta={"check": "missing_column"}),
        gxe.ExpectColumnPairValuesToBeInSet(
            column_A="role", column_B="dtype", value_pairs_set=allowed,
            ignore_row_if="either_value_is_missing", meta={"check": "dtype"},
        ),
    ]  # fmt: skip
    return _Table("schema", pd.DataFrame(rows), expectations, ["split", "column", "describes"])


def _tuples_table(
    frame: pd.DataFrame,
    roles: dict[str, tuple[str, str]],
    usable: list[str],
    cases: list[str],
    n_contexts: int,
    n_actions: int,
) -> _Table:
    table = pd.DataFrame({"split": frame["case"].astype(str) if "case" in usable else "?"}, index=frame.index)
    expectations: list[Any] = []
    for col in usable:
        role, describes = roles[col]
        subject = f"{describes} (column '{col}')"
        table[col] = frame[col].to_numpy(np.float64) if role != "case" else frame[col].to_numpy()
        expectations.append(
            gxe.ExpectColumnValuesToNotBeNull(column=col, meta={"check": "null", "subject": subject})
        )
        if role == "case":
            continue
        size = n_contexts if col == "context" else n_actions
        allowed = OUTCOME_VALUES if role == "outcome" else list(range(size))
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=col, value_set=[float(v) for v in allowed],
                meta={"check": "values", "subject": subject, "allowed": allowed},
            )
        )  # fmt: skip
    if {"action", "other"} <= set(usable):
        table["distinct"] = frame["action"].to_numpy() != frame["other"].to_numpy()
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column="distinct", value_set=[True], meta={"check": "self_pair"})
        )
    if "case" in usable:
        expectations.append(
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="split", value_set=cases, meta={"check": "empty_case"}
            )
        )
    return _Table("tuples", table.reset_index(drop=True), expectations, ["split"])


# --- reading results ---------------------------------------------------------------------------


def _in_cases(rows: list[dict]) -> str:
    cases = list(dict.fromkeys(str(row["split"]) for row in rows))
    return ("case " if len(cases) == 1 else "cases ") + ", ".join(f"'{c}'" for c in cases)


def _missing_column(table: _Table, result: Any) -> list[str]:
    return [
        f"required column '{row['column']}' ({row['describes']}) is missing" for row in _located_rows(result)
    ]


def _bad_dtype(table: _Table, result: Any) -> list[str]:
    return [
        f"column '{row['column']}' ({row['describes']}) has dtype {row['dtype']}, "
        f"expected {_EXPECTED_DTYPE[row['role']]}"
        for row in _located_rows(result)
    ]


def _nulls(table: _Table, result: Any) -> list[str]:
    meta, count = result.expectation_config.meta, result.result["unexpected_count"]
    return [f"{_in_cases(_located_rows(result))}: {meta['subject']} has {count} null value(s), expected none"]


def _bad_values(table: _Table, result: Any) -> list[str]:
    meta, res = result.expectation_config.meta, result.result
    return [
        f"{_in_cases(_located_rows(result))}: {meta['subject']} has {res['unexpected_count']} value(s) "
        f"outside {meta['allowed']} (e.g. {_examples(res['partial_unexpected_list'])})"
    ]


def _self_pairs(table: _Table, result: Any) -> list[str]:
    return [
        f"{_in_cases(_located_rows(result))}: {result.result['unexpected_count']} tuple(s) compare an "
        "action with itself (action == other), expected two different actions"
    ]


def _empty_cases(table: _Table, result: Any) -> list[str]:
    missing = result.result["partial_missing_list"]
    return [f"case '{case}' has no tuples, expected at least one" for case in missing]


_DESCRIBERS: dict[str, Callable[[_Table, Any], list[str]]] = {
    "missing_column": _missing_column,
    "dtype": _bad_dtype,
    "null": _nulls,
    "values": _bad_values,
    "self_pair": _self_pairs,
    "empty_case": _empty_cases,
}
