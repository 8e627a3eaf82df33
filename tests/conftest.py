"""Shared fixtures: quiet offline environment, one Prefect test server for the session."""

from __future__ import annotations

import os

for key, value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TQDM_DISABLE": "1",
}.items():
    os.environ.setdefault(key, value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A seconds-sized budget: the real pipeline, tiny models, few epochs.
TINY = [
    "base.model.hidden=32",
    "base.optim.epochs=3",
    "finetune.hyperdpo.model.hidden=32",
    "finetune.hyperdpo.optim.epochs=4",
    "finetune.baselines.optim.epochs=2",
    "evaluate.bootstrap=50",
    "runtime.threads=1",  # concurrent jobs and other processes share 2 cores: no thread fights
]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they cost seconds
    (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (each costs ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a scratch directory: outputs, MLflow store and artifacts all land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    return tmp_path
