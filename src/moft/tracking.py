"""MLflow run tree: one parent run per pipeline run, one child run per stage and method.

Runs are addressed by id through :class:`mlflow.MlflowClient` (the fluent run stack is thread-local
and Prefect runs tasks in worker threads), and always end: FINISHED, FAILED on an exception,
KILLED on SIGTERM.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunStatus

from moft.config import MoftConfig


def tracking_uri(cfg: MoftConfig | None = None) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then `mlruns.db` (SQLite) at the project root."""
    if cfg is not None and cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def absolute_tracking_uri(cfg: MoftConfig | None = None) -> str:
    """:func:`tracking_uri` with a relative SQLite path made absolute, so that a process started
    in another directory (a work-pool worker) opens the same store."""
    uri = tracking_uri(cfg)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_absolute():
        return f"{prefix}{Path.cwd() / uri[len(prefix):]}"
    return uri


def experiment_name(cfg: MoftConfig) -> str:
    return cfg.tracking.experiment or f"moft-{cfg.profile}"


def mlflow_client(cfg: MoftConfig) -> MlflowClient:
    """A client on the configured store; also points the fluent API (model logging, loading) there."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (Path.cwd() / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {dotted.key: value} (MLflow params)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): str(tree)[:6000]}


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MlflowTracker:
    """:class:`moft.tracker.Tracker` on one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str, cfg: MoftConfig):
        self.client, self.run_id, self.cfg = client, run_id, cfg

    def log_params(self, params: dict[str, Any]) -> None:
        if params:
            self.client.log_batch(
                self.run_id,
                params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()],
            )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        ts = int(time.time() * 1000)
        batch = [
            mlflow.entities.Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if v is not None and v == v  # drop NaN
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(
        self, directory: Path, artifact_path: str | None = None, patterns: tuple[str, ...] = ("*",)
    ) -> None:
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns):
                rel = path.parent.relative_to(directory)
                sub = "/".join(p for p in (artifact_path, str(rel) if str(rel) != "." else None) if p)
                self.client.log_artifact(self.run_id, str(path), sub or None)

    def log_model(self, model_dir: Path, base_dir: Path, method: str, cfg: Any) -> None:
        """Log the trained front as a pyfunc model taking the trade-off as params; register it."""
        from moft.serving import log_front_model

        registered = cfg.tracking.registered_model if method == "hyperdpo" else None
        with mlflow.start_run(run_id=self.run_id, nested=True):
            log_front_model(model_dir, base_dir, method, cfg, registered)


@contextlib.contextmanager
def _terminal_status(client: MlflowClient, run_id: str) -> Iterator[None]:
    """End the run FINISHED, FAILED on exception, KILLED on SIGTERM/KeyboardInterrupt."""
    previous = None
    if _in_main_thread():

        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def pipeline_run(cfg: MoftConfig, flow_run_id: str | None = None) -> Iterator[MlflowTracker]:
    """The parent run of one pipeline run: resolved config as params, provenance as tags."""
    client = mlflow_client(cfg)
    exp_id = _experiment_id(client, experiment_name(cfg))
    tags = {
        "mlflow.runName": f"{cfg.profile}-pipeline",
        "moft.profile": cfg.profile,
        "moft.git_commit": git_commit(),
        "moft.kind": "pipeline",
    }
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    run = client.create_run(exp_id, tags=tags)
    tracker = MlflowTracker(client, run.info.run_id, cfg)
    with _terminal_status(client, run.info.run_id):
        tracker.log_params(flatten(cfg.model_dump(mode="json")))
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / "config.json"
            cfg_path.write_text(cfg.model_dump_json(indent=2))
            tracker.log_artifact(cfg_path)
        yield tracker


@contextlib.contextmanager
def stage_run(
    cfg: MoftConfig, stage: str, parent_run_id: str | None = None
) -> Iterator[MlflowTracker]:
    """A child run of ``parent_run_id`` (or a standalone run, e.g. under `dvc repro`)."""
    client = mlflow_client(cfg)
    exp_id = _experiment_id(client, experiment_name(cfg))
    tags = {"mlflow.runName": stage, "moft.profile": cfg.profile, "moft.stage": stage}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    else:
        tags["moft.git_commit"] = git_commit()
    run = client.create_run(exp_id, tags=tags)
    with _terminal_status(client, run.info.run_id):
        yield MlflowTracker(client, run.info.run_id, cfg)
