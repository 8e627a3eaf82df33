"""The moft pipeline as a Prefect flow: prepare -> validate -> train_base -> finetune (methods
fan out concurrently) -> evaluate -> report, every stage a child run of one MLflow parent run;
then, when tracking, the registry's `champion` alias moves to this run's HyperDPO model if its
hypervolume is higher (moft.champion). With `runtime.finetune_backend=deployment` each finetune
job is a flow run of the `moft-finetune` deployment (flows/finetune.py, e.g. a GPU work pool).

    moft run --profile ltr-mslr                      # in-process, what `make run` does
    python flows/pipeline.py serve                   # a served deployment, triggerable from the UI
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, runtime  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from moft.config import load_config  # noqa: E402
from moft.io import read_json  # noqa: E402
from moft.stages import finetune_waves  # noqa: E402
from tasks.stages import promote_champion, run_validation, stage  # noqa: E402


@flow(name="moft-pipeline", log_prints=True)
def pipeline(profile: str = "ltr-mslr", overrides: list[str] | None = None, tracking: bool = True) -> dict:
    """Run every stage of ``profile`` with ``overrides`` (dotted.key=value strings)."""
    cfg = load_config(profile, overrides or [])
    track = tracking and cfg.tracking.enabled
    if track:
        from moft.tracking import pipeline_run

        run_ctx = pipeline_run(cfg, flow_run_id=str(runtime.flow_run.id))
    else:
        run_ctx = contextlib.nullcontext(None)
    with run_ctx as parent:
        parent_id = parent.run_id if parent is not None else None
        stage(cfg, "prepare", parent_id)
        run_validation(cfg, parent_id)
        stage(cfg, "train_base", parent_id)
        for wave in finetune_waves(cfg):  # prerequisites first, then the methods, each fanned out
            futures = [
                stage(cfg, "finetune", parent_id, method=m, jobs=len(wave), submit=True) for m in wave
            ]
            for future in futures:
                future.result()
        pareto_path = stage(cfg, "evaluate", parent_id)
        summary_md = stage(cfg, "report", parent_id)
        summary = read_json(Path(pareto_path))
        publish_artifacts(summary, Path(pareto_path).parent, Path(summary_md).read_text())
        champion = None
        if parent is not None:
            parent.set_tags({"moft.data_hash": summary["data_hash"]})
            parent.log_metrics({f"{m}_hypervolume": e["hypervolume"] for m, e in summary["methods"].items()})
            parent.log_artifact(Path(pareto_path).parent / "pareto.png", "pareto")
            parent.log_artifact(Path(pareto_path), "pareto")
            champion = promote_champion(cfg, parent_id)
    return {"pareto_json": pareto_path, "summary_md": summary_md, "mlflow_run_id": parent_id, "champion": champion}


def publish_artifacts(summary: dict, report_dir: Path, summary_md: str) -> None:
    """Prefect artifacts: the front as a table, the summary and plot link as markdown."""
    rows = []
    for method, entry in summary["methods"].items():
        for p in entry["points"]:
            row = {"method": method, "w": ", ".join(f"{x:.2f}" for x in p["w"])}
            row.update({n: round(v, 4) for n, v in zip(summary["objectives"], p["objectives"])})
            row["main"] = round(p["main"], 4)
            rows.append(row)
    key = summary["profile"].replace("_", "-").lower()
    create_table_artifact(key=f"{key}-front", table=rows, description=f"Fronts of {summary['profile']}")
    comparison = [
        {
            "method": method,
            "HV": round(e["hypervolume"], 4),
            "HV 95% CI": "[{:.4f}, {:.4f}]".format(*e["hypervolume_ci95"]),
            "P(hyperdpo HV greater)": _rounded(summary["paired"].get(f"hyperdpo>{method}")),
            **{f"steer {n}": round(v, 2) for n, v in zip(summary["objectives"], e["steerability"])},
            "main": f"{e['main_mean']:.4f} ± {e['main_std']:.4f}",
            "train s": round(e["train_seconds"], 1),
            "jobs": e["n_jobs"],
            "params": e["trainable_params"],
        }
        for method, e in summary["methods"].items()
    ]
    create_table_artifact(
        key=f"{key}-methods", table=comparison, description=f"Methods compared on {summary['profile']}"
    )
    plot = (report_dir / "pareto.png").resolve()
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=f"{summary_md}\n\n![Pareto plot]({plot.as_uri()})\n\n[pareto.png]({plot.as_uri()})",
        description=f"Pareto summary of {summary['profile']}",
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        pipeline.serve(
            name="moft-pipeline",
            parameters={"profile": "ltr-mslr", "overrides": [], "tracking": True},
            description="Run the moft pipeline for a profile; set overrides as dotted.key=value.",
        )
    else:
        pipeline()
