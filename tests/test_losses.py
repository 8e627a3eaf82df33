import math

import pytest
import torch

from moft.losses import (
    cosine_penalty,
    dpo_loss,
    listnet_dpo_loss,
    listnet_loss,
    multi_objective_losses,
    normalise_labels,
    scalarised_loss,
)

# One group of three real items plus one padded item whose score and label are large on purpose:
# if padding leaked into the softmax or the target, every value below would change.
SCORES = torch.tensor([[1.0, 2.0, 0.5, 50.0]])
BASE = torch.tensor([[0.5, 1.0, 1.5, -30.0]])
LABELS = torch.tensor([[1.0, 3.0, 0.0, 9.0]])
MASK = torch.tensor([[True, True, True, False]])


def hand_listnet(scores: list[float], target: list[float]) -> float:
    log_z = math.log(sum(math.exp(s) for s in scores))
    return -sum(t * (s - log_z) for s, t in zip(scores, target))


def test_listnet_loss_matches_hand_arithmetic_and_ignores_padding():
    target, valid = normalise_labels(LABELS, MASK, "l1")
    assert valid.tolist() == [True]
    # t = l1(1, 3, 0) = (0.25, 0.75, 0); loss = -(0.25 log p_1 + 0.75 log p_2)
    log_z = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    expected = -(0.25 * (1.0 - log_z) + 0.75 * (2.0 - log_z))
    got = listnet_loss(SCORES, target, MASK)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unpadded = listnet_loss(SCORES[:, :3], target[:, :3], MASK[:, :3])
    assert unpadded.item() == pytest.approx(expected, rel=1e-6)


def test_listnet_dpo_loss_is_listnet_on_scaled_score_difference():
    beta = 0.7
    target, _ = normalise_labels(LABELS, MASK, "l1")
    diffs = [beta * (s - b) for s, b in zip([1.0, 2.0, 0.5], [0.5, 1.0, 1.5])]  # 0.35, 0.7, -0.7
    expected = hand_listnet(diffs, [0.25, 0.75, 0.0])
    got = listnet_dpo_loss(SCORES, BASE, target, MASK, beta)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unpadded = listnet_dpo_loss(SCORES[:, :3], BASE[:, :3], target[:, :3], MASK[:, :3], beta)
    assert unpadded.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_listnet_dpo_with_one_hot_pair_equals_dpo(seed):
    gen = torch.Generator().manual_seed(seed)
    beta = float(torch.empty(1).uniform_(0.05, 5.0, generator=gen))
    scores = torch.randn(16, 2, generator=gen, dtype=torch.float64) * 3
    base = torch.randn(16, 2, generator=gen, dtype=torch.float64) * 3
    mask = torch.ones(16, 2, dtype=torch.bool)
    target, valid = normalise_labels(torch.tensor([[1.0, 0.0]] * 16, dtype=torch.float64), mask, "l1")
    assert valid.all()
    listwise = listnet_dpo_loss(scores, base, target, mask, beta)
    pairwise = dpo_loss(scores[:, 0], scores[:, 1], base[:, 0], base[:, 1], beta)
    assert torch.allclose(listwise, pairwise, rtol=1e-10, atol=1e-12)


def test_l1_normalisation_divides_by_sum_and_drops_zero_sum_groups():
    labels = torch.tensor([[1.0, 3.0, 0.0, 5.0], [0.0, 0.0, 0.0, 4.0], [2.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False], [True] * 4])
    target, valid = normalise_labels(labels, mask, "l1")
    assert valid.tolist() == [True, False, True]  # group 1 has labels only on a padded item
    assert torch.allclose(target[0], torch.tensor([0.25, 0.75, 0.0, 0.0]))
    assert torch.equal(target[1], torch.zeros(4))
    assert torch.allclose(target[2], torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_softmax_normalisation_excludes_padding():
    labels = torch.tensor([[1.0, 2.0, 0.0, 9.0]])
    target, valid = normalise_labels(labels, MASK, "softmax")
    z = math.exp(1.0) + math.exp(2.0) + math.exp(0.0)
    expected = torch.tensor([[math.exp(1.0) / z, math.exp(2.0) / z, 1.0 / z, 0.0]])
    assert valid.tolist() == [True]
    assert torch.allclose(target, expected, atol=1e-7)
    assert target.sum().item() == pytest.approx(1.0)


def test_unknown_label_normalisation_is_named():
    with pytest.raises(ValueError, match="'l2'.*allowed: l1, softmax"):
        normalise_labels(LABELS, MASK, "l2")


def test_cosine_penalty_hand_values():
    weights = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 0.8]])
    losses = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0], [3.0, 4.0]])
    # parallel -> -1, orthogonal -> 0, opposite -> +1, same direction at another scale -> -1
    assert torch.allclose(cosine_penalty(weights, losses), torch.tensor([-1.0, 0.0, 1.0, -1.0]))


def random_group_losses(seed: int):
    gen = torch.Generator().manual_seed(seed)
    b, m = 6, 3
    losses = torch.rand(b, m, generator=gen) * 2 + 0.1
    valid = torch.rand(b, m, generator=gen) > 0.3
    valid[0] = True  # at least one group with signal for every objective
    weights = torch.distributions.Dirichlet(torch.ones(m)).sample((b,))
    return losses, valid, weights


def hand_scalarised(losses, valid, weights) -> float:
    b, m = losses.shape
    total = 0.0
    for j in range(m):
        rows = [g for g in range(b) if valid[g, j]]
        total += sum(weights[g, j].item() * losses[g, j].item() for g in rows) / len(rows)
    return total


@pytest.mark.parametrize("seed", range(3))
def test_scalarised_loss_averages_weighted_losses_over_valid_groups(seed):
    torch.manual_seed(seed)
    losses, valid, weights = random_group_losses(seed)
    loss, per_objective = scalarised_loss(losses, valid, weights)
    assert loss.item() == pytest.approx(hand_scalarised(losses, valid, weights), rel=1e-6)
    for j in range(losses.shape[1]):
        assert per_objective[j].item() == pytest.approx(losses[valid[:, j], j].mean().item(), rel=1e-6)
    assert not per_objective.requires_grad


@pytest.mark.parametrize("seed", range(3))
def test_scalarised_loss_adds_cosine_penalty_of_fully_valid_groups(seed):
    torch.manual_seed(seed)
    losses, valid, weights = random_group_losses(seed)
    lam = 0.3
    full = [g for g in range(losses.shape[0]) if valid[g].all()]
    assert full  # row 0 at least
    penalty = sum(
        -torch.dot(weights[g], losses[g]).item() / (weights[g].norm() * losses[g].norm()).item()
        for g in full
    ) / len(full)
    expected = hand_scalarised(losses, valid, weights) + lam * penalty
    loss, _ = scalarised_loss(losses, valid, weights, cosine_lambda=lam)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_scalarised_loss_without_fully_valid_group_has_no_penalty():
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    valid = torch.tensor([[True, False], [False, True]])
    weights = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    loss, _ = scalarised_loss(losses, valid, weights, cosine_lambda=10.0)
    assert loss.item() == pytest.approx(0.5 * 1.0 + 0.8 * 4.0)


def test_objective_without_valid_group_contributes_zero():
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    valid = torch.tensor([[True, False], [True, False]])
    weights = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    loss, per_objective = scalarised_loss(losses, valid, weights)
    assert loss.item() == pytest.approx((0.5 * 1.0 + 0.2 * 3.0) / 2)
    assert per_objective.tolist() == [2.0, 0.0]


def padded_batch():
    gen = torch.Generator().manual_seed(0)
    b, n = 3, 5
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True, True, False, False, False]])
    scores = torch.randn(b, n, generator=gen)
    base = torch.randn(b, n, generator=gen)
    clicks = torch.tensor([[0.0, 2.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 7.0, 7.0], [1.0, 0.0, 0, 0, 0]])
    quality = torch.randn(b, n, generator=gen)
    t_clicks, v_clicks = normalise_labels(clicks, mask, "l1")
    t_quality, v_quality = normalise_labels(quality, mask, "softmax")
    targets = torch.stack([t_clicks, t_quality], -1)  # (B, n, m)
    valid = torch.stack([v_clicks, v_quality], -1)  # (B, m)
    return scores, base, targets, valid, mask


def test_multi_objective_losses_per_objective_beta_and_zero_on_invalid():
    scores, base, targets, valid, mask = padded_batch()
    betas = torch.tensor([0.5, 2.0])
    got = multi_objective_losses(scores, base, targets, valid, mask, betas)
    assert got.shape == (3, 2)
    assert valid.tolist() == [[True, True], [False, True], [True, True]]
    assert got[1, 0].item() == 0.0
    for j in range(2):
        expected = listnet_dpo_loss(scores, base, targets[..., j], mask, float(betas[j]))
        assert torch.allclose(got[:, j][valid[:, j]], expected[valid[:, j]])
        assert (expected[valid[:, j]] > 0).all()
    # whatever the target, an entry marked invalid is zeroed
    masked_out = valid.clone()
    masked_out[0, 1] = False
    assert multi_objective_losses(scores, base, targets, masked_out, mask, betas)[0, 1].item() == 0.0


def test_gradients_are_finite_and_zero_on_padded_items():
    scores, base, targets, valid, mask = padded_batch()
    scores = (scores * 1e3).requires_grad_(True)  # large scores stress the masking
    weights = torch.tensor([[0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    group_losses = multi_objective_losses(scores, base, targets, valid, mask, torch.tensor([1.0, 1.0]))
    loss, _ = scalarised_loss(group_losses, valid, weights, cosine_lambda=0.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(scores.grad).all()
    assert torch.equal(scores.grad[~mask], torch.zeros(int((~mask).sum())))
    assert scores.grad[mask].abs().sum() > 0
