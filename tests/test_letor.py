import gzip
from pathlib import Path

import numpy as np
import pytest

from moft.data.letor import DataFormatError, read_letor, read_letor_files

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
MSLR = [SAMPLES / "mslr-web10k-sample" / f"fold1-{part}-5k.txt.gz" for part in ("train", "test")]
MQ2008_VALI = SAMPLES / "letor-mq2008" / "vali.txt.gz"

TINY = """\
# a comment-only line
2 qid:10 1:0.5 3:2 # docid = A inc = 1 prob = 0.25

0 qid:10 2:-1.5e1 # docid = B inc = 0.5 prob = 0.5
1 qid:7 # docid = C inc = 0 prob = 1
"""


def write(tmp_path: Path, text: str, name: str = "tiny.txt") -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_reads_labels_groups_sparse_features_and_comments(tmp_path):
    df = read_letor(write(tmp_path, TINY), comment_fields=["inc", "prob"])
    assert list(df.columns) == ["group_id", "label", "f1", "f2", "f3", "c_inc", "c_prob"]
    assert df["group_id"].tolist() == ["10", "10", "7"]
    assert df["label"].tolist() == [2.0, 0.0, 1.0]
    features = df[["f1", "f2", "f3"]].to_numpy()
    np.testing.assert_array_equal(features, [[0.5, 0, 2], [0, -15, 0], [0, 0, 0]])
    assert features.dtype == np.float32 and df["label"].dtype == np.float64
    assert df["c_inc"].tolist() == [1.0, 0.5, 0.0]
    assert df["c_prob"].tolist() == [0.25, 0.5, 1.0]


def test_gzip_and_plain_read_the_same(tmp_path):
    plain = read_letor(write(tmp_path, TINY))
    zipped = read_letor(write(tmp_path, TINY, "tiny.txt.gz"))
    assert plain.equals(zipped)


def test_configured_feature_count_pads_with_zero_columns(tmp_path):
    df = read_letor(write(tmp_path, TINY), n_features=5)
    assert [c for c in df.columns if c.startswith("f")] == ["f1", "f2", "f3", "f4", "f5"]
    assert (df["f5"] == 0).all()


def test_nan_and_inf_values_parse_as_floats(tmp_path):
    df = read_letor(write(tmp_path, "1 qid:1 1:nan 2:inf 3:-inf\n"))
    values = df[["f1", "f2", "f3"]].to_numpy()[0]
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("x qid:1 1:0.5", "label 'x' is not a number"),
        ("1", "missing 'qid:<id>'"),
        ("1 1:0.5 2:0.5", "expected 'qid:<id>'"),
        ("1 qid: 1:0.5", "expected 'qid:<id>'"),
        ("1 qid:1 1:abc", "'abc' in '1:abc' is not a number"),
        ("1 qid:1 1:0.5 2", "'2' is not '<index>:<value>'"),
        ("1 qid:1 1:2:3", "'1:2:3' is not '<index>:<value>'"),
        ("1 qid:1 x:0.5", "feature index 'x'"),
        ("1 qid:1 -1:0.5", "feature index '-1'"),
        ("1 qid:1 0:0.5", "feature index 0 < 1"),
        ("1 qid:1 3:0.5 2:0.5", "feature index 2 follows 3"),
        ("1 qid:1 2:0.5 2:0.5", "feature index 2 follows 2"),
        ("1 qid:1 1:0.5 # inc = 1", "comment field 'prob' missing"),
        ("1 qid:1 1:0.5 # inc = 1 prob = high", "comment field 'prob' = 'high' is not a number"),
    ],
)
def test_malformed_line_names_file_line_and_problem(tmp_path, bad_line, problem):
    comment = " # inc = 1 prob = 0.5"
    if "#" not in bad_line:
        bad_line += comment
    path = write(tmp_path, "0 qid:1 1:0.1" + comment + "\n\n" + bad_line + "\n")
    with pytest.raises(DataFormatError) as caught:
        read_letor(path, comment_fields=["inc", "prob"])
    assert str(caught.value).startswith(f"{path}:3: ")
    assert problem in str(caught.value)
    assert caught.value.line == 3


def test_index_above_configured_feature_count(tmp_path):
    path = write(tmp_path, "0 qid:1 1:0.1\n0 qid:1 1:0.1 7:1\n")
    expected = r"tiny\.txt:2: feature index 7 is too large \(n_features is 5\)"
    with pytest.raises(DataFormatError, match=expected):
        read_letor(path, n_features=5)


def test_qid_that_reappears_is_an_error(tmp_path):
    path = write(tmp_path, "0 qid:1 1:1\n0 qid:2 1:1\n0 qid:1 1:1\n")
    with pytest.raises(DataFormatError, match=r"tiny\.txt:3: qid 1 reappears"):
        read_letor(path)


def test_error_in_gzip_file_names_the_line(tmp_path):
    path = write(tmp_path, "0 qid:1 1:1\n0 qid:1 1:oops\n", "bad.txt.gz")
    with pytest.raises(DataFormatError, match=r"bad\.txt\.gz:2: feature value 'oops'"):
        read_letor(path)


def test_file_without_data_lines(tmp_path):
    with pytest.raises(DataFormatError, match="no data lines"):
        read_letor(write(tmp_path, "# nothing\n\n"))


def test_read_letor_files_prefixes_group_ids_and_aligns_features(tmp_path):
    a = write(tmp_path, "1 qid:1 1:1\n0 qid:1 1:2\n", "a.txt")
    b = write(tmp_path, "0 qid:1 3:1\n", "b.txt.gz")
    df = read_letor_files([a, b])
    assert df["group_id"].tolist() == ["a:1", "a:1", "b:1"]
    features = df[["f1", "f2", "f3"]].to_numpy()
    np.testing.assert_array_equal(features, [[1, 0, 0], [2, 0, 0], [0, 0, 1]])
    assert read_letor_files([a])["group_id"].tolist() == ["1", "1"]


def test_read_letor_files_rejects_merging_groups(tmp_path):
    (tmp_path / "x").mkdir()
    a = write(tmp_path, "1 qid:1 1:1\n", "a.txt")
    same_stem = write(tmp_path / "x", "1 qid:1 1:1\n", "a.txt.gz")
    with pytest.raises(DataFormatError, match="group id 'a:1' also comes from"):
        read_letor_files([a, same_stem])


def test_mslr_sample_shapes():
    for path in MSLR:
        df = read_letor(path)
        assert df.shape == (5000, 2 + 136)
        assert df["group_id"].nunique() == 43
        assert set(df["label"].unique()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    both = read_letor_files(MSLR)
    assert both.shape == (10000, 138) and both["group_id"].nunique() == 86
    assert both["group_id"].iloc[0].startswith("fold1-train-5k:")


def test_mq2008_sample_shapes_and_comments():
    df = read_letor(MQ2008_VALI, comment_fields=["inc", "prob"])
    assert df.shape == (2707, 2 + 46 + 2)
    # the data README says 156 queries; the file holds 157 contiguous qid runs (checked with awk)
    assert df["group_id"].nunique() == 157
    assert set(df["label"].unique()) == {0.0, 1.0, 2.0}
    assert (df["f43"] == 0).all()
    assert df["c_inc"].iloc[0] == 1.0 and df["c_prob"].iloc[0] == pytest.approx(0.109181)
