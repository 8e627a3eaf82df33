"""Baselines of SPEC 5.3: soup interpolation, the MO-DPO margin, DPO-LS = HyperDPO loss at w."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moft.config import ModelConfig, load_config
from moft.data.groups import Batch
from moft.losses import listnet_dpo_loss, listnet_loss, normalise_labels
from moft.methods import Accounting
from moft.methods.baselines import GridModels, Soup, grid_index, interpolate
from moft.methods.common import ObjectiveLoss, fixed_weight_policy, load_scorers, save_scorers
from moft.models.scorer import BaseScorer, HyperScorer

TINY_MODEL = ModelConfig(hidden=16, layers=1, heads=2, dropout=0.0)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    cfg = load_config("ltr-mslr", ["finetune.hyperdpo.model.hidden=16", "finetune.hyperdpo.model.heads=2",
                                   "finetune.hyperdpo.model.layers=1", "finetune.hyperdpo.model.dropout=0"])
    base = BaseScorer(6, TINY_MODEL, "standardize").eval()

    def scorer(seed: int) -> HyperScorer:
        torch.manual_seed(seed)
        model = HyperScorer(base, 2, cfg.finetune.hyperdpo.model, "augmentation", "film")
        for p in model.net.parameters():  # leave the zero-initialised head: randomise everything
            torch.nn.init.normal_(p, std=0.3)
        return model.eval()

    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    batch = Batch(
        x=torch.randn(2, 4, 6),
        mask=mask,
        main=torch.tensor([[2.0, 0, 1, 0], [0, 1, 3, 0]]),
        objectives=torch.tensor([[[3.0, 1], [0, 0], [1, 2], [0, 0]], [[1.0, 0], [4, 1], [0, 3], [2, 0]]]),
    )
    return cfg, base, scorer, batch


def scores_of(model: HyperScorer, batch: Batch, w) -> torch.Tensor:
    with torch.no_grad():
        return fixed_weight_policy(model, np.asarray(w))(batch)


def test_soup_of_identical_models_is_the_model(setup):
    cfg, base, scorer, batch = setup
    a = scorer(1)
    singles = GridModels("single_objective", np.eye(2), [a, scorer(1)], base, Accounting(1.0, 2, 10), _arch(cfg))
    soup = Soup(singles)
    for w in ([0.3, 0.7], [0.5, 0.5]):
        torch.testing.assert_close(scores_of(soup.model_at(np.array(w)), batch, w), scores_of(a, batch, w))


def test_soup_at_a_unit_weight_is_that_single_model(setup):
    cfg, base, scorer, batch = setup
    a, b = scorer(1), scorer(2)
    soup = Soup(GridModels("single_objective", np.eye(2), [a, b], base, Accounting(1.0, 2, 10), _arch(cfg)))
    torch.testing.assert_close(scores_of(soup.model_at(np.array([0.0, 1.0])), batch, [0, 1]), scores_of(b, batch, [0, 1]))
    mixed = interpolate([a, b], np.array([0.25, 0.75]))
    key = "net.proj.weight"
    torch.testing.assert_close(mixed[key], 0.25 * a.state_dict()[key] + 0.75 * b.state_dict()[key])


def test_mo_dpo_margin_matches_hand_computation(setup):
    cfg, base, scorer, batch = setup
    loss = ObjectiveLoss(cfg, base, "cpu")
    model, single0, single1 = scorer(3), scorer(4), scorer(5)
    w = np.array([0.3, 0.7])  # i = argmax w = 1: objective 1, margin from objective 0's model
    wt = torch.tensor(w, dtype=torch.float32).expand(2, -1)
    with torch.no_grad():
        s_base = base(batch.x, batch.mask)
        s = model(batch.x, batch.mask, wt)
        s0 = single0(batch.x, batch.mask, wt)
        r = (s - s_base - 0.3 * (s0 - s_base)) / 0.7
        target, valid = normalise_labels(batch.objectives[..., 1], batch.mask, "l1")
        expected = listnet_loss(1.0 * r, target, batch.mask)[valid].mean()
        got = loss.margin(model, batch, w, [single0, single1])
    torch.testing.assert_close(got, expected)


def test_dpo_ls_loss_is_the_hyperdpo_loss_at_that_w(setup):
    cfg, base, scorer, batch = setup
    loss = ObjectiveLoss(cfg, base, "cpu")
    model = scorer(6)
    w = np.array([0.4, 0.6])
    wt = torch.tensor(w, dtype=torch.float32).expand(2, -1)
    with torch.no_grad():
        s_base = base(batch.x, batch.mask)
        s = model(batch.x, batch.mask, wt)
        total = 0.0
        for j, norm in enumerate(["softmax", "l1"]):  # ltr-mslr: quality2 softmax, url_clicks l1
            target, valid = normalise_labels(batch.objectives[..., j], batch.mask, norm)
            total += w[j] * listnet_dpo_loss(s, s_base, target, batch.mask, 1.0)[valid].mean()
        got = loss.weighted(model, batch, wt)
    torch.testing.assert_close(got, torch.as_tensor(total, dtype=got.dtype))


def test_grid_models_round_trip_and_reject_unknown_weights(setup, tmp_path):
    cfg, base, scorer, batch = setup
    models = [scorer(7), scorer(8)]
    save_scorers(tmp_path / "m.safetensors", models)
    build = lambda: HyperScorer(base, 2, cfg.finetune.hyperdpo.model, "augmentation", "film")  # noqa: E731
    loaded = load_scorers(tmp_path / "m.safetensors", 2, build)
    for a, b in zip(models, loaded):
        torch.testing.assert_close(scores_of(a, batch, [1, 0]), scores_of(b, batch, [1, 0]))
    grid = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert grid_index(grid, np.array([1.0, 0.0]), "dpo_ls") == 1
    with pytest.raises(ValueError, match="dpo_ls has one model per trained weight vector"):
        grid_index(grid, np.array([0.5, 0.5]), "dpo_ls")


def _arch(cfg):
    from moft.methods.common import architecture

    return architecture(cfg)




def test_weight_sampling_is_seeded_and_per_step_shares_one_vector():
    from moft.methods.hyperdpo import sample_weights

    a = sample_weights(np.random.default_rng(3), 0.5, 3, 4, per_group=True)
    b = sample_weights(np.random.default_rng(3), 0.5, 3, 4, per_group=True)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 3) and np.allclose(a.sum(1), 1) and len({tuple(r) for r in a}) == 4
    step = sample_weights(np.random.default_rng(3), [0.5, 1.0, 2.0], 3, 4, per_group=False)
    assert np.all(step == step[0]) and np.isclose(step[0].sum(), 1)
