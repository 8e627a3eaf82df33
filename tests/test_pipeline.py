"""The real pipeline end to end on tiny real data: Prefect flow + MLflow (SQLite) + DVC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TINY

from moft.config import load_config
from moft.io import read_json

sys.path.insert(0, str(PROJECT_ROOT))

pytestmark = pytest.mark.e2e


def test_prefect_flow_tracks_everything_in_mlflow(prefect_harness, workdir):
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    result = pipeline(profile="ltr-mslr", overrides=TINY, tracking=True)

    summary = read_json(Path(result["pareto_json"]))
    assert summary["profile"] == "ltr-mslr" and summary["track"] == "ltr"
    assert summary["objectives"] == ["quality2", "url_clicks"]
    assert summary["metric"] == "ndcg@10" and summary["direction"] == "max"
    assert len(summary["grid"]) == 11 and summary["grid"][0] == [0.0, 1.0]
    assert list(summary["methods"]) == ["hyperdpo", "dpo_ls", "dpo_soup", "mo_dpo", "mopo"]
    jobs = {name: e["n_jobs"] for name, e in summary["methods"].items()}
    assert jobs == {"hyperdpo": 1, "dpo_ls": 11, "dpo_soup": 2, "mo_dpo": 2 + 9, "mopo": 11}
    assert "hyperdpo>dpo_ls" in summary["paired"] and "hyperdpo>mo_dpo" in summary["paired"]
    entry = summary["methods"]["hyperdpo"]
    for key in ("hypervolume", "hypervolume_ci95", "steerability", "main_mean", "main_std",
                "train_seconds", "trainable_params", "n_jobs", "points"):
        assert key in entry, key
    lo, hi = entry["hypervolume_ci95"]
    assert lo <= hi and len(entry["points"]) == 11
    assert 0 < summary["base"]["hypervolume"] and "hyperdpo>base" in summary["paired"]
    reports = workdir / "reports" / "ltr-mslr"
    for name in ("front.csv", "pareto.png", "metrics.json", "summary.md", "front_plot.csv"):
        assert (reports / name).stat().st_size > 0, name

    client = MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["finetune.hyperdpo.alpha"] == "0.5"
    assert "prefect.flow_run_id" in parent.data.tags
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    stages = {r.data.tags["moft.stage"] for r in children}
    assert stages == {"prepare", "validate", "train_base", "finetune:single_objective", "evaluate", "report"} | {
        f"finetune:{m}" for m in ("hyperdpo", "dpo_ls", "dpo_soup", "mo_dpo", "mopo")
    }
    assert all(r.info.status == "FINISHED" for r in children)
    finetune = next(r for r in children if r.data.tags["moft.stage"] == "finetune:hyperdpo")
    assert "train_loss" in finetune.data.metrics
    assert len(client.get_metric_history(finetune.info.run_id, "train_loss")) == 4
    evaluate = next(r for r in children if r.data.tags["moft.stage"] == "evaluate")
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id, "pareto")}
    assert {"pareto/pareto.json", "pareto/pareto.png", "pareto/front.csv"} <= artifacts
    versions = client.search_model_versions("name = 'moft-hyperdpo'")
    assert versions and versions[0].run_id == finetune.info.run_id

    # Input-based caching: the same inputs again reuse every stage's outputs.
    base_ckpt = workdir / "artifacts" / "ltr-mslr" / "base" / "model.safetensors"
    stamp = base_ckpt.stat().st_mtime_ns
    again = pipeline(profile="ltr-mslr", overrides=TINY, tracking=False)
    assert base_ckpt.stat().st_mtime_ns == stamp
    assert read_json(Path(again["pareto_json"])) == summary


def test_failed_validation_stops_the_flow_and_fails_the_run(prefect_harness, workdir):
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    bad = ["objectives.0.feature=43", "objectives.0.transform=identity"]  # all zero in MQ2008
    with pytest.raises(Exception, match="constant across the dataset"):
        pipeline(profile="ltr-letor", overrides=TINY + bad, tracking=True)
    assert not (workdir / "artifacts" / "ltr-letor" / "base").exists()
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("moft-ltr-letor").experiment_id]
    )
    status = {r.data.tags.get("moft.stage", "pipeline"): r.info.status for r in runs}
    assert status["pipeline"] == "FAILED" and status["validate"] == "FAILED"
    assert "train_base" not in status


def _dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_dvc_repro_runs_the_stages_and_then_has_nothing_to_do(tmp_path):
    for part in ("dvc.yaml", "configs", "data/samples", "src/moft"):
        src = PROJECT_ROOT / part
        dst = tmp_path / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    overrides = TINY + ["tracking.enabled=false"]
    (tmp_path / "params.yaml").write_text(
        json.dumps({"profile": "ltr-letor", "methods": ["hyperdpo", "dpo_soup", "mo_dpo"], "overrides": overrides})
    )
    _dvc(tmp_path, "init", "--no-scm", "-q")
    first = _dvc(tmp_path, "repro")
    assert "Running stage 'finetune@hyperdpo'" in first and "Running stage 'finetune@mo_dpo'" in first
    pareto = read_json(tmp_path / "reports" / "ltr-letor" / "pareto.json")
    assert pareto["objectives"] == ["short_url", "child_pages"]
    assert "hyperdpo_hypervolume" in read_json(tmp_path / "reports" / "ltr-letor" / "metrics.json")
    second = _dvc(tmp_path, "repro")
    assert "Running stage" not in second, second


def test_letor_profile_takes_any_file_of_that_layout(workdir):
    """`--set data.path=FILE` runs ltr-letor on a file it has never seen."""
    import gzip

    from moft import stages

    lines = gzip.open(PROJECT_ROOT / "data/samples/letor-mq2008/vali.txt.gz", "rt").read().splitlines()
    other = workdir / "other-letor.txt"
    other.write_text("\n".join(lines[-900:]) + "\n")  # a different, smaller LETOR 4.0 file
    cfg = load_config("ltr-letor", TINY + [f"data.path={other}", "finetune.methods=[hyperdpo]"])
    for name in ("prepare", "validate", "train_base"):
        getattr(stages, name)(cfg)
    stages.finetune(cfg, "hyperdpo")
    summary = read_json(stages.evaluate(cfg))
    assert summary["n_test_groups"] >= 3 and summary["methods"]["hyperdpo"]["points"]
