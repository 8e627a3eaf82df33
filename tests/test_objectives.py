import numpy as np
import pytest

from moft.data.objectives import objective_labels

GROUPS = np.array(["a", "a", "a", "b", "b"])


def labels(values, transform, direction="higher", groups=GROUPS, **kwargs):
    return objective_labels(np.array(values, dtype=float), groups, direction, transform, **kwargs)


def test_identity_keeps_non_negative_values_and_shifts_negative_ones():
    np.testing.assert_array_equal(labels([0, 2, 5, 1, 3], "identity"), [0, 2, 5, 1, 3])
    np.testing.assert_array_equal(labels([-2, 0, 3, 1, -1], "identity"), [0, 2, 5, 3, 1])


def test_lower_is_better_maps_to_dataset_max_minus_value():
    # quality scores: lower is better; dataset max is 9
    np.testing.assert_array_equal(labels([9, 4, 0, 7, 2], "identity", "lower"), [0, 5, 9, 2, 7])


def test_log1p_of_the_non_negative_value():
    out = labels([0, 1, 3, 9, 99], "log1p")
    np.testing.assert_allclose(out, np.log([1, 2, 4, 10, 100]))
    shifted = labels([-1, 0, 2, -1, -1], "log1p")  # shifted by +1 first
    np.testing.assert_allclose(shifted, np.log([1, 2, 4, 1, 1]))


def test_minmax_per_group_with_constant_group_at_zero():
    np.testing.assert_allclose(labels([2, 4, 6, 10, 30], "minmax"), [0, 0.5, 1, 0, 1])
    np.testing.assert_array_equal(labels([1, 5, 3, 7, 7], "minmax"), [0, 1, 0.5, 0, 0])
    # lower: v -> 7 - v = [6, 2, 4, 0, 0]; group a scaled on [2, 6]
    np.testing.assert_allclose(labels([1, 5, 3, 7, 7], "minmax", "lower"), [1, 0, 0.5, 0, 0])


def test_grade_on_distinct_values_gives_equal_bins():
    values = np.arange(10.0)
    out = objective_labels(values, np.zeros(10), "higher", "grade", n_grades=5)
    np.testing.assert_array_equal(out, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


def test_grade_with_heavy_ties_has_no_empty_grade():
    # 7 zero click counts: the 20/40/60% quantile edges all equal 0 and merge
    values = np.array([0, 0, 0, 0, 0, 0, 0, 1, 2, 3], dtype=float)
    out = objective_labels(values, np.zeros(10), "higher", "grade", n_grades=5)
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    assert set(np.unique(out)) == set(range(int(out.max()) + 1))


def test_grade_of_all_equal_values_is_zero():
    np.testing.assert_array_equal(labels([3, 3, 3, 3, 3], "grade"), np.zeros(5))


def test_grade_respects_n_grades_and_direction():
    values = np.arange(8.0)
    out = objective_labels(values, np.zeros(8), "lower", "grade", n_grades=2)
    np.testing.assert_array_equal(out, [1, 1, 1, 1, 0, 0, 0, 0])


def test_nan_is_rejected_with_its_position():
    with pytest.raises(ValueError, match="clicks: 1 non-finite value.*NaN at position 2"):
        labels([1, 2, np.nan, 4, 5], "identity", name="clicks")


def test_unknown_transform_and_direction_are_rejected():
    with pytest.raises(ValueError, match="transform must be one of .*'rank'"):
        labels([1, 2, 3, 4, 5], "rank")
    with pytest.raises(ValueError, match="direction must be one of .*'up'"):
        labels([1, 2, 3, 4, 5], "identity", "up")


def test_length_mismatch_is_rejected():
    with pytest.raises(ValueError, match="4 values but 5 group ids"):
        labels([1, 2, 3, 4], "minmax")
