"""Bad config, bad data and bad weights fail early, name the culprit and leave no partial output."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, TINY
from typer.testing import CliRunner

from moft import stages
from moft.cli import app
from moft.config import ConfigError, load_config
from moft.data.letor import DataFormatError
from moft.validation.ltr import DataValidationError

MQ2008 = PROJECT_ROOT / "data/samples/letor-mq2008/vali.txt.gz"


def _letor_lines(n: int = 400) -> list[str]:
    return gzip.open(MQ2008, "rt").read().splitlines()[:n]


def _cfg(path, *extra):
    return load_config("ltr-letor", TINY + [f"data.path={path}", *extra])


def test_malformed_svmlight_line_names_file_and_line(workdir):
    lines = _letor_lines()
    lines[41] = lines[41].replace("qid:", "qid=")
    bad = workdir / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt:42"):
        stages.prepare(_cfg(bad))
    assert not (workdir / "artifacts").exists() or not any((workdir / "artifacts").rglob("*.parquet"))


def test_nan_feature_fails_validation_and_blocks_training(workdir):
    lines = _letor_lines()
    lines[10] = " ".join(tok if not tok.startswith("7:") else "7:nan" for tok in lines[10].split(" "))
    path = workdir / "nan.txt"
    path.write_text("\n".join(lines) + "\n")
    cfg = _cfg(path)
    stages.prepare(cfg)
    with pytest.raises(DataValidationError, match="f7"):
        stages.validate(cfg)
    with pytest.raises(stages.StageInputError, match="has not passed validation"):
        stages.train_base(cfg)
    assert not stages.Layout.of(cfg).base.exists()


def test_constant_objective_is_caught_by_validation(workdir):
    cfg = load_config("ltr-letor", TINY + ["objectives.1.feature=43"])  # all zero in MQ2008
    stages.prepare(cfg)
    with pytest.raises(DataValidationError, match="child_pages.*constant"):
        stages.validate(cfg)
    report = stages.Layout.of(cfg).validation
    assert (report / "validation.json").is_file() and (report / "data_docs" / "index.html").is_file()


def test_weights_off_the_simplex_are_rejected(workdir):
    with pytest.raises(ConfigError, match=r"evaluate.grid.*simplex"):
        load_config("ltr-letor", ["evaluate.grid=[[0.5, 0.5], [0.7, 0.7]]"])
    from moft.serving import score_frame

    frame = pd.DataFrame({"group_id": ["q"], **{f"f{i}": [0.0] for i in range(1, 3)}})
    with pytest.raises(Exception, match="simplex"):
        score_frame(None, ["f1", "f2"], 2, frame, {"weights": [0.9, 0.3]})


def test_unknown_config_key_fails_before_any_work(workdir):
    result = CliRunner().invoke(app, ["stage", "prepare", "--profile", "ltr-letor", "--set", "data.pathz=x"])
    assert result.exit_code == 2
    assert "data.pathz" in result.output and "allowed keys" in result.output
    assert not (workdir / "artifacts").exists()


def test_failed_stage_keeps_previous_outputs(workdir, monkeypatch):
    cfg = load_config("ltr-letor", TINY)
    prepared = stages.prepare(cfg)
    before = pd.read_parquet(prepared / "train.parquet")

    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(stages, "plot_conflict_heatmap", explode)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        stages.prepare(cfg)
    after = pd.read_parquet(prepared / "train.parquet")
    pd.testing.assert_frame_equal(before, after)
    assert not [p for p in prepared.parent.iterdir() if p.name.endswith(".tmp")]
    assert np.isfinite(after["label_main"]).all()
