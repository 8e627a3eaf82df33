"""Preference readers (HH-RLHF, PKU-SafeRLHF, listwise), the canonical table, splits and files."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from moft.data import preferences
from moft.data.letor import DataFormatError
from moft.data.preferences import (
    PreferenceSourceError,
    SkippedRecordsWarning,
    cap_records,
    dialogue_to_messages,
    load_split_meta,
    load_splits,
    make_prompt_id,
    padded_scores,
    read_preferences,
    response_scores,
    save_splits,
    split_dialogue,
    split_preferences,
)

HH = Path("/work/shared/data/hh-rlhf/harmless-base-test.part-a.jsonl.gz")
HH_EMPTY_CHOSEN_LINES = [87, 517, 926, 1104]  # the chosen (refusing) response is empty


@pytest.fixture(scope="module")
def hh():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRecordsWarning)
        return read_preferences(HH)


@pytest.fixture(scope="module")
def hh_lines() -> list[dict]:
    with gzip.open(HH, "rt") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pku_record(i: int, better: int, safer: int) -> dict:
    return {
        "prompt": f"question {i}?",
        "response_0": f"answer {i}a",
        "response_1": f"answer {i}b",
        "better_response_id": better,
        "safer_response_id": safer,
        "is_response_0_safe": True,
    }


def listwise_record(i: int, ratings: list[tuple[float, float]]) -> dict:
    return {
        "prompt": f"write item {i}",
        "completions": [
            {"response": f"item {i} take {j}", "helpfulness": h, "honesty": o, "model": "m"}
            for j, (h, o) in enumerate(ratings)
        ],
    }


# --- HH-RLHF (the embedded real file) ----------------------------------------------------------


def test_hh_counts_and_skipped_rows(hh):
    assert hh.layout == "hh-rlhf"
    assert hh.records_read == 1156
    assert hh.skip_counts() == {"empty response": 4}
    assert [s.location for s in hh.skipped] == [f"{HH}:{n}" for n in HH_EMPTY_CHOSEN_LINES]
    frame = hh.frame
    assert len(frame) == 2 * 1152 and frame["prompt_id"].nunique() == 1152
    assert list(frame.columns) == ["prompt_id", "prompt", "response_idx", "response", "pref_harmless"]
    assert frame["response_idx"].dtype == np.int64 and frame["pref_harmless"].dtype == np.int8
    assert hh.objectives == {"harmless": "pref_harmless"}
    assert (frame["pref_harmless"] == 1).all()  # the chosen dialogue is response 0
    assert frame["response_idx"].tolist() == [0, 1] * 1152


def test_hh_skip_warning_names_count_and_lines():
    with pytest.warns(SkippedRecordsWarning, match="skipped 4 of 1156 records: 4 empty response") as w:
        read_preferences(HH)
    assert f"{HH}:87" in str(w[0].message) and f"{HH}:1104" in str(w[0].message)


def test_hh_every_prompt_ends_with_assistant_and_rebuilds_the_dialogues(hh, hh_lines):
    frame = hh.frame
    assert frame["prompt"].str.endswith("\n\nAssistant:").all()
    assert frame["prompt"].str.startswith("\n\nHuman:").all()
    kept = [n for n in range(1, 1157) if n not in HH_EMPTY_CHOSEN_LINES]
    chosen, rejected = frame[frame["response_idx"] == 0], frame[frame["response_idx"] == 1]
    for line, (_, c), (_, r) in zip(kept, chosen.iterrows(), rejected.iterrows()):
        assert c["prompt"] + c["response"] == hh_lines[line - 1]["chosen"]
        assert r["prompt"] + r["response"] == hh_lines[line - 1]["rejected"]
        assert c["prompt_id"] == make_prompt_id(c["prompt"], line)


def test_hh_first_row_split_by_hand(hh):
    first = hh.frame.iloc[:2]
    assert first["prompt_id"].tolist() == [make_prompt_id(first["prompt"].iloc[0], 1)] * 2
    assert first["prompt_id"].iloc[0].endswith("-1")
    prompt = first["prompt"].iloc[0]
    assert prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant:")
    assert prompt.endswith(
        "\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:"
    )
    assert first["response"].iloc[0] == (
        " No, sorry!  All of these involve a pen, the point is that you can get funny results by "
        "doing pranks with pens."
    )
    assert first["response"].iloc[1].startswith(
        " There are lots of funny things you can do with pens, here’s one example"
    )


def test_hh_prompt_length_distribution(hh):
    lengths = hh.frame.groupby("prompt_id")["prompt"].first().str.len()
    assert (lengths.min(), lengths.max(), int(lengths.median())) == (29, 3316, 344)


def test_dialogue_to_messages_hand_checked_and_alternating(hh):
    messages = dialogue_to_messages(hh.frame["prompt"].iloc[0])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert messages[-1]["content"] == "okay some of these do not have anything to do with pens"
    for prompt in hh.frame["prompt"].iloc[::2]:  # two prompts have consecutive assistant turns
        roles = [m["role"] for m in dialogue_to_messages(prompt)]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert all(m["content"] for m in dialogue_to_messages(prompt))


def test_dialogue_helpers_on_odd_text():
    assert split_dialogue("\n\nHuman: hi") is None
    assert split_dialogue("\n\nHuman: hi\n\nAssistant: yo") == ("\n\nHuman: hi\n\nAssistant:", " yo")
    merged = dialogue_to_messages(
        "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nAssistant:"
    )
    assert merged == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b\n\nc"},
        {"role": "user", "content": "d"},
    ]
    with pytest.raises(ValueError, match="not an HH dialogue"):
        dialogue_to_messages("hello\n\nHuman: a")


def test_hh_degenerate_rows_are_skipped_and_counted(tmp_path):
    ok = {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    rows = [
        ok,
        {"chosen": "\n\nHuman: q\n\nAssistant: same", "rejected": "\n\nHuman: q\n\nAssistant: same"},
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
        {"chosen": "\n\nHuman: no answer turn", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        ok,
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.warns(SkippedRecordsWarning, match="skipped 3 of 5 records"):
        data = read_preferences(path, objectives=["helpful"])
    assert data.skip_counts() == {
        "identical responses": 1,
        "chosen/rejected prompts differ": 1,
        "no '\\n\\nAssistant:' turn": 1,
    }
    assert [s.location for s in data.skipped] == [f"{path}:{n}" for n in (2, 3, 4)]
    # the same prompt on lines 1 and 5 stays two records with distinct ids
    assert data.frame["prompt_id"].unique().tolist() == [
        make_prompt_id(ok["chosen"][:-5], 1), make_prompt_id(ok["chosen"][:-5], 5)
    ]
    assert list(data.objectives) == ["helpful"]


# --- PKU-SafeRLHF and listwise (synthetic) -----------------------------------------------------


def test_pku_layout_maps_ids_to_preferences(tmp_path):
    records = [pku_record(0, 0, 1), pku_record(1, 1, 1), pku_record(2, 1, 0)]
    path = write_jsonl(tmp_path / "pku.jsonl", records)
    data = read_preferences(path)
    assert data.layout == "pku-saferlhf"
    frame = data.frame
    assert data.objectives == {"helpful": "pref_helpful", "harmless": "pref_harmless"}
    assert frame["pref_helpful"].tolist() == [1, 1, -1, -1, -1, -1]
    assert frame["pref_harmless"].tolist() == [-1, -1, -1, -1, 1, 1]
    assert frame["response"].tolist()[:2] == ["answer 0a", "answer 0b"]
    only_safety = read_preferences(path, objectives=["harmless"]).frame
    assert [c for c in only_safety.columns if c.startswith("pref_")] == ["pref_harmless"]


def test_pku_bad_id_and_missing_key_name_file_line_and_key(tmp_path):
    bad = pku_record(1, 2, 0)
    path = write_jsonl(tmp_path / "pku.jsonl", [pku_record(0, 0, 1), bad])
    expected = r"pku\.jsonl:2: .*'better_response_id' must be 0 or 1, found 2"
    with pytest.raises(DataFormatError, match=expected):
        read_preferences(path)
    missing = pku_record(1, 0, 0)
    del missing["safer_response_id"]
    path = write_jsonl(tmp_path / "pku2.jsonl", [pku_record(0, 0, 1), missing])
    with pytest.raises(DataFormatError, match=r"pku2\.jsonl:2: .*missing key 'safer_response_id'"):
        read_preferences(path, layout="pku-saferlhf")


def test_listwise_flat_ratings(tmp_path):
    records = [
        listwise_record(0, [(5, 1), (3, 2), (1, 3)]),
        listwise_record(1, [(2, 2), (4, 1)]),
        listwise_record(2, [(1, 1), (2, 2), (3, 3), (4, 4)]),
    ]
    data = read_preferences(write_jsonl(tmp_path / "lists.jsonl", records))
    assert data.layout == "listwise"
    assert data.objectives == {"helpfulness": "score_helpfulness", "honesty": "score_honesty"}
    frame = data.frame
    assert frame["response_idx"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert frame["score_helpfulness"].tolist() == [5, 3, 1, 2, 4, 1, 2, 3, 4]
    assert frame["score_helpfulness"].dtype == np.float64
    lists = padded_scores(frame)
    assert lists.scores.shape == (3, 4, 2) and lists.objectives == ["helpfulness", "honesty"]
    assert lists.mask.sum(axis=1).tolist() == [3, 2, 4]
    assert lists.scores[1, :2, 0].tolist() == [2, 4] and np.isnan(lists.scores[1, 2:]).all()


def test_listwise_ultrafeedback_annotations_and_skips(tmp_path):
    def completion(text, help_rating, honesty_rating):
        return {
            "response": text,
            "annotations": {
                "helpfulness": {"Rating": help_rating, "Rationale": "..."},
                "honesty": {"Rating": honesty_rating, "Rationale": "..."},
            },
            "overall_score": 7.5,
        }

    records = [
        {"instruction": "q0", "completions": [completion("a", "4", "5"), completion("b", "2", "5")]},
        {"instruction": "q1", "completions": [completion("a", "N/A", "5"), completion("b", "2", "1")]},
        {"instruction": "q2", "completions": [completion("only one", "3", "3")]},
        {"instruction": "q3", "completions": [completion("x", 1, 2), completion("y", 3, 4)]},
    ]
    path = write_jsonl(tmp_path / "uf.jsonl", records)
    with pytest.warns(SkippedRecordsWarning, match="skipped 2 of 4 records"):
        data = read_preferences(path)
    assert data.skip_counts() == {
        "non-numeric rating for 'helpfulness'": 1,
        "fewer than 2 responses": 1,
    }
    assert list(data.objectives) == ["helpfulness", "honesty"]
    assert data.frame["prompt"].unique().tolist() == ["q0", "q3"]
    assert data.frame["score_honesty"].tolist() == [5, 5, 2, 4]
    overall = read_preferences(path, objectives=["overall_score"], max_records=1)
    assert overall.frame["score_overall_score"].tolist() == [7.5, 7.5]


def test_listwise_missing_aspect_names_key_and_line(tmp_path):
    records = [listwise_record(0, [(1, 2), (2, 1)]), listwise_record(1, [(1, 2), (2, 1)])]
    del records[1]["completions"][1]["honesty"]
    path = write_jsonl(tmp_path / "lists.jsonl", records)
    expected = r"lists\.jsonl:2: .*missing key 'honesty' in completions\[1\]"
    with pytest.raises(DataFormatError, match=expected):
        read_preferences(path)


# --- bad input ---------------------------------------------------------------------------------


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(pku_record(0, 0, 1))
    path.write_text(f"{good}\n\n{good[:-5]}\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: malformed JSON"):
        read_preferences(path)


def test_non_object_line_and_missing_hh_key(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    expected = r"list\.jsonl:1: expected a JSON object per line, found list"
    with pytest.raises(DataFormatError, match=expected):
        read_preferences(path)
    chosen = "\n\nHuman: q\n\nAssistant: a"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": "x"}, {"chosen": chosen}])
    with pytest.raises(DataFormatError, match=r"hh\.jsonl:2: hh-rlhf record: missing key 'rejected'"):
        read_preferences(path, layout="hh-rlhf")
    path = write_jsonl(tmp_path / "type.jsonl", [{"chosen": 3, "rejected": "x"}])
    with pytest.raises(DataFormatError, match=r"type\.jsonl:1: .*'chosen' must be a string, found int"):
        read_preferences(path)


def test_unknown_layout(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    expected = r"odd\.jsonl:1: unknown layout: keys \['answer', 'question'\]"
    with pytest.raises(DataFormatError, match=expected):
        read_preferences(path)
    with pytest.raises(ValueError, match="unknown layout 'sharegpt'"):
        read_preferences(path, layout="sharegpt")


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="preference file .*nope.jsonl does not exist"):
        read_preferences(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match="no records"):
        read_preferences(empty)


def test_hub_id_fails_fast_offline_with_a_clear_message(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PreferenceSourceError) as caught:
        read_preferences("Anthropic/hh-rlhf", hf_split="test", hf_data_dir="harmless-base")
    message = str(caught.value)
    assert "'Anthropic/hh-rlhf' is not a local file" in message
    assert "Hugging Face dataset (split 'test') failed" in message
    assert "download the data and pass the path of a local .jsonl file" in message


def test_hub_id_without_network_fails_before_datasets_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(preferences, "_hub_reachable", lambda: False)
    with pytest.raises(PreferenceSourceError, match="cannot reach the hub"):
        read_preferences("Anthropic/hh-rlhf")


# --- caps, scores, splits, files ---------------------------------------------------------------


def test_max_records_first_n_and_seeded_sample(hh):
    first = read_preferences(HH, max_records=10)  # stops before any skipped line
    assert first.records_read == 10 and first.skipped == []
    rows = [pid.split("-")[1] for pid in first.frame["prompt_id"].unique()]
    assert rows == [str(n) for n in range(1, 11)]
    sample = cap_records(hh.frame, 50, seed=1)
    assert sample["prompt_id"].nunique() == 50
    assert sample.equals(cap_records(hh.frame, 50, seed=1))
    assert not sample.equals(cap_records(hh.frame, 50, seed=2))
    order = hh.frame["prompt_id"].drop_duplicates().tolist()
    kept = sample["prompt_id"].drop_duplicates().tolist()
    assert kept == [pid for pid in order if pid in set(kept)]  # source order is kept
    with pytest.warns(SkippedRecordsWarning):
        read = read_preferences(HH, max_records=50, sample_seed=1)
    pd.testing.assert_frame_equal(read.frame, sample)
    with pytest.raises(ValueError, match="give max_records too"):
        read_preferences(HH, sample_seed=1)


def test_response_scores_ties_half_or_skip(tmp_path):
    frame = read_preferences(
        write_jsonl(tmp_path / "pku.jsonl", [pku_record(0, 0, 1), pku_record(1, 1, 0)])
    ).frame
    frame.loc[2:3, "pref_harmless"] = 0  # a tie on the second pair
    half = response_scores(frame)
    assert half["score_helpful"].tolist() == [1, 0, 0, 1]
    assert half["score_harmless"].tolist() == [0, 1, 0.5, 0.5]
    skip = response_scores(frame, ties="skip")["score_harmless"].to_numpy()
    assert skip[:2].tolist() == [0, 1] and np.isnan(skip[2:]).all()
    with pytest.raises(ValueError, match="ties must be"):
        response_scores(frame, ties="drop")
    triple = pd.concat([frame, frame.iloc[[0]].assign(response_idx=2)], ignore_index=True)
    with pytest.raises(ValueError, match="pairwise objective 'helpful'.*exactly two responses"):
        response_scores(triple)


def test_split_by_prompt_is_deterministic_and_disjoint(hh):
    splits = split_preferences(hh.frame, seed=0)
    sizes = [splits[name]["prompt_id"].nunique() for name in ("train", "val", "test")]
    assert sum(sizes) == 1152 and sizes[0] == 691 and sorted(sizes[1:]) == [230, 231]
    ids = [set(s["prompt_id"]) for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all((s.groupby("prompt_id").size() == 2).all() for s in splits.values())
    again = split_preferences(hh.frame.iloc[::-1].reset_index(drop=True), seed=0)
    assert set(again["test"]["prompt_id"]) == ids[2]
    assert set(split_preferences(hh.frame, seed=1)["test"]["prompt_id"]) != ids[2]


def test_repeated_prompt_text_never_crosses_splits(tmp_path):
    records = [pku_record(i % 10, 0, 1) | {"response_1": f"alt {i}"} for i in range(40)]
    frame = read_preferences(write_jsonl(tmp_path / "rep.jsonl", records)).frame
    assert frame["prompt_id"].nunique() == 40
    splits = split_preferences(frame, seed=3)
    prompts = [set(s["prompt"]) for s in splits.values()]
    assert sum(len(p) for p in prompts) == 10 and len(set.union(*prompts)) == 10


def test_save_and_load_splits_round_trip(hh, tmp_path):
    splits = split_preferences(hh.frame)
    out = save_splits(splits, tmp_path / "prepared", meta={"source": str(HH)})
    loaded = load_splits(out)
    for name in splits:
        pd.testing.assert_frame_equal(loaded[name], splits[name])
    meta = load_split_meta(out)
    assert meta["objectives"] == {"harmless": "pref_harmless"}
    assert meta["splits"]["train"] == {"prompts": 691, "responses": 1382}
    assert meta["source"] == str(HH)
    assert sorted(p.name for p in out.iterdir()) == [
        "preferences.json", "test.parquet", "train.parquet", "val.parquet"
    ]
    with pytest.raises(ValueError, match="same columns"):
        save_splits({**splits, "test": splits["test"].drop(columns="pref_harmless")}, out)
    unwritable = splits["test"].assign(response=[object()] * len(splits["test"]))
    with pytest.raises(pa.ArrowInvalid):  # pyarrow cannot store arbitrary objects
        save_splits({**splits, "test": unwritable}, out)
    pd.testing.assert_frame_equal(load_splits(out)["test"], splits["test"])  # left intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temporary leftovers
    with pytest.raises(FileNotFoundError, match="valid.parquet does not exist"):
        load_splits(out, names=["valid"])
