"""Prefect tasks: one thin wrapper per stage (MLflow child run, retries, input-based caching).

No ML logic here: every task calls the stage function of :mod:`moft.stages`, in this process or,
for finetune with `runtime.finetune_backend: deployment`, as a flow run of the `moft-finetune`
deployment (flows/finetune.py) on a work pool. The champion task calls :mod:`moft.champion`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from moft import stages
from moft.config import MoftConfig
from moft.tracker import NullTracker

# Config sections each stage depends on (a change elsewhere does not invalidate its cache).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("data", "objectives"),
    "validate": ("data", "objectives"),
    "train_base": ("base", "runtime"),
    "finetune": ("finetune", "objectives", "evaluate", "runtime"),
    "evaluate": ("evaluate", "finetune", "objectives"),
    "report": (),
}


def stage_sections(cfg: MoftConfig, stage: str) -> tuple[str, ...]:
    """:data:`STAGE_SECTIONS`, plus `synthetic` (generator, reference, taus, thresholds) for every
    stage of the synthetic track but the report; other tracks' keys do not depend on it."""
    sections = STAGE_SECTIONS[stage]
    return (*sections, "synthetic") if cfg.track == "synthetic" and sections else sections


def _tree_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if f.exists():
                digest.update(str(f).encode())
                digest.update(f.read_bytes())
            else:
                digest.update(f"missing:{f}".encode())
    return digest.hexdigest()


def stage_inputs(cfg: MoftConfig, stage: str, method: str | None) -> list[Path]:
    """Files a stage reads: the cache key hashes their content."""
    layout = stages.Layout.of(cfg)
    # status.json (success + data hash), not the report: GX stamps each report with its run time
    valid = layout.validation / "status.json"
    return {
        "prepare": [_data_path(p) for p in cfg.data.paths],
        "validate": [layout.prepared],
        "train_base": [layout.prepared, valid],
        "finetune": [layout.prepared, valid, layout.base]
        + ([layout.finetuned(r) for r in stages.method_requires(cfg, method)] if method else []),
        "evaluate": [layout.prepared, layout.base, layout.artifacts / "finetune"],
        "report": [layout.pareto_json],
    }[stage]


def stage_output(cfg: MoftConfig, stage: str, method: str | None) -> Path:
    """The file whose presence says a stage's outputs exist."""
    layout = stages.Layout.of(cfg)
    return {
        "prepare": layout.prepared / "prepare.json",
        "validate": layout.validation / "status.json",
        "train_base": layout.base / "meta.json",
        "finetune": layout.finetuned(method or "") / "meta.json",
        "evaluate": layout.pareto_json,
        "report": layout.reports / "summary.md",
    }[stage]


def _data_path(path: str) -> Path:
    try:
        return stages.resolve_data_path(path)
    except FileNotFoundError:  # the stage itself reports it; the key just differs
        return Path(path)


def stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    cfg: MoftConfig = parameters["cfg"]
    stage, method = parameters["stage"], parameters.get("method")
    sections = cfg.section_hash(*stage_sections(cfg, stage)) if STAGE_SECTIONS[stage] else ""
    return "-".join(
        [stage, method or "", cfg.profile, sections, _tree_digest(stage_inputs(cfg, stage, method))]
    )


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix: I/O and tracking-store hiccups (e.g. SQLite locked by a
    concurrent child run), never a deterministic failure such as bad data or bad config."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result itself could not be read: not worth retrying blindly
        return False
    text = str(exc).lower()
    return isinstance(exc, (ConnectionError, TimeoutError)) or "database is locked" in text


def _run(stage: str, cfg: MoftConfig, parent_run_id: str | None, **kwargs: Any) -> str:
    fn: Callable[..., Path] = getattr(stages, stage)
    if parent_run_id is None:
        return str(fn(cfg, tracker=NullTracker(), **kwargs))
    from moft.tracking import stage_run

    label = f"{stage}:{kwargs['method']}" if "method" in kwargs else stage
    with stage_run(cfg, label, parent_run_id) as tracker:
        return str(fn(cfg, tracker=tracker, **kwargs))


def stage(
    cfg: MoftConfig,
    name: str,
    parent_run_id: str | None = None,
    method: str | None = None,
    jobs: int = 1,
    submit: bool = False,
    in_process: bool = False,
) -> Any:
    """Run a stage task, reusing a cached result only when the stage's outputs still exist.

    With `runtime.finetune_backend: deployment` a finetune stage runs as a flow run of
    `runtime.finetune_deployment` (unless ``in_process``: what that flow itself asks for).
    """
    remote = name == "finetune" and cfg.runtime.finetune_backend == "deployment" and not in_process
    task_fn = (run_stage_deployment if remote else run_stage).with_options(
        refresh_cache=not stage_output(cfg, name, method).exists()
    )
    call = task_fn.submit if submit else task_fn
    return call(cfg, name, parent_run_id, method=method, jobs=jobs)


def _task_run_name() -> str:
    """`finetune:dpo_ls`-style names, so the UI tells the fanned-out jobs apart."""
    from prefect.runtime import task_run

    params = task_run.parameters
    return f"{params['stage']}:{params['method']}" if params.get("method") else params["stage"]


@task(
    name="stage",
    task_run_name=_task_run_name,
    cache_key_fn=stage_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=transient_failure,
    log_prints=True,
)
def run_stage(
    cfg: MoftConfig,
    stage: str,
    parent_run_id: str | None = None,
    method: str | None = None,
    jobs: int = 1,
) -> str:
    """Run ``stage`` (and ``method`` for finetune); returns its output path."""
    kwargs: dict[str, Any] = {"method": method, "jobs": jobs} if stage == "finetune" else {}
    return _run(stage, cfg, parent_run_id, **kwargs)


@task(name="validate", cache_policy=NO_CACHE, log_prints=True)
def run_validation(cfg: MoftConfig, parent_run_id: str | None = None) -> str:
    """Validation is never cached: it must fail loudly every time the data is bad."""
    return _run("validate", cfg, parent_run_id)


DEPLOYMENT_POLL_SECONDS = 2.0


@task(
    name="stage-deployment",
    task_run_name=_task_run_name,
    cache_key_fn=stage_cache_key,
    persist_result=True,
    log_prints=True,
)
def run_stage_deployment(
    cfg: MoftConfig,
    stage: str,
    parent_run_id: str | None = None,
    method: str | None = None,
    jobs: int = 1,
) -> str:
    """Run the finetune stage of ``method`` as a flow run of `runtime.finetune_deployment` (e.g. on
    a GPU work pool) and wait for it. Same cache key as :func:`run_stage`: the outputs are the same
    files, written by the worker into the shared artifacts directory."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = cfg.runtime.finetune_deployment
    parameters = {"method": method, "config": worker_config(cfg), "parent_run_id": parent_run_id, "jobs": jobs}
    try:
        flow_run = run_deployment(
            name,
            parameters=parameters,
            timeout=cfg.runtime.finetune_timeout,
            poll_interval=DEPLOYMENT_POLL_SECONDS,
        )
    except ObjectNotFound:
        raise RuntimeError(
            f"deployment {name!r} (runtime.finetune_deployment) does not exist on "
            "this Prefect server: register it (`prefect deploy -n moft-finetune`) or set "
            "runtime.finetune_backend=in_process"
        ) from None
    state = flow_run.state
    if state is None or not state.is_completed():
        status = f"is still {state.name if state else 'unscheduled'} after {cfg.runtime.finetune_timeout} s"
        if state is not None and state.is_final():
            status = f"ended {state.name}: {state.message or 'no message'}"
        raise RuntimeError(f"finetune of {method}: flow run {flow_run.name} ({flow_run.id}) of {name} {status}")
    out = stage_output(cfg, "finetune", method)
    if not out.exists():
        raise stages.StageInputError(
            f"finetune of {method} completed on a worker but {out} is missing here: workers must "
            f"write to this artifacts directory ({cfg.artifacts().parent}) on shared storage"
        )
    return str(stages.Layout.of(cfg).finetuned(method or ""))


def worker_config(cfg: MoftConfig) -> dict[str, Any]:
    """``cfg`` as a flow-run parameter, with the paths a worker must share made absolute: its
    artifacts and reports roots and the MLflow store, wherever the worker's working directory is."""
    tree = cfg.model_dump(mode="json")
    tree["artifacts_dir"] = str(cfg.artifacts().parent.resolve())
    tree["reports_dir"] = str(cfg.reports().parent.resolve())
    if cfg.tracking.enabled:
        from moft.tracking import absolute_tracking_uri

        tree["tracking"]["tracking_uri"] = absolute_tracking_uri(cfg)
    return tree


@task(name="champion", cache_policy=NO_CACHE, log_prints=True)
def promote_champion(cfg: MoftConfig, parent_run_id: str) -> dict[str, Any]:
    """Move the registry's `champion` alias to this run's HyperDPO model if its HV is higher."""
    from moft.champion import update_champion

    decision = update_champion(cfg, parent_run_id)
    print(f"champion: {decision['reason']}")
    return decision
