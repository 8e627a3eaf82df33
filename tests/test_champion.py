"""The registry's `champion` alias (SPEC 7) with real tiny models in a temporary SQLite store.

Two HyperDPO models (seeds 0 and 1) are trained once on the same data and base scorer; each test
registers them, in the order it needs, through the tracking path the finetune stage takes
(a pipeline parent run, a `finetune:hyperdpo` child run, `MlflowTracker.log_model`) and lets
:func:`moft.champion.update_champion` decide.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import TINY

from moft import stages
from moft.champion import (
    EVAL_KEY_TAG,
    HYPERVOLUME_TAG,
    OBJECTIVES_TAG,
    RAW_DATA_TAG,
    champion_version,
    evaluation_key,
    update_champion,
)
from moft.config import MoftConfig, load_config
from moft.io import read_json

pytestmark = pytest.mark.e2e

NAME = "moft-hyperdpo"


def _config(root: Path, *extra: str) -> MoftConfig:
    return load_config(
        "ltr-letor",  # the smallest sample: a tiny model trains in seconds
        [*TINY, "finetune.methods=[hyperdpo]", "runtime.threads=1"]  # one thread: robust to busy CPUs
        + [f"artifacts_dir={root}/artifacts", f"reports_dir={root}/reports", *extra],
    )


def _copy(src: MoftConfig, dst: MoftConfig, *parts: str) -> None:
    for part in parts:
        shutil.copytree(src.artifacts() / part, dst.artifacts() / part)


def _hv(cfg: MoftConfig) -> float:
    return read_json(stages.Layout.of(cfg).pareto_json)["methods"]["hyperdpo"]["hypervolume"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, MoftConfig]:
    """Configs `a` and `b`: HyperDPO seeds 0 and 1 on one base scorer, each evaluated."""
    root = tmp_path_factory.mktemp("champion")
    a, b = _config(root / "a"), _config(root / "b", "finetune.hyperdpo.optim.seed=1")
    for stage in ("prepare", "validate", "train_base"):
        getattr(stages, stage)(a)
    _copy(a, b, "prepared", "validation", "base")
    for cfg in (a, b):
        stages.finetune(cfg, "hyperdpo")
        stages.evaluate(cfg)
    assert _hv(a) != _hv(b)
    return {"a": a, "b": b}


def _register(evaluation: MoftConfig, model: MoftConfig | None = None) -> tuple[str, dict]:
    """One tracked run: register ``model``'s HyperDPO front as its finetune child does, then decide
    the champion on ``evaluation``'s pareto.json. Returns (parent run id, decision)."""
    from moft.tracking import pipeline_run, stage_run

    model = model or evaluation
    layout = stages.Layout.of(model)
    with pipeline_run(evaluation) as parent:
        with stage_run(evaluation, "finetune:hyperdpo", parent.run_id) as child:
            child.log_model(layout.finetuned("hyperdpo"), layout.base, "hyperdpo", model)
        decision = update_champion(evaluation, parent.run_id)
    return parent.run_id, decision


def _alias(cfg: MoftConfig) -> str:
    return str(champion_version(cfg).version)


def test_first_model_becomes_champion_with_its_provenance_tagged(models, workdir):
    from mlflow import MlflowClient

    from moft.tracking import pipeline_run

    a = models["a"]
    with pipeline_run(a) as parent:  # a run that registered nothing (cached finetune, llm track)
        nothing = update_champion(a, parent.run_id)
    assert nothing["decision"] == "keep" and nothing["champion_version"] is None
    assert "registered no HyperDPO model version" in nothing["reason"]

    run_id, decision = _register(a)
    assert decision["decision"] == "promote" and "no champion yet" in decision["reason"]
    assert decision["champion_version"] == _alias(a) == "1"

    version = MlflowClient().get_model_version(NAME, "1")
    assert float(version.tags[HYPERVOLUME_TAG]) == _hv(a)
    assert version.tags[EVAL_KEY_TAG] == evaluation_key(a, read_json(stages.Layout.of(a).pareto_json))
    files = [stages.resolve_data_path(p) for p in a.data.paths]
    assert version.tags[RAW_DATA_TAG] == ",".join(hashlib.md5(f.read_bytes()).hexdigest() for f in files)
    assert "child_pages" in version.tags[OBJECTIVES_TAG]

    parent = MlflowClient().get_run(run_id)
    assert parent.data.tags["moft.champion.decision"] == "promote"
    assert parent.data.tags["moft.champion.version"] == "1"
    assert parent.data.metrics["champion_candidate_hypervolume"] == pytest.approx(_hv(a))
    assert read_json(a.reports() / "champion.json") == decision


def test_alias_moves_only_on_a_higher_hypervolume(models, workdir):
    from mlflow import MlflowClient

    low, high = sorted(models.values(), key=_hv)
    assert _register(low)[1]["decision"] == "promote"  # v1

    _, up = _register(high)  # v2
    assert up["decision"] == "promote" and _alias(high) == "2"
    assert up["incumbent"] == {
        "version": "1",
        "eval_key": up["eval_key"],
        "hypervolume": pytest.approx(_hv(low)),
        "hypervolume_source": "same evaluation",
    }

    run_id, down = _register(low)  # v3: lower, so the alias stays on v2
    assert down["decision"] == "keep" and "not higher" in down["reason"]
    assert _alias(low) == "2" and down["champion_version"] == "2"
    assert down["candidate"]["version"] == "3"
    parent = MlflowClient().get_run(run_id)
    assert parent.data.tags["moft.champion.decision"] == "keep"
    assert parent.data.metrics["champion_candidate_hypervolume"] == pytest.approx(_hv(low))
    assert parent.data.metrics["champion_incumbent_hypervolume"] == pytest.approx(_hv(high))
    assert read_json(low.reports() / "champion.json")["decision"] == "keep"

    # Without a pipeline run (`moft champion`): the newest version (v3) is re-evaluated through its
    # registered pyfunc model, which must reproduce the evaluate stage's number.
    cli = update_champion(low)
    assert cli["candidate"]["version"] == "3" and cli["decision"] == "keep"
    assert cli["candidate"]["hypervolume"] == pytest.approx(_hv(low), abs=1e-12)


def test_champion_measured_on_other_data_is_reevaluated_on_the_current_data(models, workdir, tmp_path):
    low, high = sorted(models.values(), key=_hv)
    _register(high)  # v1, the champion, measured on split 0

    # New evaluation data (another group split): the low model is evaluated there by the stage...
    moved = _config(tmp_path / "split1", "data.split_seed=1")
    stages.prepare(moved)
    _copy(low, moved, "base", "finetune")
    stages.evaluate(moved)
    # ...and so, independently, is the champion's model, to know what its re-evaluation must give.
    reference = _config(tmp_path / "reference", "data.split_seed=1")
    _copy(moved, reference, "prepared")
    _copy(high, reference, "base", "finetune")
    stages.evaluate(reference)

    _, decision = _register(moved, model=low)  # v2
    incumbent = decision["incumbent"]
    assert incumbent["eval_key"] != decision["eval_key"] and _hv(reference) != _hv(high)
    assert incumbent["hypervolume_source"] == "re-evaluated on the current data"
    assert incumbent["hypervolume"] == pytest.approx(_hv(reference), abs=1e-12)
    promoted = _hv(moved) > _hv(reference)
    assert decision["decision"] == ("promote" if promoted else "keep")
    assert _alias(moved) == ("2" if promoted else "1")


def test_champion_on_other_objectives_is_kept_and_the_reason_recorded(models, workdir, tmp_path):
    a = models["a"]
    _register(a)  # v1
    other = _config(tmp_path / "log1p", "objectives.1.transform=log1p")
    stages.prepare(other)
    _copy(a, other, "base", "finetune")
    stages.evaluate(other)

    _, decision = _register(other, model=a)
    assert decision["decision"] == "keep" and _alias(other) == "1"
    assert "other objectives" in decision["reason"]
    assert "hypervolume" in decision["incumbent"] and decision["incumbent"]["hypervolume"] is None
