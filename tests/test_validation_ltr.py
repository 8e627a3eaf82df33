"""The LTR Great Expectations suite: clean data passes, each bad input fails by name."""

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moft.validation.ltr import (
    DataValidationError,
    ValidationResult,
    raise_for_failures,
    validate_ltr,
    write_report,
)

FEATURES = ["f1", "f2", "f3", "f4"]
OBJECTIVES = {"clicks": "obj_clicks", "quality": "obj_quality"}
MQ2008_VALI = Path(__file__).resolve().parents[1] / "data/samples/letor-mq2008/vali.txt.gz"


def make_split(prefix: str, n_groups: int = 3, group_size: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_groups * group_size
    frame = pd.DataFrame(rng.normal(size=(n, len(FEATURES))).astype(np.float32), columns=FEATURES)
    frame.insert(0, "group_id", [f"{prefix}{i // group_size}" for i in range(n)])
    frame["label_main"] = rng.integers(0, 5, n).astype(np.float64)
    frame["obj_clicks"] = rng.poisson(3.0, n).astype(np.float64)
    frame["obj_quality"] = rng.random(n)
    return frame


@pytest.fixture
def splits() -> dict[str, pd.DataFrame]:
    return {
        "train": make_split("tr", n_groups=4, seed=0),
        "vali": make_split("va", seed=1),
        "test": make_split("te", seed=2),
    }


def validate(splits: dict[str, pd.DataFrame]) -> ValidationResult:
    return validate_ltr(splits, FEATURES, OBJECTIVES, label_range=(0, 4))


def only_failure(result: ValidationResult) -> str:
    assert not result.success
    assert len(result.failures) == 1, result.failures
    return result.failures[0]


def test_clean_splits_pass(splits):
    result = validate(splits)
    assert result.success, result.failures
    assert result.failures == []
    assert all(check["success"] for check in result.checks)
    assert {"table", "split", "expectation", "column", "success", "observed"} <= set(result.checks[0])
    tables = {check["table"] for check in result.checks}
    assert tables == {"schema", "items", "groups", "group_splits"}
    raise_for_failures(result)


@pytest.mark.parametrize(
    ("split", "column", "value", "expected"),
    [
        ("vali", "f2", np.nan, ["split 'vali'", "feature column 'f2'", "NaN"]),
        ("test", "f3", np.inf, ["split 'test'", "feature column 'f3'", "inf", "finite"]),
        ("train", "f1", -np.inf, ["split 'train'", "feature column 'f1'", "-inf", "finite"]),
        ("vali", "label_main", 7.0, ["split 'vali'", "label column 'label_main'", "7.0", "[0, 4]"]),
        ("test", "obj_clicks", -1.0, ["split 'test'", "objective 'clicks'", "-1.0", "non-negative"]),
        ("train", "obj_quality", np.inf, ["objective 'quality' (column obj_quality)", "inf"]),
        ("test", "obj_clicks", np.nan, ["split 'test'", "objective 'clicks'", "NaN"]),
    ],
)
def test_bad_value_fails_naming_split_and_column(splits, split, column, value, expected):
    splits[split].loc[2, column] = value
    failure = only_failure(validate(splits))
    for text in expected:
        assert text in failure


def test_group_of_size_one_fails(splits):
    splits["train"].loc[0, "group_id"] = "lonely"
    failure = only_failure(validate(splits))
    assert "split 'train'" in failure and "'lonely'" in failure and "at least 2" in failure


def test_group_in_two_splits_fails(splits):
    splits["test"]["group_id"] = splits["test"]["group_id"].replace("te1", "tr1")
    failure = only_failure(validate(splits))
    assert failure.startswith("group 'tr1' is in splits 'train', 'test'")


def test_group_id_reused_within_split_fails(splits):
    splits["vali"]["group_id"] = splits["vali"]["group_id"].replace("va2", "va0")
    failure = only_failure(validate(splits))
    assert "split 'vali'" in failure and "'va0'" in failure and "unique per split" in failure


def test_constant_objective_fails(splits):
    for frame in splits.values():
        frame["obj_clicks"] = 0.0
    failure = only_failure(validate(splits))
    assert failure == (
        "objective 'clicks' (column obj_clicks) is constant across the dataset "
        "(every value is 0.0): it cannot be an objective; choose another column"
    )


def test_constant_label_fails(splits):
    for frame in splits.values():
        frame["label_main"] = 1.0
    failure = only_failure(validate(splits))
    assert "label column 'label_main' is constant across the dataset (every value is 1.0)" in failure


def test_missing_column_and_wrong_dtype_fail(splits):
    splits["test"] = splits["test"].drop(columns=["obj_quality"])
    splits["vali"]["f4"] = splits["vali"]["f4"].astype(str)
    result = validate(splits)
    assert not result.success
    assert (
        "split 'test': required column 'obj_quality' (objective 'quality') is missing"
        in result.failures
    )
    assert any(f.startswith("split 'vali': column 'f4' (feature) has dtype") for f in result.failures)


def test_empty_split_fails(splits):
    splits["test"] = splits["test"].iloc[:0]
    result = validate(splits)
    assert "split 'test' has no groups, expected at least one" in result.failures


def test_raise_for_failures_gives_readable_report(splits, tmp_path):
    splits["train"].loc[1, "f1"] = np.nan
    splits["test"].loc[0, "label_main"] = -2.0
    result = validate(splits)
    with pytest.raises(DataValidationError) as caught:
        raise_for_failures(result, report_path=tmp_path / "validation.json")
    error = caught.value
    assert error.failures == result.failures and len(error.failures) == 2
    assert error.report_path == tmp_path / "validation.json"
    lines = str(error).splitlines()
    assert lines[0] == "data validation failed (2 check(s)):"
    assert lines[-1] == f"full report: {tmp_path / 'validation.json'}"


def test_write_report_writes_json_and_data_docs(splits, tmp_path):
    splits["train"].loc[1, "f1"] = np.inf  # a failure puts non-finite numbers into the report
    result = validate(splits)
    for _ in range(2):  # a second report replaces the first
        json_path = write_report(result, tmp_path)
    assert json_path == tmp_path / "validation.json"
    report = json.loads(json_path.read_text(), parse_constant=reject_non_json)
    assert report["success"] is False
    assert report["failures"] == result.failures
    assert len(report["checks"]) == len(result.checks)
    index = tmp_path / "data_docs" / "index.html"
    assert index.is_file() and "<html" in index.read_text().lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_docs", "validation.json"]


def reject_non_json(constant: str):
    raise ValueError(f"not valid JSON: {constant}")


def read_letor(path: Path) -> pd.DataFrame:
    """Just enough of a svmlight/LETOR reader for this test: label, qid and dense features."""
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            row = {"label_main": float(fields[0]), "group_id": fields[1].removeprefix("qid:")}
            row |= {f"f{k}": float(v) for k, v in (item.split(":") for item in fields[2:])}
            rows.append(row)
    frame = pd.DataFrame(rows)
    features = [c for c in frame.columns if c.startswith("f")]
    return frame.astype({c: np.float32 for c in features})


def test_mq2008_outlinks_objective_is_constant():
    frame = read_letor(MQ2008_VALI)
    features = [f"f{k}" for k in range(1, 47)]
    frame["obj_outlinks"] = frame["f43"].astype(np.float64)  # MQ2008 feature 43 is all zero
    frame["obj_pagerank"] = frame["f41"].astype(np.float64)
    qids = frame["group_id"].unique()
    splits = {
        "train": frame[frame["group_id"].isin(qids[0::2])].reset_index(drop=True),
        "test": frame[frame["group_id"].isin(qids[1::2])].reset_index(drop=True),
    }
    result = validate_ltr(
        splits,
        features,
        {"outlinks": "obj_outlinks", "pagerank": "obj_pagerank"},
        label_range=(0, 2),
    )
    with pytest.raises(DataValidationError) as caught:
        raise_for_failures(result)
    assert caught.value.failures == [
        "objective 'outlinks' (column obj_outlinks) is constant across the dataset "
        "(every value is 0.0): it cannot be an objective; choose another column"
    ]
