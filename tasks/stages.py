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
    """Files a stage reads and writes: a cache hit needs both unchanged."""
    layout = stages.Layout.of(cfg)
    raw = [_data_path(p) for p in cfg.data.paths]
    return {
        "prepare": raw + [layout.prepared],
        "validate": [layout.prepared, layout.validation],
        "train_base": [layout.prepared, layout.validation, layout.base],
        "finetune": [layout.prepared, layout.base, layout.finetuned(method or "")],
        "evaluate": [layout.prepared, layout.base, layout.artifacts / "finetune", layout.reports],
        "report": [layout.pareto_json],
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


def _run(stage: str, cfg: MoftConfig, parent_run_id: str | None, **kwargs: Any) -> str:
    fn: Callable[..., Path] = getattr(stages, stage)
    if parent_run_id is None:
        return str(fn(cfg, tracker=NullTracker(), **kwargs))
    from moft.tracking import stage_run

    label = f"{stage}:{kwargs['method']}" if "method" in kwargs else stage
    with stage_run(cfg, label, parent_run_id) as tracker:
        return str(fn(cfg, tracker=tracker, **kwargs))


@task(
    name="stage",
    task_run_name="{stage}",
    cache_key_fn=stage_cache_key,
    persist_result=True,
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
