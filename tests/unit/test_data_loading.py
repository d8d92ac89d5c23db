"""Loading and validating records: every format round-trips; every bad row names file, row and field."""

import csv
import json

import pytest

from alignkit.data import (
    DataError,
    PreferenceRecord,
    PromptRecord,
    SFTRecord,
    load_records,
    split_records,
    write_jsonl,
)

SFT_ROWS = [
    {"prompt": "2+3", "completion": "<answer>5</answer>"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}]},
    {"text": "plain text to model"},
    {"prompt": "7+1", "completion": "8", "id": "x7"},  # an extra field is kept in `extra`
]
PAIRS = [{"prompt": "2+2", "chosen": "4", "rejected": "5"},
         {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
          "rejected": "go away"}]


def _write_jsonl_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- round trips ---------------------------------------------------------------------------------------


def test_jsonl_round_trip_all_sft_forms(tmp_path):
    path = write_jsonl(SFT_ROWS, tmp_path / "train.jsonl")
    records = load_records(path, "sft")
    assert [r.to_dict() for r in records] == SFT_ROWS
    assert [r.form for r in records] == ["prompt_completion", "messages", "text", "prompt_completion"]
    assert records[3].extra == {"id": "x7"}
    assert all(isinstance(r, SFTRecord) and r.source == str(path) for r in records)
    assert [r.row for r in records] == [1, 2, 3, 4]


@pytest.mark.parametrize("wrap", [False, True])
def test_json_list_and_data_key(tmp_path, wrap):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": SFT_ROWS} if wrap else SFT_ROWS))
    assert [r.to_dict() for r in load_records(path, "sft")] == SFT_ROWS


def test_parquet_round_trip_missing_cells_count_as_absent(tmp_path):
    import pandas as pd

    path = tmp_path / "train.parquet"
    pd.DataFrame(SFT_ROWS).to_parquet(path)  # heterogeneous rows: absent keys become nulls
    assert [r.to_dict() for r in load_records(path, "sft")] == SFT_ROWS


def test_csv_round_trip(tmp_path):
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        w.writeheader()
        w.writerows([{"prompt": "1+1", "completion": "2"}, {"prompt": "a, \"quoted\"\nline", "completion": "b"}])
    records = load_records(path, "sft")
    assert [(r.prompt, r.completion) for r in records] == [("1+1", "2"), ("a, \"quoted\"\nline", "b")]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(PAIRS[:1] * 3).save_to_disk(str(tmp_path / "single"))
    records = load_records(tmp_path / "single", "preference")
    assert len(records) == 3 and all(isinstance(r, PreferenceRecord) for r in records)
    assert records[0].to_dict() == PAIRS[0]

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(SFT_ROWS[:1] * 2),
                               "test": datasets.Dataset.from_list(SFT_ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: a DatasetDict needs split=one of \['test', 'train'\]"):
        load_records(tmp_path / "dd", "sft")
    with pytest.raises(DataError, match=r"has no split 'dev'"):
        load_records(tmp_path / "dd", "sft", split="dev")
    assert len(load_records(tmp_path / "dd", "sft", split="test")) == 1


def test_preference_and_prompt_records(tmp_path):
    prefs = load_records(write_jsonl(PAIRS, tmp_path / "p.jsonl"), "preference")
    assert [r.to_dict() for r in prefs] == PAIRS
    rows = [{"prompt": "2+3", "answer": "5", "level": 1, "tests": ["assert f() == 1"]}]
    (rec,) = load_records(write_jsonl(rows, tmp_path / "rl.jsonl"), "prompt")
    assert isinstance(rec, PromptRecord)
    assert rec.extra == {"answer": "5", "level": 1, "tests": ["assert f() == 1"]}


def test_limit_and_blank_lines(tmp_path):
    lines = [json.dumps(r) for r in SFT_ROWS]
    path = _write_jsonl_lines(tmp_path / "t.jsonl", [lines[0], "", lines[1], lines[2]])
    records = load_records(path, "sft")
    assert [r.row for r in records] == [1, 3, 4]  # JSONL rows are line numbers
    assert len(load_records(path, "sft", limit=2)) == 2


# ---- errors: file, row and field are named -------------------------------------------------------------


@pytest.mark.parametrize("bad_row, message", [
    ({"prompt": "2+3"}, r"bad\.jsonl, row 3, field 'completion': missing"),
    ({"completion": "5"}, r"bad\.jsonl, row 3, field 'prompt': missing"),
    ({"prompt": "2+3", "completion": 5}, r"bad\.jsonl, row 3, field 'completion': must be a non-empty string \(got int 5\)"),
    ({"prompt": "2+3", "completion": ""}, r"bad\.jsonl, row 3, field 'completion': must be a non-empty string \(got ''\)"),
    ({"question": "2+3", "answer": "5"}, r"bad\.jsonl, row 3: no SFT form: expected fields 'prompt'\+'completion', 'messages' or 'text' \(found: 'question', 'answer'\)"),
    ({"text": "a", "messages": [{"role": "assistant", "content": "b"}]}, r"bad\.jsonl, row 3: fields of more than one SFT form"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"bad\.jsonl, row 3, field 'messages\[0\]\.role': must be one of"),
    ({"messages": [{"role": "user", "content": "x"}]}, r"bad\.jsonl, row 3, field 'messages': needs at least one assistant message"),
    ({"messages": [{"role": "assistant", "content": 3}]}, r"field 'messages\[0\]\.content': must be a string \(got int 3\)"),
    ({"text": ""}, r"bad\.jsonl, row 3, field 'text': must be a non-empty string"),
])
def test_sft_row_errors(tmp_path, bad_row, message):
    path = write_jsonl([SFT_ROWS[0], SFT_ROWS[2], bad_row], tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=message):
        load_records(path, "sft")


def test_invalid_json_line(tmp_path):
    path = _write_jsonl_lines(tmp_path / "bad.jsonl", [json.dumps(SFT_ROWS[0])] * 2 + ['{"prompt": "a" "completion": "b"}'])
    with pytest.raises(DataError, match=r"bad\.jsonl, row 3: invalid JSON \(Expecting ',' delimiter"):
        load_records(path, "sft")


def test_row_that_is_not_an_object(tmp_path):
    path = _write_jsonl_lines(tmp_path / "bad.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"bad\.jsonl, row 1: expected an object with named fields \(got list"):
        load_records(path, "sft")


@pytest.mark.parametrize("bad_row, message", [
    ({"prompt": "q", "chosen": "a", "rejected": ""}, r"bad\.jsonl, row 2, field 'rejected': must be a non-empty string or a list of chat messages \(got ''\)"),
    ({"prompt": "q", "chosen": "a"}, r"bad\.jsonl, row 2, field 'rejected': missing"),
    ({"prompt": "q", "chosen": [], "rejected": "b"}, r"bad\.jsonl, row 2, field 'chosen': must be a non-empty list"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, r"field 'chosen': needs at least one assistant"),
])
def test_preference_row_errors(tmp_path, bad_row, message):
    path = write_jsonl([PAIRS[0], bad_row], tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=message):
        load_records(path, "preference")


def test_prompt_row_with_completion_field_is_refused(tmp_path):
    path = write_jsonl([{"prompt": "q", "completion": "x"}], tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"bad\.jsonl, row 1, field 'completion': not allowed in a prompt row"):
        load_records(path, "prompt")


def test_errors_in_other_formats_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": ""}]),
                   tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet, row 2, field 'completion'"):
        load_records(tmp_path / "bad.parquet", "sft")
    (tmp_path / "bad.csv").write_text("prompt,completion\na,b\nc,\n")
    with pytest.raises(DataError, match=r"bad\.csv, row 2, field 'completion': must be a non-empty string \(got ''\)"):
        load_records(tmp_path / "bad.csv", "sft")
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "ok"}, {"text": 1}]))
    with pytest.raises(DataError, match=r"bad\.json, row 2, field 'text'"):
        load_records(tmp_path / "bad.json", "sft")


def test_missing_file_unknown_format_and_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_records(tmp_path / "nope.jsonl", "sft")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match=r"data\.txt: unsupported format '\.txt'; supported: \.jsonl, \.json, \.parquet, \.csv"):
        load_records(tmp_path / "data.txt", "sft")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"not a datasets\.save_to_disk directory"):
        load_records(tmp_path / "empty_dir", "sft")
    with pytest.raises(ValueError, match="unknown record kind"):
        load_records(tmp_path / "data.txt", "dpo")


# ---- split ---------------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_ordered():
    items = list(range(100))
    train, held = split_records(items, eval_fraction=0.1, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train + held) == items and train == sorted(train) and held == sorted(held)
    assert split_records(items, eval_fraction=0.1, seed=3) == (train, held)
    assert split_records(items, eval_fraction=0.1, seed=4)[1] != held
    assert split_records(items, eval_fraction=0.0, seed=3) == (items, [])
    assert len(split_records(items[:3], eval_fraction=0.01, seed=0)[1]) == 1  # at least one held out
