"""Great Expectations suite for prepared learning-to-rank splits (SPEC 3.4).

The splits are checked through four tables, one GX batch each:

- ``schema``: one row per (split, required column) with its dtype (``None`` when missing);
- ``items``: every split stacked with a ``split`` column, numeric columns as float64;
- ``groups``: one row per contiguous run of a group id within a split, with its size;
- ``group_splits``: one row per distinct (group id, split).

The suite runs once with a cheap result format; the expectations that fail are run again with
``unexpected_index_column_names`` so that every failure names its split.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # offline by default (SPEC 12)

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.data_context.types.resource_identifiers import (  # noqa: E402
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)

GROUP_COL = "group_id"
NUMERIC_DTYPES = (
    "float16", "float32", "float64", "Float32", "Float64",
    "int8", "int16", "int32", "int64", "Int8", "Int16", "Int32", "Int64",
    "uint8", "uint16", "uint32", "uint64", "UInt8", "UInt16", "UInt32", "UInt64",
)  # fmt: skip
GROUP_ID_DTYPES = ("object", "str", "string", "category")
FINITE_MAX = float(np.finfo(np.float64).max)  # within +/-FINITE_MAX means finite: inf lies outside
EXAMPLES_SHOWN = 20  # unexpected values and rows kept per failed check
DOCS_SITE = "moft_validation"

_FAST_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": EXAMPLES_SHOWN}


class DataValidationError(RuntimeError):
    """The data failed validation; ``failures`` holds one readable line per failed check."""

    def __init__(self, failures: list[str], report_path: Path | None = None) -> None:
        self.failures = list(failures)
        self.report_path = report_path
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"data validation failed ({len(self.failures)} check(s)):"]
        lines += [f"  - {failure}" for failure in self.failures]
        if self.report_path is not None:
            lines.append(f"full report: {self.report_path}")
        return "\n".join(lines)


@dataclass
class ValidationResult:
    """Outcome of one suite run: the readable failures and one summary per expectation."""

    success: bool
    failures: list[str]
    checks: list[dict]  # table, split, expectation, column, success, observed
    gx_results: list = field(default_factory=list, repr=False, compare=False)  # for data docs

    def to_json(self) -> dict:
        return {"success": self.success, "failures": self.failures, "checks": self.checks}


@dataclass
class _Table:
    """One GX batch: a frame, its expectations and the columns that locate a bad row."""

    name: str
    frame: pd.DataFrame
    expectations: list
    index_columns: list[str]


def validate_ltr(
    splits: dict[str, pd.DataFrame],
    feature_cols: list[str],
    objective_cols: dict[str, str],
    label_col: str = "label_main",
    label_range: tuple[float, float] = (0, 4),
) -> ValidationResult:
    """Run the LTR suite over prepared splits.

    ``objective_cols`` maps an objective name to its column (``{"outlinks": "obj_outlinks"}``).
    Checks: required columns and numeric dtypes per split; no NaN and no +/-inf in features;
    labels within ``label_range``; objective labels non-negative and finite; groups of >= 2 items;
    group ids unique per split (one contiguous run each); no group in two splits; the label and
    every objective non-constant across all splits together.
    """
    if not splits:
        raise ValueError("validate_ltr needs at least one split, got none")
    if not feature_cols:
        raise ValueError("validate_ltr needs at least one feature column, got none")
    if label_range[0] > label_range[1]:
        raise ValueError(f"label_range must be (low, high) with low <= high, got {label_range}")

    roles = {GROUP_COL: ("group_id", "group id")}
    roles |= {col: ("feature", "feature") for col in feature_cols}
    roles[label_col] = ("label", "label")
    roles |= {col: ("objective", f"objective '{name}'") for name, col in objective_cols.items()}

    context = _ephemeral_context()
    source = context.data_sources.add_pandas("moft_ltr")
    run_id = RunIdentifier(run_name="validate_ltr", run_time=datetime.datetime.now(datetime.UTC))
    tables = [
        _schema_table(splits, roles),
        _items_table(splits, roles, label_col, label_range, objective_cols),
        *_group_tables(splits),
    ]
    return _run_tables(source, tables, run_id, _DESCRIBERS)


def _run_tables(
    source: Any, tables: list[_Table], run_id: Any, describers: dict[str, Callable[[_Table, Any], list[str]]]
) -> ValidationResult:
    """Run every table's suite; collect per-check summaries and readable failure messages
    (``describers``, by each expectation's ``meta["check"]``, turn a failed GX result into
    sentences). Shared by every data kind's suite."""
    failures, checks, gx_results = [], [], []
    for table in tables:
        suite_result = _run_table(source, table, run_id)
        gx_results.append(suite_result)
        for result in suite_result.results:
            checks.append(_check_summary(table, result))
            if not result.success:
                failures += describe_failure(table, result, describers)
    return ValidationResult(not failures, failures, checks, gx_results)


def raise_for_failures(result: ValidationResult, report_path: Path | None = None) -> None:
    """Raise ``DataValidationError`` when any check failed."""
    if not result.success:
        raise DataValidationError(result.failures, report_path)


def write_report(result: ValidationResult, out_dir: Path) -> Path:
    """Write ``out_dir/validation.json`` and GX data docs under ``out_dir/data_docs/``.

    Both are written to temporary paths first and renamed into place. Returns the JSON path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "validation.json"
    tmp_json = out_dir / f".validation.json.{os.getpid()}.tmp"
    try:
        tmp_json.write_text(json.dumps(_json_safe(result.to_json()), indent=2, allow_nan=False))
        os.replace(tmp_json, json_path)
    finally:
        tmp_json.unlink(missing_ok=True)
    _write_data_docs(result.gx_results, out_dir / "data_docs")
    return json_path


# --- tables ------------------------------------------------------------------------------------


def _schema_table(splits: dict[str, pd.DataFrame], roles: dict[str, tuple[str, str]]) -> _Table:
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
    allowed = [("group_id", dtype) for dtype in GROUP_ID_DTYPES]
    allowed += [(role, dt) for role in ("feature", "label", "objective") for dt in NUMERIC_DTYPES]
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


def _items_table(
    splits: dict[str, pd.DataFrame],
    roles: dict[str, tuple[str, str]],
    label_col: str,
    label_range: tuple[float, float],
    objective_cols: dict[str, str],
) -> _Table:
    """All splits stacked; only columns present (and numeric where they must be) in every split.

    Numeric columns are cast to float64: GX compares float64 columns vectorised but float32 ones
    element by element in Python (about 100x slower).
    """
    usable = [
        col
        for col, (role, _) in roles.items()
        if all(col in frame.columns for frame in splits.values())
        and (role == "group_id" or all(_is_numeric(frame[col]) for frame in splits.values()))
    ]
    numeric = [col for col in usable if col != GROUP_COL]
    items = pd.concat(
        [
            pd.DataFrame(
                {
                    **{col: frame[col].to_numpy() for col in usable if col not in numeric},
                    **dict(zip(numeric, frame[numeric].to_numpy(np.float64).T)),
                    "split": split,
                }
            )[[*usable, "split"]]
            for split, frame in splits.items()
        ],
        ignore_index=True,
    )
    lo, hi = (float(v) for v in label_range)
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(
            column=col, meta={"check": "null", "subject": _subject(col, roles)}
        )
        for col in usable
    ]
    for col in numeric:
        role = roles[col][0]
        bounds = {
            "feature": (-FINITE_MAX, FINITE_MAX, "finite values (no +/-inf)"),
            "label": (lo, hi, f"values in [{lo:g}, {hi:g}]"),
            "objective": (0.0, FINITE_MAX, "non-negative finite values"),
        }[role]
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=col,
                min_value=bounds[0],
                max_value=bounds[1],
                meta={"check": "bounds", "subject": _subject(col, roles), "expected": bounds[2]},
            )
        )
    for col in [label_col, *objective_cols.values()]:
        if col in numeric:
            expectations.append(
                gxe.ExpectColumnUniqueValueCountToBeBetween(
                    column=col,
                    min_value=2,
                    meta={
                        "check": "constant",
                        "subject": _subject(col, roles),
                        "role": roles[col][0],
                    },
                )
            )
    return _Table("items", items, expectations, ["split"])


def _group_tables(splits: dict[str, pd.DataFrame]) -> list[_Table]:
    """The per-group table (one row per contiguous run) and the (group id, split) table.

    A split without a group id column contributes no groups (the schema check names it).
    """
    no_ids = pd.Series([], dtype=object)
    runs = pd.concat(
        [
            _contiguous_groups(frame.get(GROUP_COL, no_ids)).assign(split=split)
            for split, frame in splits.items()
        ],
        ignore_index=True,
    )
    groups = _Table(
        "groups",
        runs,
        [
            gxe.ExpectColumnValuesToBeBetween(
                column="n_items", min_value=2, meta={"check": "group_size"}
            ),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["split", GROUP_COL], meta={"check": "collision"}
            ),
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="split", value_set=list(splits), meta={"check": "empty_split"}
            ),
        ],
        ["split", GROUP_COL],
    )
    group_splits = _Table(
        "group_splits",
        runs[[GROUP_COL, "split"]].drop_duplicates(ignore_index=True),
        [gxe.ExpectColumnValuesToBeUnique(column=GROUP_COL, meta={"check": "leak"})],
        ["split", GROUP_COL],
    )
    return [groups, group_splits]


def _contiguous_groups(group_ids: pd.Series) -> pd.DataFrame:
    """One row per run of equal consecutive ids: a group is a contiguous block of rows."""
    values = group_ids.to_numpy()
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    sizes = np.diff(np.append(np.flatnonzero(starts), len(values)))
    return pd.DataFrame({GROUP_COL: values[starts], "n_items": sizes.astype(np.int64)})


def _is_numeric(column: pd.Series) -> bool:
    return str(column.dtype) in NUMERIC_DTYPES


def _subject(col: str, roles: dict[str, tuple[str, str]]) -> str:
    role, describes = roles[col]
    if role == "objective":
        return f"{describes} (column {col})"
    return f"{describes} column '{col}'"


# --- running GX --------------------------------------------------------------------------------


def _ephemeral_context(data_docs_dir: Path | None = None):
    """An in-memory GX context: no files, no analytics, no progress bars."""
    sites = {}
    if data_docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(data_docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _run_table(source, table: _Table, run_id: RunIdentifier):
    """Validate one table; failed expectations are re-run to locate their rows by split."""
    batch = (
        source.add_dataframe_asset(table.name)
        .add_batch_definition_whole_dataframe(table.name)
        .get_batch(batch_parameters={"dataframe": table.frame})
    )
    suite = gx.ExpectationSuite(table.name, expectations=table.expectations)
    suite_result = batch.validate(suite, result_format=_FAST_FORMAT)
    failed = {_config_key(r.expectation_config) for r in suite_result.results if not r.success}
    if failed:
        rerun_suite = gx.ExpectationSuite(
            f"{table.name}_failed",
            expectations=[
                e for e in table.expectations if _config_key(e.configuration) in failed
            ],
        )
        located_format = _FAST_FORMAT | {
            "result_format": "SUMMARY",
            "unexpected_index_column_names": table.index_columns,
        }
        located = {
            _config_key(r.expectation_config): r
            for r in batch.validate(rerun_suite, result_format=located_format).results
        }
        suite_result.results = [
            located.get(_config_key(r.expectation_config), r) for r in suite_result.results
        ]
    suite_result.meta["run_id"] = run_id
    suite_result.meta["validation_time"] = run_id.run_time
    return suite_result


def _config_key(config) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return json.dumps([config.type, kwargs], sort_keys=True, default=str)


def _write_data_docs(gx_results: list, docs_dir: Path) -> None:
    """Build a GX data docs site from the kept suite results, then swap it into ``docs_dir``."""
    tmp_dir = docs_dir.with_name(f".{docs_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        context = _ephemeral_context(tmp_dir)
        for suite_result in gx_results:
            key = ValidationResultIdentifier(
                ExpectationSuiteIdentifier(name=suite_result.suite_name),
                run_id=suite_result.meta["run_id"],
                batch_identifier=suite_result.meta["active_batch_definition"]["data_asset_name"],
            )
            context.validation_results_store.set(key, suite_result)
        context.build_data_docs(site_names=[DOCS_SITE])
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        os.replace(tmp_dir, docs_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --- reading results ---------------------------------------------------------------------------


def _check_summary(table: _Table, result) -> dict:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or kwargs.get("column_list")
    column = column or [kwargs["column_A"], kwargs["column_B"]]
    splits = sorted({str(row["split"]) for row in _located_rows(result)})
    observed = {key: result.result[key] for key in _OBSERVED_KEYS if key in result.result}
    if result.exception_info.get("raised_exception"):
        observed["error"] = result.exception_info.get("exception_message")
    return {
        "table": table.name,
        "split": splits or sorted(table.frame["split"].unique().tolist()),
        "expectation": config.type,
        "column": column,
        "success": bool(result.success),
        "observed": _json_safe(observed),
    }


_OBSERVED_KEYS = (
    "observed_value",
    "element_count",
    "unexpected_count",
    "partial_unexpected_list",
    "partial_missing_list",
)


def _located_rows(result) -> list[dict]:
    """The failing rows with their index columns (split, ...), as far as the result lists them."""
    return list(result.result.get("partial_unexpected_index_list") or [])


def _where(rows: list[dict]) -> str:
    splits = list(dict.fromkeys(str(row["split"]) for row in rows))
    return ("split " if len(splits) == 1 else "splits ") + ", ".join(f"'{s}'" for s in splits)


def _examples(values: list, shown: int = 5) -> str:
    distinct = list(dict.fromkeys(_format_value(v) for v in values))
    more = ", ..." if len(distinct) > shown else ""
    return ", ".join(distinct[:shown]) + more


def _format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return repr(value) if isinstance(value, str) else str(value)


def describe_failure(
    table: _Table, result: Any, describers: dict[str, Callable[[_Table, Any], list[str]]]
) -> list[str]:
    """Sentences for one failed expectation: an expectation that could not run says so, any
    other is described by its suite's describer for ``meta["check"]``."""
    config = result.expectation_config
    if result.exception_info.get("raised_exception"):
        column = _check_summary(table, result)["column"]
        error = result.exception_info.get("exception_message")
        return [f"table '{table.name}': {config.type} on {column} could not run: {error}"]
    return describers[config.meta["check"]](table, result)


def _missing_column(table: _Table, result) -> list[str]:
    return [
        f"split '{row['split']}': required column '{row['column']}' ({row['describes']}) is missing"
        for row in _located_rows(result)
    ]


def _bad_dtype(table: _Table, result) -> list[str]:
    return [
        f"split '{row['split']}': column '{row['column']}' ({row['describes']}) has dtype "
        f"{row['dtype']}, expected "
        + ("a string dtype" if row["role"] == "group_id" else "a numeric dtype (float or int)")
        for row in _located_rows(result)
    ]


def _null_values(table: _Table, result) -> list[str]:
    where, subject = _where(_located_rows(result)), result.expectation_config.meta["subject"]
    count = result.result["unexpected_count"]
    return [f"{where}: {subject} has {count} NaN/null value(s), expected none"]


def _out_of_bounds(table: _Table, result) -> list[str]:
    where, meta, res = _where(_located_rows(result)), result.expectation_config.meta, result.result
    examples = _examples(res["partial_unexpected_list"])
    return [
        f"{where}: {meta['subject']} has {res['unexpected_count']} value(s) out of range "
        f"(e.g. {examples}), expected {meta['expected']}"
    ]


def _constant(table: _Table, result) -> list[str]:
    meta = result.expectation_config.meta
    values = table.frame[result.expectation_config.kwargs["column"]].dropna()
    what = "every value is " + (_format_value(values.iloc[0]) if len(values) else "NaN")
    reason = (
        "it cannot be an objective; choose another column"
        if meta["role"] == "objective"
        else "a constant label gives nothing to rank by"
    )
    return [f"{meta['subject']} is constant across the dataset ({what}): {reason}"]


def _small_groups(table: _Table, result) -> list[str]:
    rows = _located_rows(result)
    ids = _examples([row[GROUP_COL] for row in rows])
    return [
        f"{_where(rows)}: {result.result['unexpected_count']} group(s) have a single item "
        f"(group_id {ids}), expected at least 2 items per group"
    ]


def _collisions(table: _Table, result) -> list[str]:
    rows = _located_rows(result)
    ids = _examples([row[GROUP_COL] for row in rows])
    return [
        f"{_where(rows)}: group_id {ids} names more than one group (its rows are not "
        "contiguous): group ids must be unique per split"
    ]


def split_describers(id_col: str, noun: str) -> dict[str, Callable[[_Table, Any], list[str]]]:
    """Describers of the split-level checks (an empty split, a unit in two splits) for the unit of
    a data kind: groups (``group_id``) here, prompts (``prompt_id``) for preference data."""

    def empty_splits(table: _Table, result) -> list[str]:
        return [
            f"split '{split}' has no {noun}s, expected at least one"
            for split in result.result["partial_missing_list"]
        ]

    def leaks(table: _Table, result) -> list[str]:
        in_splits: dict[str, list[str]] = {}
        for row in _located_rows(result):
            in_splits.setdefault(str(row[id_col]), []).append(str(row["split"]))
        return [
            f"{noun} '{uid}' is in splits " + ", ".join(f"'{s}'" for s in splits)
            + f": a {noun} must belong to exactly one split"
            for uid, splits in in_splits.items()
        ]

    return {"empty_split": empty_splits, "leak": leaks}


_DESCRIBERS: dict[str, Callable[[_Table, Any], list[str]]] = {
    "missing_column": _missing_column,
    "dtype": _bad_dtype,
    "null": _null_values,
    "bounds": _out_of_bounds,
    "constant": _constant,
    "group_size": _small_groups,
    "collision": _collisions,
    **split_describers(GROUP_COL, "group"),
}


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN and +/-inf written as strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
