"""One finetune job as its own flow: what a GPU work pool runs when the pipeline, with
`runtime.finetune_backend=deployment`, starts the `moft-finetune` deployment once per method.

It runs the same finetune stage task as the in-process pipeline (an MLflow child run of
``parent_run_id`` when tracking). The artifacts it reads and writes are exchanged through the
pipeline's artifacts directory, so the worker must see that directory at the same absolute path
(a mounted volume, the same NFS path); the MLflow store likewise.

    prefect deploy -n moft-finetune                  # declared in prefect.yaml (GPU work pool)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow  # noqa: E402

from moft.config import load_config, validate_tree  # noqa: E402
from tasks.stages import stage  # noqa: E402


@flow(name="moft-finetune", flow_run_name="finetune-{method}", log_prints=True)
def finetune(
    method: str,
    profile: str = "ltr-mslr",
    overrides: list[str] | None = None,
    parent_run_id: str | None = None,
    jobs: int = 1,
    config: dict[str, Any] | None = None,
) -> str:
    """Fine-tune ``method`` of ``profile`` with ``overrides``; returns its output directory.

    ``config``, a resolved configuration (the pipeline passes its own, with absolute paths),
    replaces profile and overrides, so the worker's working directory and params.yaml cannot
    change what is trained. ``jobs``: concurrent jobs sharing the machine's cores.
    """
    cfg = validate_tree(config) if config is not None else load_config(profile, overrides or [])
    return stage(cfg, "finetune", parent_run_id, method=method, jobs=jobs, in_process=True)
