"""Post-training control: temperature scaling (Prop. 3.1), the temperature hypernetwork, `moft
score`, and the pyfunc model behind a real `mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT_ROOT, TINY
from scipy.stats import spearmanr
from typer.testing import CliRunner

from moft.config import ModelConfig, load_config
from moft.data.groups import Batch
from moft.methods import temperature_scaled
from moft.methods.hyperdpo import HyperDPOTemp, TrainedHyperDPO, default_eval_betas
from moft.methods import Accounting
from moft.models.scorer import BaseScorer, HyperScorer

TEST_FILE = PROJECT_ROOT / "data/samples/mslr-web10k-sample/fold1-test-5k.txt.gz"


def _batch(b: int = 3, n: int = 7, d: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 5:] = False
    return Batch(x=x, mask=mask, main=torch.zeros(b, n), objectives=torch.zeros(b, n, 2))


def _models(temperature: bool = False) -> tuple[BaseScorer, HyperScorer]:
    torch.manual_seed(0)
    base = BaseScorer(5, ModelConfig(hidden=16, layers=1, heads=2), "standardize").eval()
    hyper = HyperScorer(base, 2, ModelConfig(hidden=16, layers=1, heads=2), "augmentation", "film", temperature)
    for p in hyper.net.parameters():  # move off the zero-initialised head so Delta != 0
        p.data.add_(0.1 * torch.randn_like(p))
    return base, hyper.eval()


# ------------------------------------------------------------------------------------------------
# Proposition 3.1


def test_temperature_scale_one_is_the_identity_and_large_c_is_the_base_ranking():
    base, hyper = _models()
    batch = _batch()
    w = torch.tensor([[0.3, 0.7]]).expand(3, -1)
    scores = lambda b: hyper(b.x, b.mask, w)  # noqa: E731
    with torch.no_grad():
        assert temperature_scaled(base, scores, 1.0) is scores
        s = scores(batch)
        base_s = base(batch.x, batch.mask)
        for c in (0.5, 2.0, 4.0):
            expected = (1 - 1 / c) * base_s + s / c
            torch.testing.assert_close(temperature_scaled(base, scores, c)(batch), expected)
        far = temperature_scaled(base, scores, 1e6)(batch)
    for row in range(3):
        n = int(batch.mask[row].sum())
        assert torch.equal(torch.argsort(far[row, :n], descending=True), torch.argsort(base_s[row, :n], descending=True))
        assert spearmanr(far[row, :n], base_s[row, :n]).statistic == pytest.approx(1.0)
    with pytest.raises(ValueError, match="beta_scale must be > 0"):
        temperature_scaled(base, scores, 0.0)


def test_temperature_hypernetwork_obeys_eq_19_and_scales_exactly():
    base, hyper = _models(temperature=True)
    batch = _batch()
    betas = np.array([1.0, 2.0])
    trained = TrainedHyperDPO(hyper, base, ModelConfig(), Accounting(0, 1, 0), name="hyperdpo_temp",
                              betas=betas, eval_betas=default_eval_betas(2, 0.67, 1.5))
    w = np.array([0.4, 0.6])
    with torch.no_grad():
        base_s = base(batch.x, batch.mask)
        cond = torch.tensor([[0.4, 0.6, 1 / 3, 2 / 3]]).expand(3, -1)
        net = hyper(batch.x, batch.mask, cond, base_s)
        expected = (1 - 1 / 3) * base_s + net / 3  # |beta|_1 = 3
        torch.testing.assert_close(trained.policy(w)(batch), expected)
        # scaling every beta by c is Proposition 3.1 applied to the model at beta
        torch.testing.assert_close(trained.policy(w, 2.0)(batch), trained.at_temperature(w, 2 * betas)(batch))
        # the normalised temperature is an input: a disproportionate beta changes the scores
        assert not torch.allclose(trained.at_temperature(w, np.array([2.0, 1.0]))(batch), expected)
    assert list(trained.temperature_fronts()) == ["1,1", "1.5,0.67", "0.67,1.5"]
    with pytest.raises(ValueError, match="temperatures must be 2 values > 0"):
        trained.at_temperature(w, np.array([1.0, -1.0]))


def test_temperature_hypernetwork_trains_on_sampled_temperatures(tmp_path):
    """A short fit of `hyperdpo_temp` on real data: the loss falls, gradients reach the
    temperature inputs, and save/load reproduces the scores."""
    from moft import stages
    from moft.methods import FitContext
    from moft.tracker import NullTracker

    cfg = load_config("ltr-mslr", [*TINY, f"artifacts_dir={tmp_path}/a", f"reports_dir={tmp_path}/r",
                                   "finetune.hyperdpo_temp.model.hidden=32", "finetune.hyperdpo_temp.optim.epochs=3"])
    for name in ("prepare", "validate", "train_base"):
        getattr(stages, name)(cfg, NullTracker())
    prepared = stages.Prepared.load(cfg)
    base = stages.load_base(stages.Layout.of(cfg).base)
    history: list[dict] = []
    ctx = FitContext(cfg, prepared.groups("train"), prepared.groups("val"), base, stages.evaluation_grid(cfg),
                     log=lambda metrics, step=None: history.append(metrics))
    trained = HyperDPOTemp().fit(ctx)
    assert trained.model.temperature and trained.name == "hyperdpo_temp"
    first_film = trained.model.net.film[0].net[0].weight  # (hidden, 2m): columns m.. read beta_bar
    assert first_film.shape[1] == 4
    losses = [h["train_loss"] for h in history]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    trained.save(tmp_path / "temp")
    loaded = HyperDPOTemp().load(tmp_path / "temp", cfg, base)
    batch = prepared.groups("test").batch([0, 1])
    with torch.no_grad():
        for label, policy_at in trained.temperature_fronts().items():
            torch.testing.assert_close(loaded.temperature_fronts()[label](np.array([0.2, 0.8]))(batch),
                                       policy_at(np.array([0.2, 0.8]))(batch))


# ------------------------------------------------------------------------------------------------
# A tracked model: `moft score` and `mlflow models serve`


@pytest.fixture(scope="module")
def registered_model(tmp_path_factory):
    """Prepare, base and HyperDPO stages (TINY budget) with MLflow tracking in a scratch store;
    the HyperDPO front is registered as `moft-hyperdpo` and aliased `champion`."""
    from mlflow import MlflowClient

    from moft import stages
    from moft.tracking import stage_run

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        cfg = load_config("ltr-mslr", [*TINY, "finetune.methods=[hyperdpo]"])
        for name in ("prepare", "validate", "train_base"):
            with stage_run(cfg, name) as tracker:
                getattr(stages, name)(cfg, tracker=tracker)
        with stage_run(cfg, "finetune:hyperdpo") as tracker:
            stages.finetune(cfg, tracker=tracker, method="hyperdpo")
        client = MlflowClient(uri)
        version = max(int(v.version) for v in client.search_model_versions("name='moft-hyperdpo'"))
        client.set_registered_model_alias("moft-hyperdpo", "champion", version)
        yield {"root": root, "uri": uri, "model": "models:/moft-hyperdpo@champion"}
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def test_moft_score_ranks_a_file_at_any_trade_off(registered_model, tmp_path, monkeypatch):
    from moft.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model["uri"])
    runner = CliRunner()
    outputs = {}
    for name, args in {"a": ["--weights", "1,0"], "b": ["--weights", "0,1"], "c": ["--weights", "0,1", "--beta-scale", "2"]}.items():
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["score", "--model", registered_model["model"], "--input", str(TEST_FILE), *args, "-o", str(out)])
        assert result.exit_code == 0, result.output
        outputs[name] = (pd.read_csv(out), pd.read_csv(tmp_path / f"{name}.rankings.csv"))
    items, rankings = outputs["a"]
    assert len(items) == 5000 and items["group_id"].nunique() == 43 == len(rankings)
    for _, group in items.groupby("group_id"):  # ranks are a permutation, best score first
        assert sorted(group["rank"]) == list(range(1, len(group) + 1))
        assert group.sort_values("rank")["score"].is_monotonic_decreasing
    first = rankings.iloc[0]
    order = items[items["group_id"] == first["group_id"]].sort_values("rank")["item"].tolist()
    assert " ".join(map(str, order)) == first["ranking"]
    # the trade-off and the temperature change the rankings
    assert not outputs["a"][1]["ranking"].equals(outputs["b"][1]["ranking"])
    assert not np.allclose(outputs["b"][0]["score"], outputs["c"][0]["score"])

    bad = runner.invoke(app, ["score", "--model", registered_model["model"], "--input", str(TEST_FILE), "--weights", "0.5,0.6"])
    assert bad.exit_code == 2 and "simplex" in bad.output
    wrong = runner.invoke(app, ["score", "--model", registered_model["model"],
                                "--input", str(PROJECT_ROOT / "data/samples/letor-mq2008/vali.txt.gz")])
    assert wrong.exit_code == 2 and "has 46 features but the model reads" in wrong.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.e2e
def test_mlflow_models_serve_answers_with_rankings_that_follow_the_weights(registered_model):
    from moft.data.letor import read_letor

    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered_model["uri"],
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", registered_model["model"],
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(registered_model["root"] / "serve.log", "w")
    server = subprocess.Popen(cmd, env=env, cwd=registered_model["root"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (registered_model["root"] / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up in 120 s"
            time.sleep(1)

        frame = read_letor(TEST_FILE)
        frame = frame[frame["group_id"].isin(frame["group_id"].unique()[:3])].drop(columns=["label", "f133", "f135"])
        split = json.loads(frame.to_json(orient="split", index=False))
        url = f"http://127.0.0.1:{port}/invocations"

        def ranks(params: dict) -> list[int]:
            status, body = _post(url, {"dataframe_split": split, "params": params})
            assert status == 200, body
            rows = pd.DataFrame(body["predictions"])
            assert len(rows) == len(frame)
            return rows["rank"].tolist()

        a, b = ranks({"weights": [1.0, 0.0]}), ranks({"weights": [0.0, 1.0]})
        assert a != b
        assert ranks({"weights": [1.0, 0.0], "beta_scale": 1.0}) == a  # deterministic
        assert ranks({"weights": [0.0, 1.0], "beta_scale": 50.0}) != b  # the temperature acts

        for params, words in [
            ({"weights": [0.5, 0.6]}, "simplex"),
            ({"weights": [1.0, 0.0], "beta_scale": -1.0}, "beta_scale must be > 0"),
        ]:
            status, body = _post(url, {"dataframe_split": split, "params": params})
            assert 400 <= status < 500 and words in body.get("message", ""), (status, body)
            assert "Traceback" not in json.dumps(body)
        short = json.loads(frame.drop(columns=["f7"]).to_json(orient="split", index=False))
        status, body = _post(url, {"dataframe_split": short, "params": {"weights": [0.5, 0.5]}})
        assert 400 <= status < 500 and "f7" in body.get("message", ""), (status, body)
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            try:
                server.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
