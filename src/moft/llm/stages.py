"""The pipeline stages of the LLM track; :mod:`moft.stages` dispatches here when
``cfg.track == "llm"``, so the CLI, dvc.yaml, the Prefect tasks and the tests call one function
per stage for both tracks.

- prepare: preference records (HH-RLHF / PKU-SafeRLHF / listwise layouts) -> human-label and
  reward-model objectives per (prompt, response) -> prompt-level splits -> parquet.
- validate: the Great Expectations preference suite.
- train_base: the reference policy (optionally SFT with TRL + LoRA, merged) and its sequence
  log-probs of every response, computed once for all DPO stages.
- finetune: one LM method (HyperDPO with HPT + LoRA, DPO-LS, DPO Soup, MO-DPO).
- evaluate: the preference cross-entropy front on held-out pairs (the paper's axes, lower is
  better) and the generation front (mean normalised reward of sampled responses).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from moft.config import MoftConfig
from moft.evaluation import FrontMetrics
from moft.io import atomic_dir, atomic_write_json, read_json
from moft.llm.data import MESSAGES_COL, PreferenceGroups
from moft.losses import listnet_loss
from moft.metrics import pareto
from moft.tracker import NullTracker, Tracker
from moft.training import resolve_device, set_threads

SPLITS = ("train", "val", "test")
REWARDS_DIR = "rewards"  # train_base: reward models trained for objectives with eval_reward: trained
REWARD_TIE = 1e-6  # reward differences below this make a pair a tie (no preference)


def _layout(cfg: MoftConfig):
    from moft.stages import Layout

    return Layout.of(cfg)


def _require(path: Path, stage: str) -> Path:
    from moft.stages import _require as require

    return require(path, stage)


# ------------------------------------------------------------------------------------------------
# prepare


def prepare(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Preference records -> objectives -> prompt-level splits (+ agreement between objectives)."""
    from moft.data.preferences import (
        cap_records,
        dialogue_to_messages,
        read_preferences,
        save_splits,
        split_preferences,
    )
    from moft.stages import file_sha256, resolve_data_path

    source = cfg.data.paths[0]
    if len(cfg.data.paths) > 1:
        raise ValueError("data.paths: the llm track reads one preference source (file or dataset id)")
    try:
        path = resolve_data_path(source)
        hashed = file_sha256(path)
    except FileNotFoundError:
        path, hashed = source, hashlib.sha256(source.encode()).hexdigest()  # a hub dataset id
    labels = [o.label for o in cfg.objectives if o.label is not None]
    data = read_preferences(path, cfg.data.layout, objectives=labels or None)
    frame = data.frame
    if cfg.data.max_records:
        frame = cap_records(frame, cfg.data.max_records)
    out = frame[["prompt_id", "prompt", "response_idx", "response"]].copy()
    if data.layout == "hh-rlhf":
        out[MESSAGES_COL] = [json.dumps(dialogue_to_messages(p)) for p in frame["prompt"]]
    columns = data.objectives
    pairs = bool(len(frame)) and frame.groupby("prompt_id", sort=False).size().eq(2).all()
    rewards: dict[str, np.ndarray] = {}
    for o in cfg.objectives:
        if o.label is not None:
            col = columns.get(o.label)
            if col is None:
                raise ValueError(
                    f"objective {o.name!r}: label {o.label!r} is not in {source} "
                    f"(its labels: {sorted(columns)})"
                )
            out[f"{col.split('_', 1)[0]}_{o.name}"] = frame[col].to_numpy()  # pref_/score_<objective>
        else:
            rewards[o.name] = _score(o.reward, frame)
            out[f"reward_{o.name}"] = rewards[o.name]
            if pairs:
                out[f"pref_{o.name}"] = _pair_preferences(frame, rewards[o.name])
            else:
                out[f"score_{o.name}"] = rewards[o.name]
    splits = split_preferences(out, cfg.data.split_fractions, cfg.data.split_seed)
    normaliser = _eval_reward_stats(cfg, splits["train"])
    agreement = _agreement(out, cfg.objective_names) if pairs else {}
    meta = {
        "source": str(source),
        "layout": data.layout,
        "records_read": data.records_read,
        "skipped": data.skip_counts(),
        "data_hash": hashlib.sha256(hashed.encode()).hexdigest()[:16],
        "reward_normaliser": normaliser,
        "agreement": agreement,
        "objective_sources": {
            o.name: ("human label " + o.label) if o.label else ("reward model " + str(o.reward))
            for o in cfg.objectives
        },
    }
    layout = _layout(cfg)
    save_splits(splits, layout.prepared, meta)
    for a, row in agreement.items():
        for b, v in row.items():
            if a < b and v > 0.8:
                print(f"warning: objectives {a} and {b} agree on {v:.0%} of the pairs: the front may be flat")
    tracker.log_params({f"data.{k}.prompts": int(v["prompt_id"].nunique()) for k, v in splits.items()})
    tracker.set_tags({"data_hash": meta["data_hash"]})
    tracker.log_artifact(layout.prepared / "preferences.json", "prepared")
    return layout.prepared


def _score(reward: str, frame: pd.DataFrame) -> np.ndarray:
    from moft.rewards import get_reward

    return get_reward(reward).score(frame["prompt"].tolist(), frame["response"].tolist())


def _pair_preferences(frame: pd.DataFrame, reward: np.ndarray) -> np.ndarray:
    """+1 when response 0 scores higher, -1 when response 1 does, 0 on (near) ties; on both rows."""
    r = reward.reshape(-1, 2)
    diff = r[:, 0] - r[:, 1]
    pref = np.where(diff > REWARD_TIE, 1, np.where(diff < -REWARD_TIE, -1, 0)).astype(np.int8)
    return np.repeat(pref, 2)


def _agreement(frame: pd.DataFrame, names: list[str]) -> dict[str, dict[str, float]]:
    """Share of pairs (both decided) on which two objectives prefer the same response."""
    first = frame.groupby("prompt_id", sort=False).head(1)
    prefs = {n: first[f"pref_{n}"].to_numpy() for n in names if f"pref_{n}" in first}
    out: dict[str, dict[str, float]] = {}
    for a, pa in prefs.items():
        out[a] = {}
        for b, pb in prefs.items():
            both = (pa != 0) & (pb != 0)
            out[a][b] = float((pa[both] == pb[both]).mean()) if both.any() else float("nan")
    return out


def _eval_rewards(cfg: MoftConfig) -> dict[str, str]:
    """Objective -> reward model that scores its generations (objectives without one are left out)."""
    return {o.name: (o.eval_reward or o.reward) for o in cfg.objectives if (o.eval_reward or o.reward)}


def _eval_reward_stats(cfg: MoftConfig, train: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean/std of every generation-front reward on the training responses (SPEC 4)."""
    from moft.rewards import RewardNormaliser

    evals = {n: r for n, r in _eval_rewards(cfg).items() if r != "trained"}  # trained: by train_base
    if not evals:
        return {}
    own = {o.name: o.reward for o in cfg.objectives}
    scores = np.stack([
        train[f"reward_{n}"].to_numpy() if own.get(n) == r else _score(r, train)  # reuse prepare's scores
        for n, r in evals.items()
    ], axis=1)
    return RewardNormaliser(tuple(evals)).fit(scores).to_dict()


# ------------------------------------------------------------------------------------------------
# validate


def validate(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    from moft.data.preferences import load_split_meta, load_splits
    from moft.validation.preferences import raise_for_failures, validate_preferences, write_report

    layout = _layout(cfg)
    splits = load_splits(_require(layout.prepared, "prepare"))
    meta = load_split_meta(layout.prepared)
    columns = {n: c for n, c in meta["objectives"].items() if n in cfg.objective_names}
    result = validate_preferences(splits, columns)
    with atomic_dir(layout.validation) as out:
        write_report(result, out)
        atomic_write_json(out / "status.json", {"success": result.success, "data_hash": meta["data_hash"]})
    tracker.log_metrics({"validation_success": float(result.success)})
    tracker.log_artifacts(layout.validation, "validation")
    raise_for_failures(result, layout.validation / "validation.json")
    return layout.validation


def _require_valid(cfg: MoftConfig) -> dict:
    from moft.data.preferences import load_split_meta
    from moft.stages import StageInputError

    layout = _layout(cfg)
    meta = load_split_meta(_require(layout.prepared, "prepare"))
    status = read_json(_require(layout.validation / "status.json", "validate"))
    if not status["success"] or status["data_hash"] != meta["data_hash"]:
        raise StageInputError(
            f"the prepared data has not passed validation (see {layout.validation / 'validation.json'})"
        )
    return meta


# ------------------------------------------------------------------------------------------------
# train_base: the reference policy and its log-probs


def load_groups(cfg: MoftConfig, split: str, with_ref: bool = True) -> PreferenceGroups:
    from moft.data.preferences import load_splits

    layout = _layout(cfg)
    frame = load_splits(_require(layout.prepared, "prepare"), [split])[split]
    groups = PreferenceGroups.from_frame(frame, cfg)
    if with_ref:
        path = _require(layout.base / "ref_logps.safetensors", "train_base")
        ref = load_file(str(path))
        if split not in ref or ref[split].shape[0] != len(groups):
            raise ValueError(f"{path} does not match the prepared {split} split; re-run train_base")
        groups.ref_logps = ref[split]
    return groups


def load_policy(cfg: MoftConfig):
    """A fresh copy of the reference policy (model, tokenizer): the SFT model of the base stage
    when there is one, else the configured model."""
    from moft.models.lm import load_causal_lm

    sft = _layout(cfg).base / "model"
    if sft.is_dir():
        return load_causal_lm(sft)
    return load_causal_lm(cfg.llm.model, cache_dir=Path(cfg.llm.model_cache))


def load_front(path: Path, cfg: MoftConfig):
    """A trained LM front from its directory (``artifacts/<profile>/finetune/<method>``), the method
    read from the file it saved: ``online.json`` (online methods), ``meta.json`` (fixed-weight
    methods) or ``hyper_lm.json`` (HyperDPO)."""
    from moft.llm.methods import META_FILE, get_lm_method
    from moft.models.hpt import HPT_META
    from moft.online.front import META_FILE as ONLINE_META

    path = Path(path)
    for name in (ONLINE_META, META_FILE, HPT_META):
        if (path / name).is_file():
            meta = read_json(path / name)
            method = meta.get("method") or meta.get("meta", {}).get("method")
            break
    else:
        raise FileNotFoundError(
            f"{path} holds no trained LM front ({ONLINE_META}, {META_FILE} or {HPT_META}): give "
            "artifacts/<profile>/finetune/<method>"
        )
    if not method:
        raise ValueError(f"{path / name} does not name the method that wrote it")
    return get_lm_method(method).load(path, cfg, lambda: load_policy(cfg))


def train_base(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """Reference policy (optional SFT on preferred responses) and its log-probs of every response."""
    from moft.llm.train import LMPolicy

    _require_valid(cfg)
    set_threads(cfg.runtime.threads)
    layout = _layout(cfg)
    start = time.perf_counter()
    with atomic_dir(layout.base) as out:
        metrics: dict[str, float] = {}
        if cfg.llm.sft.enabled:
            metrics.update(_sft(cfg, load_groups(cfg, "train", with_ref=False), out / "model", tracker))
            from moft.models.lm import load_causal_lm

            model, tokenizer = load_causal_lm(out / "model")
        else:
            model, tokenizer = load_policy(cfg)
        ref = {}
        for split in SPLITS:
            groups = load_groups(cfg, split, with_ref=False)
            ref[split] = LMPolicy(model, tokenizer, cfg.llm, "cpu").logprobs(groups).contiguous()
            metrics[f"{split}_mean_ref_logp"] = float(ref[split][groups.mask].mean())
        save_file(ref, str(out / "ref_logps.safetensors"))
        del model
        stats = _train_reward_models(cfg, out / REWARDS_DIR, metrics)
        metrics["seconds"] = time.perf_counter() - start
        atomic_write_json(
            out / "meta.json",
            {"model": cfg.llm.model, "sft": cfg.llm.sft.enabled, "metrics": metrics, "reward_normaliser": stats},
        )
    tracker.log_metrics(metrics)
    tracker.log_artifact(layout.base / "meta.json", "base")
    return layout.base


def _train_reward_models(cfg: MoftConfig, out: Path, metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """A Bradley-Terry reward model (TRL RewardTrainer) per objective with ``eval_reward: trained``,
    trained on that label's training pairs and saved under ``out/<objective>``; its pairwise
    accuracy on the training and validation pairs goes to ``metrics``. Returns the normaliser
    statistics of its scores on the training responses (SPEC 4)."""
    from moft.rewards import RewardNormaliser
    from moft.rewards.prompts import prompt_text
    from moft.rewards.relevance import minilm_dir
    from moft.rewards.trained import pairs_from_groups, train_reward_model

    names = [o.name for o in cfg.objectives if o.eval_reward == "trained"]
    if not names:
        return {}
    rm = cfg.llm.reward_model
    backbone = minilm_dir() if rm.model == "minilm" else rm.model
    train, val = load_groups(cfg, "train", with_ref=False), load_groups(cfg, "val", with_ref=False)
    prompts, responses, _, _ = train.flat()
    scores = []
    for name in names:
        reward = train_reward_model(
            pairs_from_groups(train, name), backbone, out / name, steps=rm.steps, lr=rm.lr, seed=rm.seed,
            batch_size=rm.batch_size, max_length=rm.max_length, name=f"trained_{name}",
        )
        for split, groups in (("train", train), ("val", val)):
            pairs = pairs_from_groups(groups, name)
            if pairs:
                chosen = reward.score([p.prompt for p in pairs], [p.chosen for p in pairs])
                rejected = reward.score([p.prompt for p in pairs], [p.rejected for p in pairs])
                metrics[f"reward_{name}_{split}_accuracy"] = float(np.mean(chosen > rejected))
        scores.append(reward.score([prompt_text(p) for p in prompts], responses))
    return RewardNormaliser(tuple(names)).fit(np.stack(scores, axis=1)).to_dict()


def reward_model(cfg: MoftConfig, objective: str, reward: str):
    """The reward model called ``reward`` for ``objective``: a built-in one, or (``trained``) the
    one the base stage trained for that objective."""
    if reward != "trained":
        from moft.rewards import get_reward

        return get_reward(reward)
    from moft.rewards.trained import TrainedReward

    return TrainedReward.load(_require(_layout(cfg).base / REWARDS_DIR / objective, "train_base"))


def _sft(cfg: MoftConfig, train: PreferenceGroups, out: Path, tracker: Tracker) -> dict[str, float]:
    """TRL SFTTrainer with LoRA on the preferred responses, merged into the weights."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from moft.models.lm import prompt_token_ids

    model, tokenizer = load_policy(cfg)
    first = int(np.argmax([o.label is not None for o in cfg.objectives]))  # the human label
    rows = []
    for g in range(len(train)):
        k = int(train.mask[g].sum())
        best = int(torch.argmax(train.targets[g, :k, first]))
        prompt_ids = prompt_token_ids(tokenizer, train.prompts[g], cfg.llm.chat_template)[-cfg.llm.max_prompt_tokens:]
        rows.append({"prompt": tokenizer.decode(prompt_ids), "completion": train.responses[g][best]})
    args = SFTConfig(
        output_dir=str(out.parent / "sft-work"),
        max_steps=cfg.llm.sft.steps,
        per_device_train_batch_size=cfg.llm.sft.batch_size,
        learning_rate=cfg.llm.sft.lr,
        max_length=cfg.llm.max_prompt_tokens + cfg.llm.max_response_tokens,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.llm.hyperdpo.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    lora = cfg.llm.lora
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
    )
    result = trainer.train()
    for step, entry in enumerate(trainer.state.log_history):
        if "loss" in entry:
            tracker.log_metrics({"sft_loss": float(entry["loss"])}, step)
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    import shutil

    shutil.rmtree(out.parent / "sft-work", ignore_errors=True)
    return {"sft_train_loss": float(result.training_loss), "sft_steps": float(result.global_step)}


# ------------------------------------------------------------------------------------------------
# finetune


def finetune(cfg: MoftConfig, method: str, tracker: Tracker = NullTracker(), jobs: int = 1) -> Path:
    from moft.llm.methods import LMFitContext, get_lm_method
    from moft.stages import evaluation_grid
    _require_valid(cfg)
    set_threads(cfg.runtime.threads, jobs)
    layout = _layout(cfg)
    runner = get_lm_method(method)
    prerequisites = {
        name: get_lm_method(name).load(_require(layout.finetuned(name), "finetune"), cfg, lambda: load_policy(cfg))
        for name in runner.requires
    }
    ctx = LMFitContext(
        cfg=cfg,
        train=load_groups(cfg, "train"),
        val=_capped(load_groups(cfg, "val"), cfg.llm.val_pairs),
        policy_factory=lambda: load_policy(cfg),
        grid=evaluation_grid(cfg),
        log=tracker.log_metrics,
        prerequisites=prerequisites,
    )
    trained = runner.fit(ctx)
    with atomic_dir(layout.finetuned(method)) as out:
        trained.save(out)
    tracker.log_metrics({k: float(v) for k, v in trained.accounting.to_json().items()})
    tracker.log_artifacts(layout.finetuned(method), "adapter")
    return layout.finetuned(method)


# ------------------------------------------------------------------------------------------------
# evaluate


def preference_ce(logps: torch.Tensor, groups: PreferenceGroups, betas: torch.Tensor) -> np.ndarray:
    """Per-group preference cross-entropy of every objective, ``(G, m)``, NaN without signal:
    the listwise DPO loss ``-sum_i t_i log softmax_i(beta_j (s - s_ref))`` on held-out data (for
    a pair, ``-log sigmoid(beta (Delta s - Delta s_ref))``; the reference policy scores log k)."""
    assert groups.ref_logps is not None
    margin = logps - groups.ref_logps
    ce = torch.stack(
        [listnet_loss(betas[j] * margin, groups.targets[..., j], groups.mask) for j in range(len(betas))], -1
    ).double().numpy()
    ce[~groups.valid.numpy()] = np.nan
    return ce


def log_ratio(logps: torch.Tensor, groups: PreferenceGroups) -> np.ndarray:
    """Mean per-response log-ratio ``log pi(y|x) - log pi_ref(y|x)`` of each group: how far the
    policy moved from the reference (0 for the reference itself)."""
    assert groups.ref_logps is not None
    diff = (logps - groups.ref_logps) * groups.mask
    return (diff.sum(-1) / groups.mask.sum(-1)).double().numpy()


def evaluate(cfg: MoftConfig, tracker: Tracker = NullTracker()) -> Path:
    """CE fronts (pareto.json, direction min) and generation fronts of every method."""
    from moft.llm.methods import get_lm_method
    from moft.plots import plot_pareto
    from moft.stages import (
        _front_rows,
        _method_entry,
        dvc_metrics,
        evaluation_grid,
        method_facts,
        paired_probabilities,
        write_front_tables,
    )

    meta = _require_valid(cfg)
    set_threads(cfg.runtime.threads)
    layout = _layout(cfg)
    test = _capped(load_groups(cfg, "test"), cfg.llm.eval_pairs)
    grid = evaluation_grid(cfg)
    m = len(cfg.objectives)
    ref = np.asarray(cfg.evaluate.reference_point or [1.1] * m, dtype=np.float64)
    betas = torch.tensor([o.beta for o in cfg.objectives])
    indices = pareto.bootstrap_indices(len(test), cfg.evaluate.bootstrap, cfg.evaluate.bootstrap_seed)

    base_ce = preference_ce(test.ref_logps, test, betas)
    base_front = FrontMetrics(grid[:1], base_ce[None], np.zeros((1, len(test))))
    base_samples = pareto.hypervolume_samples(base_front.objectives, indices, ref, "min")
    evals = _eval_rewards(cfg)
    gen_prompts = _generation_prompts(cfg, test)
    normaliser = _normaliser(cfg, meta)
    summary: dict = {
        "profile": cfg.profile,
        "track": cfg.track,
        "objectives": cfg.objective_names,
        "objective_sources": meta.get("objective_sources", {}),
        "metric": "pref-ce",
        "main_metric": "log-ratio",
        "direction": "min",
        "reference_point": ref.tolist(),
        "grid": grid.round(6).tolist(),
        "data_hash": meta["data_hash"],
        "n_test_groups": len(test),
        "groups_without_signal": {n: int((~test.valid[:, j]).sum()) for j, n in enumerate(cfg.objective_names)},
        "base": {
            "main": 0.0,
            "objectives": base_front.points[0].tolist(),
            "hypervolume": float(pareto.hypervolume(base_front.points, ref, "min")),
            "hypervolume_ci95": list(pareto.confidence_interval(base_samples)),
        },
        "methods": {},
        "paired": {},
        "generation": {"rewards": evals, "prompts": len(gen_prompts), "methods": {}},
    }
    samples = {"base": base_samples}
    rows, plot_methods, gen_plot = [], {}, {}
    anchors = AnchorCache()

    def score(item: tuple[str, np.ndarray]):
        """One method's policy at some grid points: CE and log-ratio per test pair, generations;
        its accounting and facts (the model itself is dropped with the worker's copy)."""
        method, points = item
        trained = get_lm_method(method).load(_require(layout.finetuned(method), "finetune"), cfg, lambda: load_policy(cfg))
        per_point_ce, per_point_main, generations = [], [], []
        for w in grid[points]:
            logps = trained.logprobs(test, w)
            groups = _reference_groups(trained, test, w, anchors)
            per_point_ce.append(preference_ce(logps, groups, betas))
            per_point_main.append(log_ratio(logps, groups))
            if gen_prompts and evals:
                generations.append(trained.generate([test.prompts[i] for i in gen_prompts], w))
        return {"ce": per_point_ce, "main": per_point_main, "generations": generations,
                "accounting": trained.accounting.to_json(), "facts": method_facts(trained)}

    # the (method, grid chunk) items are scored concurrently, the cores split between them (one
    # model copy per worker); each method's grid in `jobs` chunks keeps every core busy to the end
    cpu = resolve_device(cfg.runtime.device) == "cpu"
    jobs = min(len(cfg.finetune.methods) * len(grid), os.cpu_count() or 1) if cpu else 1
    chunks = [c for c in np.array_split(np.arange(len(grid)), jobs) if len(c)]
    items = [(method, chunk) for method in cfg.finetune.methods for chunk in chunks]
    set_threads(cfg.runtime.threads, jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        parts = list(pool.map(score, items))
    set_threads(cfg.runtime.threads)
    for i, method in enumerate(cfg.finetune.methods):
        mine = parts[i * len(chunks) : (i + 1) * len(chunks)]  # the method's chunks, in grid order
        ce, main, generations = ([x for part in mine for x in part[key]] for key in ("ce", "main", "generations"))
        front = FrontMetrics(grid, np.stack(ce), np.stack(main))
        entry = _method_entry(front, ref, indices, base_main=0.0, direction="min")
        samples[method] = entry.pop("_samples")
        entry["main_retention"] = None
        entry.update(mine[0]["accounting"])
        entry.update(mine[0]["facts"])
        summary["methods"][method] = entry
        rows += _front_rows(method, "c=1", 1.0, front, cfg.objective_names, prefix="ce", direction="min")
        plot_methods[method] = {"points": front.points, "main": front.main_points, "weights": grid}
        if generations:
            gen = _generation_entry(generations, [test.prompts[i] for i in gen_prompts], evals, normaliser, grid, cfg)
            summary["generation"]["methods"][method] = gen
            gen_plot[method] = {
                "points": np.asarray([p["rewards"] for p in gen["points"]]),
                "main": np.asarray([p["mean_words"] for p in gen["points"]], dtype=float),
                "weights": grid,
            }
    if gen_prompts and evals:
        base_model, tokenizer = load_policy(cfg)
        from moft.models.hpt import generate_with_prefix

        g = cfg.llm.generation
        texts = generate_with_prefix(
            base_model, None, tokenizer, [test.prompts[i] for i in gen_prompts], None, g.max_new_tokens,
            g.do_sample, g.temperature, g.seed, chat_template=cfg.llm.chat_template,
            max_prompt_tokens=cfg.llm.max_prompt_tokens,
        )
        base_gen = _generation_entry([texts], [test.prompts[i] for i in gen_prompts], evals, normaliser, grid[:1], cfg)
        summary["generation"]["base"] = base_gen["points"][0]
        del base_model
    summary["paired"] = paired_probabilities(samples)

    with atomic_dir(layout.reports) as out:
        atomic_write_json(out / "pareto.json", summary)
        write_front_tables(out, rows, cfg.objective_names, "ce", 1.0)
        plot_pareto(
            out / "pareto.png", cfg.objective_names, plot_methods,
            {"objectives": summary["base"]["objectives"], "main": 0.0},
            f"{cfg.profile}: preference cross-entropy on {len(test)} held-out pairs (lower is better)",
            reference_point=ref, direction="min", main_label="mean log-ratio vs reference",
        )
        if gen_plot:
            names = list(evals)
            if len(names) >= 2:
                base_gen_point = summary["generation"].get("base")
                plot_pareto(
                    out / "generation.png", names, gen_plot,
                    None if base_gen_point is None else {"objectives": base_gen_point["rewards"], "main": base_gen_point["mean_words"]},
                    f"{cfg.profile}: mean normalised reward of {len(gen_prompts)} sampled responses per w",
                    direction="max", main_label="mean words per response",
                )
        atomic_write_json(out / "metrics.json", dvc_metrics(summary))
    tracker.log_metrics(dvc_metrics(summary))
    tracker.log_artifacts(layout.reports, "pareto")
    return layout.pareto_json


class AnchorCache:
    """The frozen reference policy's log-probs of conditioned prompts, shared by the fronts of one
    evaluation: MO-ODPO and P-MORL write the same instruction, so at each ``w`` their anchor reads
    the same ``p(w) + x`` and is scored once (keyed by that text; thread-safe)."""

    def __init__(self) -> None:
        self._values: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def get(self, trained, groups: PreferenceGroups, w: np.ndarray) -> torch.Tensor:
        key = json.dumps([trained.inputs(groups.prompts, w), groups.responses])
        with self._lock:
            hit = self._values.get(key)
        if hit is None:
            hit = trained.reference_logprobs(groups, w)
            with self._lock:
                hit = self._values.setdefault(key, hit)
        return hit


def _reference_groups(
    trained, groups: PreferenceGroups, w: np.ndarray, anchors: AnchorCache | None = None
) -> PreferenceGroups:
    """``groups`` with the reference log-probs ``trained``'s implicit reward is measured against:
    the frozen reference policy on ``x`` (``groups.ref_logps``), or for a prompt-conditioned front
    (one with ``reference_logprobs``: MO-ODPO, P-MORL, RiC) its anchor on the conditioned
    ``p(w) + x``, so the prefix's own effect on the frozen model is not counted as the method's
    (through ``anchors`` when given)."""
    reference = getattr(trained, "reference_logprobs", None)
    if reference is None:
        return groups
    return replace(groups, ref_logps=reference(groups, w) if anchors is None else anchors.get(trained, groups, w))


def _capped(groups: PreferenceGroups, n: int | None) -> PreferenceGroups:
    """The first ``n`` groups (a CPU-sized validation or test set), all of them when ``n`` is None."""
    return groups.subset(np.arange(n)) if n and len(groups) > n else groups


def _generation_prompts(cfg: MoftConfig, test: PreferenceGroups) -> list[int]:
    n = min(cfg.llm.generation.prompts, len(test))
    return list(range(n))


def _normaliser(cfg: MoftConfig, meta: dict):
    """Training-response statistics of every generation-front reward: the built-in ones from
    prepare, the trained ones from train_base; ordered as the objectives."""
    from moft.rewards import RewardNormaliser

    stats = dict(meta.get("reward_normaliser") or {})
    base_meta = _layout(cfg).base / "meta.json"
    if base_meta.is_file():
        stats.update(read_json(base_meta).get("reward_normaliser") or {})
    stats = {n: stats[n] for n in _eval_rewards(cfg) if n in stats}
    return RewardNormaliser.from_dict(stats) if stats else None


def _generation_entry(
    generations: list[list[str]], prompts: list, evals: dict[str, str], normaliser, grid: np.ndarray,
    cfg: MoftConfig,
) -> dict:
    from moft.rewards.prompts import prompt_text

    texts = [prompt_text(p) for p in prompts]
    points = []
    for w, responses in zip(grid, generations):
        raw = np.stack([reward_model(cfg, n, r).score(texts, responses) for n, r in evals.items()], axis=1)
        normed = normaliser.transform(raw) if normaliser is not None else raw
        points.append({
            "w": np.asarray(w).round(6).tolist(),
            "rewards": normed.mean(0).tolist(),
            "mean_words": float(np.mean([len(r.split()) for r in responses])),
            "example": responses[0][:300],
        })
    rewards = np.asarray([p["rewards"] for p in points])
    ref = np.full(rewards.shape[1], cfg.evaluate.generation_reference)
    return {
        "points": points,
        "steerability": (
            pareto.steerability(grid[:, [cfg.objective_names.index(n) for n in evals]], rewards, "max")
            if len(points) > 1 else []
        ),
        "hypervolume": float(pareto.hypervolume(rewards, ref, "max")),
        "reference_point": ref.tolist(),
        "spread": pareto.spread(rewards),
    }
