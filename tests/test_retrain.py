"""Scheduled retraining (flows/retrain.py): the raw-data hash is DVC's own, the flow skips when the
champion was trained on the same data and reruns the pipeline when the data changed."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, TINY

from moft.champion import raw_data_md5
from moft.config import load_config

sys.path.insert(0, str(PROJECT_ROOT))


def test_raw_data_hash_is_the_md5_dvc_lock_records(tmp_path):
    names = []
    for path in load_config("ltr-mslr").data.paths:  # two files: the multi-file case
        shutil.copy(PROJECT_ROOT / path, tmp_path / Path(path).name)
        names.append(Path(path).name)
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for args in (
        ["init", "--no-scm", "-q"],
        ["stage", "add", "-q", "-n", "raw", *[a for n in names for a in ("-d", n)], "echo ok"],
        ["repro", "-q"],
    ):
        proc = subprocess.run([dvc, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    recorded = {dep["path"]: dep["md5"] for dep in lock["stages"]["raw"]["deps"]}

    cfg = load_config("ltr-mslr", [f"data.paths=[{','.join(str(tmp_path / n) for n in names)}]"])
    assert raw_data_md5(cfg) == ",".join(recorded[n] for n in names)


@pytest.mark.e2e
def test_retrain_skips_unchanged_data_and_reruns_when_it_changed(prefect_harness, workdir):
    from mlflow import MlflowClient

    from flows.retrain import retrain

    overrides = TINY + ["finetune.methods=[hyperdpo]", "runtime.threads=1"]
    first = retrain(profile="ltr-letor", overrides=overrides)
    assert first["retrained"] and first["reason"] == "no champion yet"
    assert first["champion"]["decision"] == "promote"

    again = retrain(profile="ltr-letor", overrides=overrides)
    assert not again["retrained"] and "raw data unchanged since champion v1" in again["reason"]
    mlflow = MlflowClient()
    experiment = mlflow.get_experiment_by_name("moft-ltr-letor").experiment_id
    pipelines = mlflow.search_runs([experiment], filter_string="tags.`moft.kind` = 'pipeline'")
    assert len(pipelines) == 1  # the skip started no pipeline run

    lines = gzip.open(PROJECT_ROOT / "data/samples/letor-mq2008/vali.txt.gz", "rt").read().splitlines()
    newer = workdir / "vali-newer.txt"
    newer.write_text("\n".join(lines[:-300]) + "\n")  # the data changed: fewer queries
    changed = retrain(profile="ltr-letor", overrides=overrides + [f"data.path={newer}"])
    assert changed["retrained"] and changed["reason"].startswith("raw data changed since champion v1")
    decision = changed["champion"]
    assert decision["raw_data_md5"] == changed["raw_data_md5"] != first["raw_data_md5"]
    # the champion was evaluated on the old data: it is re-measured on the new before comparing
    assert decision["incumbent"]["hypervolume_source"] == "re-evaluated on the current data"
    higher = decision["candidate"]["hypervolume"] > decision["incumbent"]["hypervolume"]
    assert decision["decision"] == ("promote" if higher else "keep")
    expected = "2" if higher else "1"
    assert decision["candidate"]["version"] == "2" and decision["champion_version"] == expected
    assert str(mlflow.get_registered_model("moft-hyperdpo").aliases["champion"]) == expected
