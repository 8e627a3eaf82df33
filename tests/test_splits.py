import pytest

from moft.data.splits import split_groups

ITEM_GROUPS = [f"q{i}" for i in range(20) for _ in range(3)]  # 20 groups, 3 items each


def test_splits_are_disjoint_cover_all_and_follow_fractions():
    splits = split_groups(ITEM_GROUPS, seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    together = splits["train"] + splits["val"] + splits["test"]
    assert sorted(together) == sorted(set(ITEM_GROUPS))
    assert len(set(together)) == len(together)


def test_same_seed_same_split_regardless_of_input_order():
    assert split_groups(ITEM_GROUPS, seed=3) == split_groups(ITEM_GROUPS[::-1], seed=3)
    assert split_groups(ITEM_GROUPS, seed=3) != split_groups(ITEM_GROUPS, seed=4)


def test_every_split_non_empty_for_three_groups():
    splits = split_groups(["a", "b", "c"], fractions=(0.8, 0.1, 0.1))
    assert sorted(len(v) for v in splits.values()) == [1, 1, 1]


def test_too_few_groups():
    with pytest.raises(ValueError, match="at least 3 groups.*got 2"):
        split_groups(["a", "b", "a"])


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.0), (0.6, 0.2, 0.3), (0.5, 0.5)])
def test_bad_fractions_are_named(fractions):
    with pytest.raises(ValueError, match="fractions must"):
        split_groups(ITEM_GROUPS, fractions=fractions)
