"""Where rows come from: column mapping, splits, Hub datasets (monkeypatched: no network in tests), files
that are not UTF-8 or hold no rows. Every failure is one line naming the file or dataset."""

import json
import os
import subprocess
import sys

import pytest

from alignkit.data import DataError, SFTRecord, load_records, write_jsonl
from alignkit.data.loading import is_hub_name
from alignkit.data.source import DataSourceFields

ROWS = [{"prompt": "2+3", "completion": "5"}, {"prompt": "1+1", "completion": "2"}]


# ---- columns --------------------------------------------------------------------------------------------


def test_columns_map_other_names_onto_the_forms(tmp_path):
    path = write_jsonl([{"question": "2+3", "response": "5", "id": 7}], tmp_path / "q.jsonl")
    (rec,) = load_records(path, "sft", columns={"question": "prompt", "response": "completion"})
    assert (rec.prompt, rec.completion, rec.extra) == ("2+3", "5", {"id": 7})
    (rl,) = load_records(path, "prompt", columns={"question": "prompt", "response": "answer"})
    assert rl.prompt == "2+3" and rl.extra == {"answer": "5", "id": 7}


def test_sharegpt_conversations_column(tmp_path):
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = write_jsonl([row], tmp_path / "sharegpt.jsonl")
    with pytest.raises(DataError, match=r"no SFT form.*found: 'conversations'.*data\.columns"):
        load_records(path, "sft")
    (rec,) = load_records(path, "sft", columns={"conversations": "messages"})
    assert rec.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_column_errors(tmp_path):
    path = write_jsonl([{"question": "q", "prompt": "p", "completion": "c"}], tmp_path / "c.jsonl")
    with pytest.raises(DataError, match=r"c\.jsonl, row 1: column\(s\) \['query'\] of data\.columns not found "
                                        r"\(the row has \['completion', 'prompt', 'question'\]\)"):
        load_records(path, "sft", columns={"query": "prompt"})
    with pytest.raises(DataError, match=r"row 1: data\.columns maps 'question' onto 'prompt', but the row has a "
                                        r"'prompt' column too"):
        load_records(path, "sft", columns={"question": "prompt"})
    (rec,) = load_records(path, "sft", columns={"question": "prompt", "prompt": "original"})  # a swap is fine
    assert rec.prompt == "q" and rec.extra == {"original": "p"}
    with pytest.raises(ValueError, match=r"several columns onto \['prompt'\]"):
        load_records(path, "sft", columns={"question": "prompt", "query": "prompt"})


def test_data_source_fields_validate_columns():
    from pydantic import ValidationError

    assert DataSourceFields(split="train", columns={"q": "prompt"}).columns == {"q": "prompt"}
    with pytest.raises(ValidationError, match="several columns onto"):
        DataSourceFields(columns={"a": "prompt", "b": "prompt"})


# ---- splits ---------------------------------------------------------------------------------------------


def test_a_single_file_is_the_train_split(tmp_path):
    path = write_jsonl(ROWS, tmp_path / "t.jsonl")
    assert len(load_records(path, "sft", split="train")) == 2
    with pytest.raises(DataError, match=r"t\.jsonl: split='test': a single file has one split, 'train'"):
        load_records(path, "sft", split="test")


def test_saved_dataset_dict_split_and_columns(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"q": "a", "a": "b"}] * 3),
                          "test": datasets.Dataset.from_list([{"q": "c", "a": "d"}])}).save_to_disk(str(tmp_path / "dd"))
    (rec,) = load_records(tmp_path / "dd", "sft", split="test", columns={"q": "prompt", "a": "completion"})
    assert (rec.prompt, rec.completion, rec.row) == ("c", "d", 1)


# ---- Hub datasets ---------------------------------------------------------------------------------------


def test_hub_names_and_local_paths():
    assert is_hub_name("trl-lib/ultrafeedback_binarized") and is_hub_name("gsm8k")
    assert is_hub_name("HuggingFaceTB/smoltalk2.v1")
    assert not is_hub_name("data/train.jsonl") and not is_hub_name("./x") and not is_hub_name("/abs/path")
    assert not is_hub_name("a/b/c") and not is_hub_name("train.parquet")


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset replaced: 'owner/prefs' has train and test splits; every call is recorded."""
    import datasets

    calls = []
    splits = {"train": [{"question": f"q{i}", "answer": str(i)} for i in range(3)], "test": [{"question": "t", "answer": "0"}]}

    def load_dataset(name, split=None, **kw):
        calls.append((name, split))
        if name != "owner/prefs":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")
        if split is None:
            return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
        if split not in splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(splits)}.')
        return datasets.Dataset.from_list(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_dataset_split_and_columns(fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local 'owner/prefs'
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # only a failure to reach the Hub is reported as offline
    records = load_records("owner/prefs", "prompt", split="train", columns={"question": "prompt"})
    assert [r.prompt for r in records] == ["q0", "q1", "q2"] and records[0].source == "owner/prefs"
    assert records[2].row == 3 and records[0].extra == {"answer": "0"}
    assert fake_hub == [("owner/prefs", "train")]
    with pytest.raises(DataError, match=r"^owner/prefs: a DatasetDict needs split=one of \['test', 'train'\]$"):
        load_records("owner/prefs", "prompt", columns={"question": "prompt"})
    with pytest.raises(DataError, match=r"^owner/prefs: not a local path, so read as a Hugging Face Hub dataset, "
                                        r"which failed: ValueError: Unknown split \"dev\""):
        load_records("owner/prefs", "prompt", split="dev")
    with pytest.raises(DataError, match=r"^nobody/nothing: .*FileNotFoundError: Dataset 'nobody/nothing' doesn't exist"):
        load_records("nobody/nothing", "sft")
    with pytest.raises(FileNotFoundError, match=r"data file not found: nope\.jsonl"):
        load_records("nope.jsonl", "sft")


def test_a_local_directory_wins_over_a_hub_name(fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    write_jsonl(ROWS, tmp_path / "owner" / "prefs.jsonl")
    assert len(load_records("owner/prefs.jsonl", "sft")) == 2 and fake_hub == []


def test_hub_unreachable_and_offline_are_one_line(monkeypatch, tmp_path):
    import datasets

    def unreachable(name, split=None, **kw):  # what datasets 4/5 raise, offline or without a network
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DataError, match=r"^owner/x: .*but the Hub cannot be reached \(ConnectionError: Couldn't "
                                        r"reach 'owner/x' on the Hub .*\); check the network, or give a local file$"):
        load_records("owner/x", "sft", split="train")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_records("owner/x", "sft", split="train")
    assert str(err.value) == ("owner/x: not a local path, so read as a Hugging Face Hub dataset, but the Hub is "
                              "offline (HF_HUB_OFFLINE=1) and the dataset is not in the local cache; load it once "
                              "online, or give a local file")


def test_offline_message_with_the_real_datasets(tmp_path):
    """The real datasets.load_dataset with HF_HUB_OFFLINE=1 (read at import, hence a fresh process)."""
    code = ("from alignkit.data import load_records\n"
            "try:\n    load_records('alignkit-test/absent', 'sft', split='train')\n"
            "except Exception as e:\n    print(type(e).__name__, '|', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120).stdout.strip()
    assert out == ("DataError | alignkit-test/absent: not a local path, so read as a Hugging Face Hub dataset, "
                   "but the Hub is offline (HF_HUB_OFFLINE=1) and the dataset is not in the local cache; load it "
                   "once online, or give a local file")


# ---- files that are not UTF-8, or empty -----------------------------------------------------------------


def test_not_utf8_names_file_and_row(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError) as err:
        load_records(path, "sft")
    assert str(err.value) == (f"{path}, row 2: not UTF-8 text: byte 0xe9 at column 14 cannot be decoded; "
                              "save the file as UTF-8")
    for name in ("latin1.csv", "latin1.json"):
        body = "prompt,completion\na,b\ncaf\xe9,c\n" if name.endswith("csv") else '[{"text": "caf\xe9"}]'
        (tmp_path / name).write_bytes(body.encode("latin-1"))
        line = 3 if name.endswith("csv") else 1
        with pytest.raises(DataError, match=rf"{name}: not UTF-8 text: byte 0xe9 at line {line} cannot be decoded"):
            load_records(tmp_path / name, "sft")


def test_utf8_with_bom_reads(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert load_records(path, "sft") == [SFTRecord(prompt="2+3", completion="5")]


@pytest.mark.parametrize("name, body", [("e.jsonl", ""), ("blank.jsonl", "\n\n  \n"), ("e.json", "[]"),
                                        ("e2.json", ""), ("e.csv", "prompt,completion\n")])
def test_no_rows_is_an_error_naming_the_file(tmp_path, name, body):
    (tmp_path / name).write_text(body)
    with pytest.raises(DataError) as err:
        load_records(tmp_path / name, "sft")
    assert str(err.value) == f"{tmp_path / name}: no rows: the data is empty"
    assert load_records(tmp_path / name, "sft", limit=0) == []


def test_empty_parquet_and_hub_split(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match=r"empty\.parquet: no rows: the data is empty$"):
        load_records(tmp_path / "empty.parquet", "sft")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None: datasets.Dataset.from_dict({"text": []}))
    with pytest.raises(DataError, match=r"^owner/empty: no rows: the data is empty$"):
        load_records("owner/empty", "sft", split="train")


# ---- the recipes' data sections take the source fields and pass them on -------------------------------


def test_recipe_data_sections_pass_split_and_columns(fake_hub, tmp_path, monkeypatch):
    from alignkit.recipes import dpo, rejection_sampling, reward_model, sft

    monkeypatch.chdir(tmp_path)
    for section in (sft.DataSection, dpo.DataSection, reward_model.DataSection, rejection_sampling.PromptsSection):
        assert issubclass(section, DataSourceFields)
    cfg = sft.DataSection(train_file="owner/prefs", eval_file="owner/prefs", split="train", eval_split="test",
                          columns={"question": "prompt", "answer": "completion"})
    train, held_out, _ = sft.load_data(cfg, seed=0)
    assert [r.prompt for r in train] == ["q0", "q1", "q2"] and [r.prompt for r in held_out] == ["t"]
    assert fake_hub == [("owner/prefs", "train"), ("owner/prefs", "test")]
    prompts = rejection_sampling.load_prompt_records(rejection_sampling.PromptsSection(
        train_file="owner/prefs", split="test", columns={"question": "prompt"}))
    assert prompts == [{"answer": "0", "prompt": "t"}]
    path = write_jsonl([{"q": "2+2", "good": "4", "bad": "5"}], tmp_path / "p.jsonl")
    for recipe in (dpo, reward_model):
        section = recipe.DataSection(train_file=str(path), eval_file=str(path),
                                     columns={"q": "prompt", "good": "chosen", "bad": "rejected"})
        train, held_out = recipe.load_data(section, seed=0)
        assert [(r.prompt, r.chosen, r.rejected) for r in train + held_out] == [("2+2", "4", "5")] * 2
