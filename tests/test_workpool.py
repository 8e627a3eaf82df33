"""The work-pool path on a real Prefect server (SPEC 8): a `process` pool stands in for the GPU
pool, a worker runs the moft-finetune deployment, and the pipeline (with
`runtime.finetune_backend=deployment`) starts one flow run of it per method and waits.

The server and the worker are subprocesses in their own process groups, with their own
PREFECT_HOME; the flow talks to that server only inside `temporary_settings`, so the session's
test harness is left as it was. Both are stopped by process group in `finally` blocks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TINY

from moft.config import load_config
from moft.io import read_json

sys.path.insert(0, str(PROJECT_ROOT))

pytestmark = pytest.mark.e2e

PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "moft-cpu"  # the pool prefect.yaml's CPU deployments name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _subprocess(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[subprocess.Popen]:
    """Run ``args`` in its own process group; SIGTERM (then SIGKILL) the whole group on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            with contextlib.suppress(ProcessLookupError):  # children left behind by the leader
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    pytest.fail(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def prefect_server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`prefect server start` on a free port with its own PREFECT_HOME: (api url, env, log dir)."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    log = home / "server.log"
    port = url.rsplit(":", 1)[1].split("/")[0]
    args = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port, "--no-ui", "--no-scheduler"]
    with _subprocess(args, env, log, home) as server:
        _wait_healthy(url, server, log)
        yield url, env, home


def _drain_api_workers() -> None:
    """Flush logs and events to the server before it stops."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.drain_all(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


def test_finetune_stage_runs_as_flow_runs_of_the_deployment_on_a_worker(prefect_server, workdir):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    from flows.finetune import finetune
    from flows.pipeline import pipeline
    from tasks.stages import run_stage_deployment

    url, env, home = prefect_server
    overrides = TINY + ["runtime.finetune_backend=deployment", "finetune.methods=[hyperdpo,dpo_ls]"]
    overrides += ["runtime.threads=1"]  # a thread per job: oversubscribed torch threads crawl on busy CPUs
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process", base_job_template=template))
        deployment_id = finetune.from_source(str(PROJECT_ROOT), "flows/finetune.py:finetune").deploy(
            name="moft-finetune", work_pool_name=POOL, print_next_steps=False
        )
        worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
        worker_args = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"]
        worker_args += ["--install-policy", "never"]
        with _subprocess(worker_args, worker_env, home / "worker.log", workdir):
            # meanwhile, the project's prefect.yaml registers its CPU deployments on the same pool
            deploy = subprocess.Popen(
                [PREFECT, "--no-prompt", "deploy", "-n", "moft-pipeline", "-n", "moft-retrain"],
                cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            try:
                result = pipeline(profile="ltr-letor", overrides=overrides, tracking=True)
                failure = r"finetune of hyperdpo: flow run .* ended Failed: .*prepare.json is missing"
                with pytest.raises(RuntimeError, match=failure):
                    empty = load_config("ltr-letor", overrides + [f"artifacts_dir={workdir / 'empty'}"])
                    run_stage_deployment.fn(empty, "finetune", None, method="hyperdpo")
                deploy_log = deploy.communicate(timeout=300)[0]
            finally:
                if deploy.poll() is None:
                    deploy.kill()
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            registered = {d.name: d for d in client.read_deployments()}
        _drain_api_workers()

    completed = sorted(r.name for r in runs if r.state.is_completed())
    assert completed == ["finetune-dpo_ls", "finetune-hyperdpo"], runs
    assert all(r.work_pool_name == POOL for r in runs)
    assert all(r.parent_task_run_id is not None for r in runs if r.state.is_completed())  # subflows
    assert [r.name for r in runs if r.state.is_failed()] == ["finetune-hyperdpo"]  # the empty config
    wave = [r for r in runs if r.state.is_completed()]
    assert max(r.start_time for r in wave) < min(r.end_time for r in wave)  # one wave, concurrently

    artifacts = workdir / "artifacts" / "ltr-letor" / "finetune"
    for method in ("hyperdpo", "dpo_ls"):
        assert (artifacts / method / "meta.json").is_file(), method
    summary = read_json(Path(result["pareto_json"]))
    assert list(summary["methods"]) == ["hyperdpo", "dpo_ls"]

    mlflow = MlflowClient()
    parent = mlflow.get_run(result["mlflow_run_id"])
    children = mlflow.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    finetunes = {r.data.tags["moft.stage"]: r for r in children if "finetune" in r.data.tags["moft.stage"]}
    assert set(finetunes) == {"finetune:hyperdpo", "finetune:dpo_ls"}
    assert all(r.info.status == "FINISHED" for r in finetunes.values())
    version = mlflow.get_model_version_by_alias("moft-hyperdpo", "champion")
    assert version.run_id == finetunes["finetune:hyperdpo"].info.run_id  # registered by the worker
    assert result["champion"]["decision"] == "promote"

    assert "moft-retrain" in registered and "moft-pipeline" in registered, deploy_log
    assert registered["moft-retrain"].schedules[0].schedule.cron == "0 3 * * 1"
    pull = registered["moft-pipeline"].pull_steps[0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == str(PROJECT_ROOT)
