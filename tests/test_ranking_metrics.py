import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from moft.metrics.ranking import mean_ndcg, ndcg_at_k


def padded_batch(rng, lengths, n_items):
    """Random tie-free scores and integer labels 0..4 for groups of the given lengths."""
    mask = np.arange(n_items)[None, :] < np.asarray(lengths)[:, None]  # (G, n)
    scores = rng.permutation(len(lengths) * n_items).reshape(len(lengths), n_items) / 7.0
    labels = rng.integers(0, 5, size=mask.shape).astype(float)
    labels[~mask] = np.nan  # padding may hold anything
    return scores, labels, mask


def test_ndcg_matches_sklearn_per_group_on_padded_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, size=50)
    scores, labels, mask = padded_batch(rng, lengths, n_items=40)
    labels[0, : lengths[0]] = np.arange(lengths[0]) % 3 + 1  # at least one group surely has signal

    ours = ndcg_at_k(scores, labels, mask, k=10)

    for g, n in enumerate(lengths):
        z = labels[g, :n]
        if z.sum() == 0:
            assert np.isnan(ours[g])
            continue
        expected = ndcg_score(z[None, :], scores[g, :n][None, :], k=10)
        assert ours[g] == pytest.approx(expected, abs=1e-12)


def test_ndcg_is_nan_for_groups_without_signal():
    scores = np.array([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    labels = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    mask = np.array([[True, True, True], [True, True, False]])  # the 5 sits in padding

    per_group = ndcg_at_k(scores, labels, mask)
    mean, left_out = mean_ndcg(per_group)

    assert np.isnan(per_group).all()
    assert np.isnan(mean) and left_out == 2


def test_ndcg_hand_computed_three_items():
    # Ranking by score: items 1, 2, 0 with gains 1, 0, 2.
    scores = np.array([[0.1, 0.9, 0.5]])
    labels = np.array([[2.0, 1.0, 0.0]])
    mask = np.ones((1, 3), dtype=bool)
    dcg = 1 / np.log2(2) + 0 / np.log2(3) + 2 / np.log2(4)
    ideal = 2 / np.log2(2) + 1 / np.log2(3)

    assert ndcg_at_k(scores, labels, mask)[0] == pytest.approx(dcg / ideal)
    assert ndcg_at_k(scores, labels, mask, k=1)[0] == pytest.approx(1 / 2)


def test_ties_are_broken_by_item_index():
    scores = np.zeros((1, 2))
    mask = np.ones((1, 2), dtype=bool)
    assert ndcg_at_k(scores, np.array([[1.0, 0.0]]), mask)[0] == pytest.approx(1.0)
    assert ndcg_at_k(scores, np.array([[0.0, 1.0]]), mask)[0] == pytest.approx(1 / np.log2(3))


def test_mean_ndcg_skips_and_counts_left_out_groups():
    assert mean_ndcg(np.array([0.5, np.nan, 1.0])) == (pytest.approx(0.75), 1)


@pytest.mark.parametrize(
    ("labels", "mask", "k", "message"),
    [
        ([[1.0, -1.0]], [[True, True]], 10, "labels must be non-negative"),
        ([[1.0, 0.0]], [[1, 1]], 10, "mask must be a boolean"),
        ([[1.0, 0.0, 0.0]], [[True, True, True]], 10, "must share one"),
        ([[1.0, 0.0]], [[True, True]], 0, "k must be a positive integer"),
    ],
)
def test_bad_input_is_named(labels, mask, k, message):
    with pytest.raises(ValueError, match=message):
        ndcg_at_k(np.array([[0.2, 0.1]]), np.array(labels), np.array(mask), k=k)


def test_negative_labels_in_padding_are_ignored():
    result = ndcg_at_k(np.array([[0.2, 0.1]]), np.array([[1.0, -3.0]]), np.array([[True, False]]))
    assert result[0] == pytest.approx(1.0)
