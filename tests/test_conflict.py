import numpy as np
import pandas as pd
import pytest

from moft.data.conflict import agreement_warnings, conflict_matrix


def frame() -> pd.DataFrame:
    """Three groups: 'same' is a monotone transform of 'rel', 'flipped' its reverse."""
    rng = np.random.default_rng(0)
    rel = np.concatenate([rng.permutation(5), rng.permutation(4), [1.0, 1.0, 1.0]])
    return pd.DataFrame({
        "group_id": ["a"] * 5 + ["b"] * 4 + ["c"] * 3,
        "rel": rel,
        "same": np.exp(rel),
        "flipped": 10 - 2 * rel,
        "noise": rng.normal(size=12),
    })


def test_perfect_agreement_and_perfect_conflict():
    names = {"relevance": "rel", "same": "same", "flipped": "flipped", "noise": "noise"}
    means, counts = conflict_matrix(frame(), names)
    assert list(means.index) == list(names)
    assert means.loc["relevance", "same"] == pytest.approx(1.0)
    assert means.loc["relevance", "flipped"] == pytest.approx(-1.0)
    assert means.loc["same", "flipped"] == pytest.approx(-1.0)
    assert -1 < means.loc["relevance", "noise"] < 1
    np.testing.assert_allclose(np.diag(means), 1.0)
    # group c is constant in rel/same/flipped, so only a and b count for those
    assert counts.loc["relevance", "flipped"] == 2 and counts.loc["noise", "noise"] == 3
    assert (means == means.T).all().all()


def test_constant_label_gives_nan_and_zero_count():
    df = frame().assign(flat=1.0)
    means, counts = conflict_matrix(df, {"rel": "rel", "flat": "flat"})
    assert np.isnan(means.loc["rel", "flat"]) and counts.loc["rel", "flat"] == 0


def test_groups_need_not_be_contiguous():
    df = frame()
    shuffled = df.sample(frac=1.0, random_state=0)
    names = {"rel": "rel", "noise": "noise"}
    in_order, _ = conflict_matrix(df, names)
    pd.testing.assert_frame_equal(in_order, conflict_matrix(shuffled, names)[0])


def test_agreement_warnings_only_among_chosen_objectives():
    names = {"relevance": "rel", "same": "same", "flipped": "flipped", "noise": "noise"}
    means, _ = conflict_matrix(frame(), names)
    all_pairs = agreement_warnings(means, threshold=0.7)
    assert len(all_pairs) == 1 and "'relevance' and 'same'" in all_pairs[0]
    assert agreement_warnings(means, among=["same", "flipped"]) == []
    with pytest.raises(ValueError, match="unknown objectives \\['clicks'\\]"):
        agreement_warnings(means, among=["clicks"])


def test_missing_column_and_nan_are_named():
    with pytest.raises(ValueError, match="'nope' \\(column of 'clicks'\\)"):
        conflict_matrix(frame(), {"rel": "rel", "clicks": "nope"})
    df = frame()
    df.loc[3, "noise"] = np.nan
    with pytest.raises(ValueError, match="NaN values: \\['noise'\\]"):
        conflict_matrix(df, {"rel": "rel", "noise": "noise"})
