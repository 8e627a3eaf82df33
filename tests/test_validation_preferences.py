"""The preference Great Expectations suite: clean data passes, each bad input fails by name."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moft.data.preferences import SkippedRecordsWarning, read_preferences, split_preferences
from moft.validation.preferences import (
    DataValidationError,
    raise_for_failures,
    validate_preferences,
    write_report,
)

HH = Path("/work/shared/data/hh-rlhf/harmless-base-test.part-a.jsonl.gz")


def pairs(prefix: str, n: int, seed: int) -> pd.DataFrame:
    """``n`` prompts of two responses with a pairwise and a listwise objective."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "prompt_id": pd.Series([f"{prefix}{i // 2}" for i in range(2 * n)], dtype="str"),
        "prompt": pd.Series([f"prompt {prefix}{i // 2}" for i in range(2 * n)], dtype="str"),
        "response_idx": np.tile([0, 1], n).astype(np.int64),
        "response": pd.Series([f"response {prefix}{i}" for i in range(2 * n)], dtype="str"),
        "pref_helpful": np.repeat(rng.choice([-1, 0, 1], n), 2).astype(np.int8),
        "score_length": rng.normal(size=2 * n),
    })  # fmt: skip


@pytest.fixture
def splits() -> dict[str, pd.DataFrame]:
    return {"train": pairs("tr", 6, 0), "val": pairs("va", 3, 1), "test": pairs("te", 3, 2)}


@pytest.fixture(scope="module")
def hh_splits() -> dict[str, pd.DataFrame]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRecordsWarning)
        return split_preferences(read_preferences(HH).frame, seed=0)


def test_real_hh_splits_pass(hh_splits):
    result = validate_preferences(hh_splits)
    assert result.success, result.failures
    assert {c["table"] for c in result.checks} == {"schema", "responses", "prompts", "prompt_splits"}
    assert all(c["success"] for c in result.checks)
    raise_for_failures(result)


def test_listwise_lists_of_different_lengths_pass():
    frame = pairs("x", 4, 0).drop(columns="pref_helpful")
    lists = pd.concat([frame, frame.iloc[[0]].assign(response_idx=2, response="third")])
    lists = lists.sort_values(["prompt_id", "response_idx"], kind="stable", ignore_index=True)
    other = pairs("y", 3, 1).drop(columns="pref_helpful")
    result = validate_preferences({"train": lists, "test": other})
    assert result.success, result.failures


def test_bad_values_fail_naming_split_objective_and_prompt(splits):
    splits["train"].loc[0:1, "pref_helpful"] = 2  # both rows: only the value check fails
    splits["val"]["pref_helpful"] = splits["val"]["pref_helpful"].astype(np.float64)
    splits["val"].loc[2:3, "pref_helpful"] = 0.5  # a "tie" written as 0.5, not 0
    splits["test"].loc[3, "score_length"] = np.inf
    splits["test"].loc[0, "prompt"] = "   "  # one of the two rows of prompt te0
    splits["val"].loc[5, "response"] = ""
    splits["train"].loc[4, "response"] = None
    result = validate_preferences(splits)
    assert sorted(result.failures) == sorted([
        "splits 'train', 'val': objective 'helpful' (column pref_helpful) has 4 value(s) outside "
        "{-1, 0, 1} (e.g. 2.0, 0.5), expected +1 (response 0 better), -1 (response 1 better) or 0 "
        "(tie/unknown)",
        "split 'test': objective 'length' (column score_length) has 1 value(s) out of range "
        "(e.g. inf), expected finite values (no +/-inf)",
        "split 'test': 1 prompt(s) are empty or blank (prompt_id 'te0'), expected non-empty prompts",
        "split 'val': 1 response(s) are empty or blank (prompt_id 'va2'), expected non-empty responses",
        "split 'train': response text column 'response' has 1 NaN/null value(s), expected none",
    ])  # fmt: skip


def test_constant_objectives_fail(splits):
    for frame in splits.values():
        frame["score_length"] = 3.0
        frame["pref_helpful"] = np.int8(0)
    result = validate_preferences(splits)
    assert sorted(result.failures) == [
        "objective 'helpful' (column pref_helpful) carries no preference: every pair is a "
        "tie/unknown (0) across the dataset; it cannot be an objective",
        "objective 'length' (column score_length) is constant across the dataset (every value "
        "is 3.0): it cannot be an objective; choose another column",
    ]


def test_all_first_better_is_not_constant(splits):
    for frame in splits.values():
        frame["pref_helpful"] = np.int8(1)  # like HH: the chosen response is always response 0
    assert validate_preferences(splits).success


def test_list_shape_failures(splits):
    splits["train"] = splits["train"].drop(index=3).reset_index(drop=True)  # tr1 keeps one response
    val = splits["val"]
    splits["val"] = pd.concat(
        [val.iloc[:2], val.iloc[[1]].assign(response_idx=2, response="extra"), val.iloc[2:]],
        ignore_index=True,
    )  # va0 gets three responses while helpful is pairwise
    splits["test"].loc[3, "response_idx"] = 0  # te1 has response_idx 0, 0
    splits["test"].loc[2, "pref_helpful"] = 1  # ... and two different preferences
    splits["test"].loc[3, "pref_helpful"] = -1
    result = validate_preferences(splits)
    failures = result.failures
    assert (
        "split 'train': 1 prompt(s) have fewer than 2 responses (prompt_id 'tr1'), "
        "expected k >= 2 responses per prompt" in failures
    )
    assert (
        "split 'val': 1 prompt(s) have more than 2 responses (prompt_id 'va0'), but pairwise "
        "objective(s) 'helpful' need exactly 2 (use score_<name> columns for lists)" in failures
    )
    assert (
        "split 'test': (prompt_id, response_idx) ('te1', 0) appear(s) more than once: "
        "responses must be unique per prompt within a split" in failures
    )
    assert (
        "split 'test': prompt_id 'te1': response_idx does not run 0, 1, ..., k-1 in row order "
        "within the prompt" in failures
    )
    assert (
        "split 'test': objective 'helpful' (column pref_helpful) differs between the two rows "
        "of prompt_id 'te1': a pair has one preference, repeated on both rows" in failures
    )
    assert len(failures) == 5, failures


def test_prompt_in_two_splits_and_scattered_prompt_fail(splits):
    leaked = splits["train"].iloc[0:2]
    splits["test"] = pd.concat([splits["test"], leaked], ignore_index=True)
    train = splits["train"]
    splits["train"] = pd.concat([train.iloc[2:], train.iloc[:2]], ignore_index=True)
    splits["train"] = pd.concat(
        [splits["train"].iloc[:1], splits["train"].iloc[2:], splits["train"].iloc[1:2]],
        ignore_index=True,
    )  # tr1's two rows are now apart
    result = validate_preferences(splits)
    assert (
        "prompt 'tr0' is in splits 'train', 'test': a prompt must belong to exactly one split"
        in result.failures
    )
    assert any(
        f.startswith("split 'train': prompt_id 'tr1'") and "names more than one block of rows" in f
        for f in result.failures
    ), result.failures


def test_missing_column_wrong_dtype_and_empty_split(splits):
    splits["val"] = splits["val"].drop(columns="response")
    splits["test"]["response_idx"] = splits["test"]["response_idx"].astype(np.float64)
    splits["train"]["score_length"] = splits["train"]["score_length"].astype(str)
    splits["extra"] = splits["train"].iloc[:0]
    result = validate_preferences(splits, {"helpful": "pref_helpful", "length": "score_length"})
    assert "split 'val': required column 'response' (response text) is missing" in result.failures
    assert (
        "split 'test': column 'response_idx' (response index) has dtype float64, expected an "
        "integer dtype" in result.failures
    )
    assert any(
        f.startswith("split 'train': column 'score_length' (objective 'length') has dtype")
        and f.endswith("expected a numeric dtype (float or int)")
        for f in result.failures
    ), result.failures
    assert "split 'extra' has no prompts, expected at least one" in result.failures


def test_objective_arguments_are_checked(splits):
    with pytest.raises(ValueError, match="column 'length' must start with 'score_'"):
        validate_preferences(splits, {"length": "length"})
    with pytest.raises(ValueError, match="at least one objective column"):
        no_objectives = ["pref_helpful", "score_length"]
        validate_preferences({k: v.drop(columns=no_objectives) for k, v in splits.items()})


def test_raise_for_failures_and_report(splits, tmp_path):
    splits["train"].loc[0:1, "pref_helpful"] = 5
    splits["val"].loc[0, "score_length"] = -np.inf
    result = validate_preferences(splits)
    with pytest.raises(DataValidationError) as caught:
        raise_for_failures(result, report_path=tmp_path / "validation.json")
    lines = str(caught.value).splitlines()
    assert lines[0] == "data validation failed (2 check(s)):"
    assert lines[-1] == f"full report: {tmp_path / 'validation.json'}"
    json_path = write_report(result, tmp_path)
    report = json.loads(json_path.read_text())
    assert report["success"] is False and report["failures"] == result.failures
    assert len(report["checks"]) == len(result.checks)
    index = tmp_path / "data_docs" / "index.html"
    assert index.is_file() and "<html" in index.read_text().lower()
