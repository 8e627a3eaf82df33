"""Prefect tasks: one thin wrapper per stage (MLflow child run, retries, input-based caching).

No ML logic here: every task calls the stage function of :mod:`moft.stages`.
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
from moft.methods import get_method
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
        + ([layout.finetuned(r) for r in get_method(method).requires] if method else []),
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
    sections = cfg.section_hash(*STAGE_SECTIONS[stage]) if STAGE_SECTIONS[stage] else ""
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
) -> Any:
    """Run a stage task, reusing a cached result only when the stage's outputs still exist."""
    task_fn = run_stage.with_options(refresh_cache=not stage_output(cfg, name, method).exists())
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
