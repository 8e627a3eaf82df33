"""The LLM track end to end on real HH-RLHF records with a tiny random-init Llama: the stages
(prepare -> validate -> train_base -> every method -> evaluate -> report) through the Prefect
flow with MLflow tracking, and the data/objective plumbing on its own."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT

from moft.config import load_config
from moft.io import read_json

sys.path.insert(0, str(PROJECT_ROOT))

HH = PROJECT_ROOT / "data/samples/hh-rlhf/harmless-base-test.part-a.jsonl.gz"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from moft.models.lm import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(seed=0, hidden=32, layers=2, heads=4, init_std=0.3)
    out = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_llm(model_dir: Path, *extra: str) -> list[str]:
    """A seconds-sized llm-hh: tiny model, cheap rewards, few records and steps."""
    return [
        f"llm.model={model_dir}",
        "data.max_records=30",
        "objectives.1.reward=conciseness",
        "llm.max_prompt_tokens=24",
        "llm.max_response_tokens=12",
        "llm.eval_pairs=6",
        "llm.hpt.hidden=16",
        "llm.hyperdpo.max_steps=3",
        "llm.baselines.max_steps=2",
        "llm.generation.prompts=2",
        "llm.generation.max_new_tokens=4",
        "evaluate.bootstrap=20",
        *extra,
    ]


def test_prepare_builds_label_and_reward_objectives(workdir, tiny_lm):
    from moft import stages
    from moft.data.preferences import load_split_meta, load_splits
    from moft.llm.stages import load_groups

    cfg = load_config("llm-hh", tiny_llm(tiny_lm))
    stages.prepare(cfg)
    prepared = cfg.artifacts() / "prepared"
    meta = load_split_meta(prepared)
    splits = load_splits(prepared)
    assert sum(len(s) for s in splits.values()) == 2 * 30  # 30 pairs, 2 responses each
    assert meta["objectives"] == {"harmless": "pref_harmless", "relevance": "pref_relevance"}
    assert meta["objective_sources"] == {"harmless": "human label harmless", "relevance": "reward model conciseness"}
    train = splits["train"]
    # HH: the chosen (response 0) is the more harmless one; conciseness prefers the shorter one
    assert (train["pref_harmless"] == 1).all()
    first = train.groupby("prompt_id", sort=False)
    for _, pair in list(first)[:5]:
        words = pair["response"].str.split().str.len().to_numpy()
        expected = 0 if words[0] == words[1] else (1 if words[0] < words[1] else -1)
        assert (pair["pref_relevance"] == expected).all()
    assert json.loads(train["messages"].iloc[0])[0]["role"] == "user"
    assert set(meta["reward_normaliser"]) == {"harmless", "relevance"}  # toxicity proxy + conciseness
    stages.validate(cfg)
    groups = load_groups(cfg, "train", with_ref=False)
    assert groups.targets.shape == (len(groups), 2, 2)
    torch.testing.assert_close(groups.targets[:, :, 0], torch.tensor([[1.0, 0.0]]).expand(len(groups), -1))
    ties = (train.groupby("prompt_id", sort=False)["pref_relevance"].first() == 0).to_numpy()
    assert np.array_equal(~groups.valid[:, 1].numpy(), ties)


def test_bad_label_and_layout_fail_early(workdir, tiny_lm):
    from moft import stages
    from moft.config import ConfigError

    # HH-RLHF carries one human label: a second one cannot come from it
    cfg = load_config("llm-hh", tiny_llm(tiny_lm, "objectives.1={name: helpful, label: helpful}"))
    with pytest.raises(ValueError, match="one") as info:
        stages.prepare(cfg)
    assert not (cfg.artifacts() / "prepared").exists()
    print(info.value)
    with pytest.raises(ConfigError, match="data.layout"):
        load_config("llm-hh", ["data.layout=letor"])


@pytest.mark.e2e
def test_llm_flow_end_to_end(prefect_harness, workdir, tiny_lm):
    """Every LM method through the Prefect flow, tracked in MLflow; pareto.json per SPEC 6 with
    direction min, CE fronts and generation fronts; then a file the profile never saw."""
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    result = pipeline(profile="llm-hh", overrides=tiny_llm(tiny_lm), tracking=True)
    summary = read_json(Path(result["pareto_json"]))
    assert summary["track"] == "llm" and summary["direction"] == "min" and summary["metric"] == "pref-ce"
    assert summary["reference_point"] == [1.1, 1.1] and len(summary["grid"]) == 5
    assert list(summary["methods"]) == ["hyperdpo", "dpo_ls", "dpo_soup", "mo_dpo", "mopo"]
    assert summary["base"]["objectives"][0] == pytest.approx(np.log(2), abs=1e-6)  # the reference: log 2
    jobs = {name: e["n_jobs"] for name, e in summary["methods"].items()}
    assert jobs["hyperdpo"] == 1 and jobs["dpo_ls"] == 5 and jobs["mopo"] == 5
    assert len(summary["methods"]["mopo"]["mopo"]) == 5  # thresholds, multipliers per grid point
    for entry in summary["methods"].values():
        assert len(entry["points"]) == 5 and 0 <= entry["hypervolume"]
        assert entry["trainable_params"] > 0 and entry["train_seconds"] > 0
    gen = summary["generation"]
    assert set(gen["methods"]) == set(summary["methods"]) and gen["base"]["rewards"]
    assert len(gen["methods"]["hyperdpo"]["points"]) == 5
    report = Path(result["summary_md"]).read_text()
    assert "Generation front" in report and "PREF-CE" in report
    out = Path(result["pareto_json"]).parent
    assert (out / "pareto.png").stat().st_size > 0 and (out / "generation.png").stat().st_size > 0

    client = MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = {r.data.tags["mlflow.runName"] for r in children}
    assert {"prepare", "validate", "train_base", "evaluate", "report"} <= names
    assert any(n.startswith("finetune") and "hyperdpo" in n for n in names)

    # a file in the same layout that the profile never read: records 600-659 of the HH sample
    rows = gzip.open(HH, "rt").read().splitlines()[600:660]
    other = workdir / "other-hh.jsonl.gz"
    with gzip.open(other, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    from moft import stages

    cfg = load_config("llm-hh", tiny_llm(tiny_lm, f"data.path={other}", "finetune.methods=[hyperdpo]",
                                         "artifacts_dir=other-artifacts", "reports_dir=other-reports"))
    for name in ("prepare", "validate", "train_base"):
        getattr(stages, name)(cfg)
    stages.finetune(cfg, "hyperdpo")
    fresh = read_json(stages.evaluate(cfg))
    assert fresh["data_hash"] != summary["data_hash"] and fresh["methods"]["hyperdpo"]["points"]


def test_online_methods_run_as_stages_and_moft_generate_steers(workdir, tiny_lm, monkeypatch):
    """MO-ODPO, the ODPO soup, P-MORL and RiC through the finetune and evaluate stages (tiny model,
    two steps each), next to an offline method; then `moft generate` on the trained MO-ODPO and
    RiC fronts."""
    from typer.testing import CliRunner

    from moft import stages
    from moft.cli import app

    online = [
        "finetune.methods=[hyperdpo,mo_odpo,odpo_soup,pmorl,ric]",
        "objectives.0.eval_reward=trained",  # harmlessness scored by a reward model trained on its label
        "llm.reward_model.steps=4",
        "llm.reward_model.max_length=64",
        "llm.max_prompt_tokens=64",
        "llm.prefix.template='w={weights};'",
        "llm.prefix.item='{name}{weight}'",
        "llm.online.steps=2",
        "llm.online.prompts_per_step=2",
        "llm.online.max_new_tokens=4",
        "llm.online.lr=0.01",
        "llm.ric.sft_steps=2",
        "llm.ric.online_prompts=2",
        "llm.ric.online_steps=1",
    ]
    cfg = load_config("llm-hh", tiny_llm(tiny_lm, *online))
    for name in ("prepare", "validate", "train_base"):
        getattr(stages, name)(cfg)
    base = read_json(cfg.artifacts() / "base" / "meta.json")
    assert set(base["reward_normaliser"]) == {"harmless"}  # MiniLM + a new head, TRL RewardTrainer
    assert 0 <= base["metrics"]["reward_harmless_train_accuracy"] <= 1
    assert (cfg.artifacts() / "base" / "rewards" / "harmless").is_dir()
    for wave in stages.finetune_waves(cfg):
        for method in wave:
            stages.finetune(cfg, method)
    summary = read_json(stages.evaluate(cfg))
    assert list(summary["methods"]) == ["hyperdpo", "mo_odpo", "odpo_soup", "pmorl", "ric"]
    jobs = {name: e["n_jobs"] for name, e in summary["methods"].items()}
    assert jobs == {"hyperdpo": 1, "mo_odpo": 1, "odpo_soup": 2, "pmorl": 1, "ric": 1}
    for name in ("mo_odpo", "odpo_soup", "pmorl", "ric"):
        assert len(summary["methods"][name]["points"]) == 5
        points = summary["generation"]["methods"][name]["points"]
        assert len(points) == 5 and all(len(p["rewards"]) == 2 for p in points)
        gen = summary["generation"]["methods"][name]
        assert gen["hypervolume"] >= 0 and gen["spread"] >= 0 and gen["reference_point"] == [-1.0, -1.0]
    assert summary["generation"]["rewards"] == {"harmless": "trained", "relevance": "conciseness"}

    # the grid split over three workers (chunks of every method's grid) scores what one worker does
    import os

    cores = os.cpu_count
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    single = read_json(stages.evaluate(cfg))
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    split = read_json(stages.evaluate(cfg))
    monkeypatch.setattr(os, "cpu_count", cores)
    for name in summary["methods"]:
        assert split["methods"][name]["points"] == single["methods"][name]["points"]
        assert split["generation"]["methods"][name]["points"] == single["generation"]["methods"][name]["points"]
        assert split["methods"][name]["train_seconds"] == summary["methods"][name]["train_seconds"]

    model = cfg.artifacts() / "finetune" / "mo_odpo"
    runner = CliRunner()
    args = ["generate", "--model", str(model), "--prompt", "How do I bake bread?", "--prompt", "Hi"]
    overrides = [x for o in tiny_llm(tiny_lm, *online) for x in ("--set", o)]
    first = runner.invoke(app, [*args, "--weights", "1,0", *overrides])
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in first.output.splitlines()]
    assert [r["prompt"] for r in rows] == ["How do I bake bread?", "Hi"] and all("response" in r for r in rows)
    again = runner.invoke(app, [*args, "--weights", "1,0", *overrides])
    assert again.output == first.output  # greedy and seeded: reproducible
    bad = runner.invoke(app, [*args, "--weights", "0.5,0.6", *overrides])
    assert bad.exit_code == 2 and "sum" in bad.output
    ric = [*args[:2], str(cfg.artifacts() / "finetune" / "ric"), *args[3:], "--weights", "0,1", *overrides]
    steered = runner.invoke(app, ric)
    assert steered.exit_code == 0, steered.output
    assert [json.loads(line)["prompt"] for line in steered.output.splitlines()] == ["How do I bake bread?", "Hi"]
