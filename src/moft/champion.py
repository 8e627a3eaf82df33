"""The registry's `champion` alias: it moves to a run's HyperDPO model version only when that
model's hypervolume beats the champion's on the same evaluation data (SPEC 7).

Every registered version considered is tagged with its hypervolume, the key of the evaluation that
measured it (prepared data, weight grid, metric, reference point, temperature scale) and the DVC
md5 of the raw data it was trained on. A champion measured under another key is re-evaluated on
the current evaluation data: its registered pyfunc model is loaded and scored by
:mod:`moft.evaluation`, the path the evaluate stage takes. When that cannot be done (other
objectives, other features, a model that does not load), the champion is kept and the reason
recorded: a number measured on other data never decides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from moft.config import MoftConfig
from moft.io import atomic_write_json, read_json
from moft.stages import Layout, Prepared, evaluation_grid, file_sha256, resolve_data_path
from moft.tracking import MlflowTracker, mlflow_client

ALIAS = "champion"
HYPERVOLUME_TAG = "moft.hypervolume"
EVAL_KEY_TAG = "moft.eval_key"
RAW_DATA_TAG = "moft.raw_data_md5"
OBJECTIVES_TAG = "moft.objectives"
PROFILE_TAG = "moft.profile"
METHOD = "hyperdpo"  # the registered model is the HyperDPO front (tracking.registered_model)


def raw_data_md5(cfg: MoftConfig) -> str:
    """The md5 DVC 3 records (`dvc.lock`, `.dvc` files) for each raw data file of the profile,
    comma-joined in `data.paths` order."""
    from dvc_data.hashfile.hash import file_md5

    return ",".join(file_md5(str(resolve_data_path(p))) for p in cfg.data.paths)


def objective_spec(cfg: MoftConfig) -> str:
    """What each objective axis measures; fronts on different specs are not comparable."""
    spec = [
        {"name": o.name, "source": o.source_column, "direction": o.direction, "transform": o.transform}
        for o in cfg.objectives
    ]
    return json.dumps(spec, separators=(",", ":"))


def headline_beta_scale(cfg: MoftConfig) -> float:
    """The temperature scale whose front gives a method's headline hypervolume in pareto.json."""
    return 1.0 if 1.0 in cfg.evaluate.beta_scales else cfg.evaluate.beta_scales[0]


def evaluation_key(cfg: MoftConfig, summary: dict) -> str:
    """Hash of everything a hypervolume depends on besides the model: the prepared test split
    (data, split and objective labels), the weight grid, the metric and k, the reference point
    and the temperature scale."""
    parts = {
        "data_hash": summary["data_hash"],
        "test_split": file_sha256(Layout.of(cfg).prepared / "test.parquet"),
        "grid": hashlib.sha256(np.asarray(evaluation_grid(cfg), dtype=np.float64).tobytes()).hexdigest(),
        "metric": summary["metric"],
        "reference_point": summary["reference_point"],
        "beta_scale": headline_beta_scale(cfg),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def champion_version(cfg: MoftConfig, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version the `champion` alias points to, or None when there is none yet."""
    client = client or mlflow_client(cfg)
    name = cfg.tracking.registered_model
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # nothing registered yet
            return None
        raise
    return client.get_model_version(name, str(aliases[ALIAS])) if ALIAS in aliases else None


def reevaluate_hypervolume(model_uri: str, cfg: MoftConfig, summary: dict) -> float:
    """Hypervolume of a registered front model on the current evaluation data (the prepared test
    split, grid, k and reference point of ``cfg``/``summary``), scored as the evaluate stage does."""
    import mlflow.pyfunc

    from moft.data.groups import GroupedItems
    from moft.evaluation import front_metrics

    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()  # moft.serving.FrontModel
    if model.m != len(cfg.objectives):
        raise ValueError(f"{model_uri} trades off {model.m} objectives, this evaluation {len(cfg.objectives)}")
    prepared = Prepared.load(cfg)
    frame = prepared.frame("test")
    missing = [c for c in model.feature_cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{model_uri} reads features the prepared data lacks, e.g. {missing[:5]}")
    test = GroupedItems.from_frame(frame, model.feature_cols, prepared.objective_cols)
    c = headline_beta_scale(cfg)
    front = front_metrics(lambda w: model.front.policy(w, c), test, evaluation_grid(cfg), cfg.evaluate.k)
    return front.hypervolume(np.asarray(summary["reference_point"], dtype=np.float64))


def update_champion(cfg: MoftConfig, parent_run_id: str | None = None) -> dict[str, Any]:
    """Decide whether this run's HyperDPO model becomes the champion, move the alias if so, and
    record the decision (version tags, parent-run tags and metrics, reports/<profile>/champion.json).

    With ``parent_run_id`` (the pipeline) the candidate is the version registered by that run's
    `finetune:hyperdpo` child and its hypervolume is the one in pareto.json. Without it (the CLI,
    e.g. after `dvc repro`) the candidate is the newest version of this profile, re-evaluated on
    the current evaluation data.
    """
    client = mlflow_client(cfg)
    name = cfg.tracking.registered_model
    summary = read_json(Layout.of(cfg).pareto_json)
    record: dict[str, Any] = {
        "profile": cfg.profile,
        "registered_model": name,
        "eval_key": None,
        "raw_data_md5": None,
        "pipeline_run_id": parent_run_id,
        "candidate": None,
        "incumbent": None,
    }
    incumbent = champion_version(cfg, client)
    if incumbent is not None:
        record["incumbent"] = {"version": str(incumbent.version), "eval_key": incumbent.tags.get(EVAL_KEY_TAG)}
    candidate = (
        _version_of_run(client, name, parent_run_id) if parent_run_id else _newest_version(client, cfg)
    )
    if candidate is None:
        if METHOD not in summary["methods"]:
            why = f"finetune.methods has no {METHOD}"
        elif parent_run_id:  # a cached finetune stage, or a track that registers no model (llm)
            why = "this run registered no HyperDPO model version"
        else:
            why = f"no HyperDPO version of profile {cfg.profile} is registered"
        return _finish(cfg, client, record, "keep", f"{why}: champion unchanged", incumbent)

    key, raw_md5 = evaluation_key(cfg, summary), raw_data_md5(cfg)
    record.update(eval_key=key, raw_data_md5=raw_md5)
    if parent_run_id:
        candidate_hv = float(summary["methods"][METHOD]["hypervolume"])
    else:
        candidate_hv = reevaluate_hypervolume(f"models:/{name}/{candidate.version}", cfg, summary)
    record["candidate"] = {
        "version": str(candidate.version), "run_id": candidate.run_id, "hypervolume": candidate_hv
    }
    for tag, value in {
        HYPERVOLUME_TAG: repr(candidate_hv),
        EVAL_KEY_TAG: key,
        RAW_DATA_TAG: raw_md5,
        OBJECTIVES_TAG: objective_spec(cfg),
        PROFILE_TAG: cfg.profile,
        "moft.data_hash": summary["data_hash"],
    }.items():
        client.set_model_version_tag(name, candidate.version, tag, value)

    if incumbent is None:
        return _promote(cfg, client, record, candidate, "no champion yet")
    if str(incumbent.version) == str(candidate.version):
        reason = f"version {candidate.version} already is the champion"
        return _finish(cfg, client, record, "keep", reason, incumbent)
    incumbent_hv, source = _incumbent_hypervolume(cfg, summary, incumbent, key)
    record["incumbent"].update(hypervolume=incumbent_hv, hypervolume_source=source)
    if incumbent_hv is None:
        return _finish(cfg, client, record, "keep", f"champion v{incumbent.version} kept: {source}", incumbent)
    versus = f"HV {candidate_hv:.6f} vs champion v{incumbent.version} {incumbent_hv:.6f} ({source})"
    if candidate_hv > incumbent_hv:
        return _promote(cfg, client, record, candidate, f"higher {versus}")
    return _finish(cfg, client, record, "keep", f"not higher: {versus}", incumbent)


def _incumbent_hypervolume(
    cfg: MoftConfig, summary: dict, incumbent: ModelVersion, key: str
) -> tuple[float | None, str]:
    """The champion's HV on the current evaluation data and where it comes from; (None, why) when
    it cannot be measured there."""
    if incumbent.tags.get(EVAL_KEY_TAG) == key and HYPERVOLUME_TAG in incumbent.tags:
        return float(incumbent.tags[HYPERVOLUME_TAG]), "same evaluation"
    spec = incumbent.tags.get(OBJECTIVES_TAG)
    if spec != objective_spec(cfg):
        return None, (
            f"it was evaluated on other objectives ({spec}), so the fronts are not comparable; "
            "give each profile its own tracking.registered_model"
        )
    uri = f"models:/{incumbent.name}/{incumbent.version}"
    try:
        return reevaluate_hypervolume(uri, cfg, summary), "re-evaluated on the current data"
    except (MlflowException, OSError, ValueError) as exc:
        return None, f"it could not be re-evaluated on the current data ({exc})"


def _version_of_run(client: MlflowClient, name: str, parent_run_id: str) -> ModelVersion | None:
    """The version registered by the `finetune:hyperdpo` child run of ``parent_run_id``."""
    experiment = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs(
        [experiment],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
        f"and tags.`moft.stage` = 'finetune:{METHOD}'",
    )
    for run in children:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        if versions:
            return max(versions, key=lambda v: int(v.version))
    return None


def _newest_version(client: MlflowClient, cfg: MoftConfig) -> ModelVersion | None:
    """The newest version whose training run belongs to this profile."""
    versions = client.search_model_versions(f"name = '{cfg.tracking.registered_model}'")
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if version.run_id and client.get_run(version.run_id).data.tags.get(PROFILE_TAG) == cfg.profile:
            return version
    return None


def _promote(
    cfg: MoftConfig, client: MlflowClient, record: dict, candidate: ModelVersion, reason: str
) -> dict[str, Any]:
    client.set_registered_model_alias(cfg.tracking.registered_model, ALIAS, candidate.version)
    return _finish(cfg, client, record, "promote", f"v{candidate.version} promoted: {reason}", candidate)


def _finish(
    cfg: MoftConfig,
    client: MlflowClient,
    record: dict,
    decision: str,
    reason: str,
    champion: ModelVersion | None,
) -> dict[str, Any]:
    """Write champion.json and, for a pipeline run, its tags, metrics and artifact."""
    record.update(decision=decision, reason=reason)
    record["champion_version"] = str(champion.version) if champion else None
    path = atomic_write_json(Layout.of(cfg).reports / "champion.json", record)
    if record["pipeline_run_id"]:
        parent = MlflowTracker(client, record["pipeline_run_id"], cfg)
        tags = {
            "moft.champion.decision": decision,
            "moft.champion.reason": reason[:5000],
            "moft.champion.version": str(record["champion_version"]),
        }
        if record["eval_key"]:  # measured: a candidate was considered
            tags.update({RAW_DATA_TAG: record["raw_data_md5"], EVAL_KEY_TAG: record["eval_key"]})
        parent.set_tags(tags)
        incumbent = record["incumbent"] or {}
        parent.log_metrics(
            {
                "champion_candidate_hypervolume": (record["candidate"] or {}).get("hypervolume"),
                "champion_incumbent_hypervolume": incumbent.get("hypervolume"),
                "champion_promoted": float(decision == "promote"),
            }
        )
        parent.log_artifact(Path(path), "champion")
    return record
