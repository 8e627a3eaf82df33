import json
import math

import numpy as np
import pytest
import torch

from moft.config import ModelConfig, load_config
from moft.data.groups import Batch
from moft.losses import listnet_dpo_loss, normalise_labels
from moft.methods import Accounting, temperature_scaled
from moft.methods.hyperdpo import HyperDPO, TrainedHyperDPO
from moft.models.scorer import BaseScorer, FeatureScaler, HyperScorer

D, M = 5, 2
TINY = ModelConfig(hidden=16, layers=2, heads=2, ff_mult=2, dropout=0.0)
HYPER_KINDS = [(p, c) for p in ("scratch", "augmentation") for c in ("film", "concat")]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


def make_base(seed: int = 0) -> BaseScorer:
    torch.manual_seed(seed)
    base = BaseScorer(D, TINY, "log1p_standardize")
    base.scaler.fit(torch.randn(50, D) * 3 + 1)
    return base.eval()


def make_hyper(
    parametrization: str, conditioning: str, seed: int = 1, cfg: ModelConfig = TINY
) -> HyperScorer:
    base = make_base()
    torch.manual_seed(seed)
    return HyperScorer(base, M, cfg, parametrization, conditioning).eval()


def randomise(module: torch.nn.Module, seed: int = 2) -> None:
    """Give every trainable parameter random values (zero-initialised heads and FiLMs included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def padded_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [6, 4, 2]
    x = torch.randn(len(lengths), 6, D, generator=gen)
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    x[~mask] = 7.0  # padded features are garbage; they must not matter
    w = torch.rand(len(lengths), M, generator=gen)
    return x, mask, w / w.sum(-1, keepdim=True)  # one point of the simplex per group


def score(model, x, mask, w):
    with torch.no_grad():
        return model(x, mask) if isinstance(model, BaseScorer) else model(x, mask, w)


MODELS = ["base"] + [f"{p}-{c}" for p, c in HYPER_KINDS]


def build(kind: str):
    if kind == "base":
        model = make_base()
    else:
        model = make_hyper(*kind.split("-"))
    randomise(model)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# shapes, padding, permutations


@pytest.mark.parametrize("kind", MODELS)
def test_scores_are_batch_by_items_and_zero_on_padding(kind):
    x, mask, w = padded_inputs()
    scores = score(build(kind), x, mask, w)
    assert scores.shape == mask.shape
    assert torch.isfinite(scores).all()
    assert torch.equal(scores[~mask], torch.zeros(int((~mask).sum())))
    assert (scores[mask] != 0).all()


@pytest.mark.parametrize("kind", MODELS)
def test_scores_do_not_depend_on_padding(kind):
    model = build(kind)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, D, generator=gen)
    w = torch.tensor([[0.3, 0.7]])
    alone = score(model, x, torch.ones(1, 4, dtype=torch.bool), w)
    padded_x = torch.cat([x, 100 * torch.randn(1, 5, D, generator=gen)], dim=1)
    padded_mask = torch.tensor([[True] * 4 + [False] * 5])
    padded = score(model, padded_x, padded_mask, w)
    assert torch.allclose(padded[:, :4], alone, atol=1e-5)
    # and inside a batch whose other group is longer
    other = torch.randn(1, 9, D, generator=gen)
    batch = score(
        model,
        torch.cat([padded_x, other]),
        torch.cat([padded_mask, torch.ones(1, 9, dtype=torch.bool)]),
        torch.cat([w, torch.tensor([[0.9, 0.1]])]),
    )
    assert torch.allclose(batch[:1, :4], alone, atol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
def test_permuting_items_permutes_scores(kind):
    model = build(kind)
    x, mask, w = padded_inputs()
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    scores = score(model, x, mask, w)
    permuted = score(model, x[:, perm], mask[:, perm], w)
    assert torch.allclose(permuted, scores[:, perm], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# the augmentation parametrisation and the weight conditioning


@pytest.mark.parametrize("conditioning", ["film", "concat"])
def test_augmentation_starts_at_the_base_scores_for_any_w(conditioning):
    with_dropout = TINY.model_copy(update={"dropout": 0.5})
    model = make_hyper("augmentation", conditioning, cfg=with_dropout).train()
    x, mask, _ = padded_inputs()
    base_scores = score(make_base(), x, mask, None)
    for w in ([1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [3.0, -2.0]):
        wb = torch.tensor([w]).expand(x.shape[0], -1)
        assert torch.equal(score(model, x, mask, wb), base_scores)


def one_hot_objectives(mask: torch.Tensor) -> torch.Tensor:
    """Objective 0 prefers item 0 of every group, objective 1 prefers item 1: they conflict."""
    labels = torch.zeros(*mask.shape, M)
    labels[:, 0, 0] = 1.0
    labels[:, 1, 1] = 1.0
    return labels


def dpo_step_loss(model: HyperScorer, x, mask, w, base_scores) -> torch.Tensor:
    labels = one_hot_objectives(mask)
    scores = model(x, mask, w, base_scores)
    per_objective = []
    for j in range(M):
        target, _ = normalise_labels(labels[..., j], mask, "l1")
        per_objective.append(listnet_dpo_loss(scores, base_scores, target, mask, 1.0))
    return (torch.stack(per_objective, -1) * w).sum(-1).mean()


@pytest.mark.parametrize("conditioning", ["film", "concat"])
def test_augmentation_base_is_frozen_and_hypernetwork_gets_gradient(conditioning):
    model = make_hyper("augmentation", conditioning).train()
    base_state = {k: v.clone() for k, v in model.base.state_dict().items()}
    x, mask, w = padded_inputs()
    base_scores = score(model.base, x, mask, None)
    loss = dpo_step_loss(model, x, mask, w, base_scores)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.base.parameters())
    head = model.net.head[1]
    assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0
    assert model.trainable_parameters() == sum(p.numel() for p in model.net.parameters())
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optimiser.step()
    for k, v in model.base.state_dict().items():
        assert torch.equal(v, base_state[k]), k


@pytest.mark.parametrize("conditioning", ["film", "concat"])
def test_training_makes_w_steer_the_scores(conditioning):
    model = make_hyper("augmentation", conditioning).train()
    x, mask, _ = padded_inputs()
    x_train, mask_train = x.repeat(4, 1, 1), mask.repeat(4, 1)  # more w samples per step
    base_scores = score(model.base, x_train, mask_train, None)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sampler = torch.distributions.Dirichlet(torch.ones(M))
    for _ in range(40):
        optimiser.zero_grad()
        w = sampler.sample((x_train.shape[0],))
        dpo_step_loss(model, x_train, mask_train, w, base_scores).backward()
        optimiser.step()
    model.eval()
    margin = []  # how far item 0 is ahead of item 1 when all weight is on objective j
    for j in range(M):
        w = torch.nn.functional.one_hot(torch.full((x.shape[0],), j), M).float()
        s = score(model, x, mask, w)
        margin.append(s[:, 0] - s[:, 1])
    assert (margin[0] - margin[1] > 1.0).all()


@pytest.mark.parametrize("conditioning", ["film", "concat"])
def test_w_changes_the_scores_of_a_random_network(conditioning):
    model = make_hyper("scratch", conditioning)
    x, mask, _ = padded_inputs()
    w1 = torch.tensor([[1.0, 0.0]]).expand(3, -1)
    w2 = torch.tensor([[0.0, 1.0]]).expand(3, -1)
    if conditioning == "film":  # FiLM starts as the identity: w has no effect until trained
        assert torch.equal(score(model, x, mask, w1), score(model, x, mask, w2))
        randomise(model.net.film)
    gap = (score(model, x, mask, w1) - score(model, x, mask, w2))[mask].abs()
    assert gap.min() > 1e-4


# ------------------------------------------------------------------------------------------------
# feature scaling


def test_feature_scaler_standardises_with_training_statistics():
    items = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    scaler = FeatureScaler(2, "standardize").fit(items)
    assert scaler.mean.tolist() == [2.0, 5.0]
    assert scaler.std[0].item() == pytest.approx(1.0)  # unbiased: ((-1)^2 + 0 + 1^2) / 2
    assert torch.allclose(scaler(items), torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(scaler(torch.tensor([[4.0, 6.0]]))[:, 0], torch.tensor([2.0]))


def test_feature_scaler_signed_log1p_before_z_scores():
    e1 = math.e - 1
    items = torch.tensor([[-e1], [0.0], [e1]])  # signed log1p -> -1, 0, 1
    scaler = FeatureScaler(1, "log1p_standardize").fit(items)
    assert scaler.mean.item() == pytest.approx(0.0, abs=1e-7)
    assert scaler.std.item() == pytest.approx(1.0)
    assert torch.allclose(scaler(items).squeeze(-1), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)


def test_feature_scaler_fit_on_random_data():
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(200, 4, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 1000.0]) + 50
    z = FeatureScaler(4, "standardize").fit(items)(items)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(4), atol=1e-4)


@pytest.mark.parametrize("transform", ["standardize", "log1p_standardize"])
def test_hyper_scorer_uses_the_base_scaler(transform):
    base = BaseScorer(D, TINY, transform)
    base.scaler.fit(torch.randn(50, D) * 3 + 1)
    model = HyperScorer(base, M, TINY, "scratch", "film")
    assert base.scaler.std.sub(1).abs().sum() > 0  # fitted, not the initial statistics
    x = padded_inputs()[0]
    assert torch.equal(model.scaler(x), base.scaler(x))


# ------------------------------------------------------------------------------------------------
# temperature control (Proposition 3.1)


def make_batch(x, mask) -> Batch:
    return Batch(x, mask, torch.zeros(mask.shape), torch.zeros(*mask.shape, M))


def temperature_setup():
    base = make_base()
    randomise(base, seed=4)
    base.eval()
    model = make_hyper("scratch", "film")
    randomise(model, seed=5)
    x, mask, _ = padded_inputs()
    w = torch.tensor([[0.2, 0.8]]).expand(3, -1)

    def scores(batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask, w)

    return base, scores, make_batch(x, mask)


def test_temperature_scale_one_is_the_identity():
    base, scores, batch = temperature_setup()
    assert temperature_scaled(base, scores, 1.0) is scores


@torch.no_grad()
def test_temperature_scale_two_is_the_midpoint_and_large_scale_tends_to_base():
    base, scores, batch = temperature_setup()
    s_base, s_beta = base(batch.x, batch.mask), scores(batch)
    assert (s_base - s_beta)[batch.mask].abs().min() > 1e-3  # the two are different to begin with
    assert torch.equal(temperature_scaled(base, scores, 2.0)(batch), 0.5 * s_base + s_beta / 2)
    assert torch.allclose(temperature_scaled(base, scores, 0.5)(batch), 2 * s_beta - s_base, atol=1e-6)
    far = temperature_scaled(base, scores, 1e6)(batch)
    assert torch.allclose(far, s_base, atol=1e-5)
    assert not torch.equal(far, s_base)


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan")])
def test_temperature_scale_must_be_positive(c):
    base, scores, _ = temperature_setup()
    with pytest.raises(ValueError, match="beta_scale must be > 0"):
        temperature_scaled(base, scores, c)


# ------------------------------------------------------------------------------------------------
# checkpoints


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    no_params = tmp_path_factory.mktemp("cfg") / "params.yaml"  # ignore any ./params.yaml
    return load_config("ltr-mslr", params_file=no_params)


def trained(parametrization: str, conditioning: str) -> TrainedHyperDPO:
    model = make_hyper(parametrization, conditioning)
    randomise(model, seed=6)
    return TrainedHyperDPO(
        model.eval(),
        model.base if model.base is not None else make_base(),
        TINY,
        Accounting(train_seconds=1.5, n_jobs=1, trainable_params=model.trainable_parameters()),
        history=[{"epoch": 1.0, "val_hypervolume": 0.25}],
    )


@pytest.mark.parametrize("parametrization, conditioning", HYPER_KINDS)
def test_save_load_round_trip_gives_the_same_scores(tmp_path, cfg, parametrization, conditioning):
    original = trained(parametrization, conditioning)
    original.save(tmp_path / "hyperdpo")
    assert sorted(p.name for p in (tmp_path / "hyperdpo").iterdir()) == ["meta.json", "model.safetensors"]
    loaded = HyperDPO().load(tmp_path / "hyperdpo", cfg, make_base())
    assert not loaded.model.training
    assert loaded.model.parametrization == parametrization
    assert loaded.model.conditioning == conditioning
    assert loaded.model_cfg == TINY
    assert loaded.accounting == original.accounting
    assert loaded.history == original.history
    batch = make_batch(*padded_inputs()[:2])
    with torch.no_grad():
        for w in (np.array([1.0, 0.0]), np.array([0.3, 0.7])):
            for c in (1.0, 2.0):
                assert torch.equal(loaded.policy(w, c)(batch), original.policy(w, c)(batch))


def test_checkpoint_leaves_out_the_base(tmp_path):
    from safetensors.torch import load_file

    trained("augmentation", "film").save(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert keys and not any(k.startswith("base.") for k in keys)


def edit_meta(path, **model_changes):
    meta = json.loads((path / "meta.json").read_text())
    meta["model"].update(model_changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_loading_into_a_deeper_architecture_names_the_file(tmp_path, cfg):
    trained("augmentation", "film").save(tmp_path)
    edit_meta(tmp_path, layers=3)
    with pytest.raises(ValueError, match=r"model\.safetensors.*does not match.*missing"):
        HyperDPO().load(tmp_path, cfg, make_base())


def test_loading_into_a_wider_architecture_names_the_file(tmp_path, cfg):
    # torch raises RuntimeError on shape mismatches even with strict=False; load must translate
    trained("augmentation", "film").save(tmp_path)
    edit_meta(tmp_path, hidden=32)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        HyperDPO().load(tmp_path, cfg, make_base())
