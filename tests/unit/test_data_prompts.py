"""RL prompt pools: a non-integer level is just a field, an empty pool is an error (not a spin), and an
over-long prompt names its file, row, field and the real config options."""

import pytest

from alignkit.data import DataError, write_jsonl
from alignkit.data.prompts import PromptDataSection, PromptSampler, load_prompts, pool_level


def test_non_integer_levels_are_ordinary_fields(tmp_path, tok):
    rows = [{"prompt": "a", "answer": "1", "level": 1}, {"prompt": "b", "answer": "2", "level": "hard"},
            {"prompt": "c", "answer": "3", "level": 2.5}, {"prompt": "d", "answer": "4", "level": "2"},
            {"prompt": "e", "answer": "5"}, {"prompt": "f", "answer": "6", "level": {"name": "x"}},
            {"prompt": "g", "answer": "7", "level": True}]
    cfg = PromptDataSection(train_file=str(write_jsonl(rows, tmp_path / "rl.jsonl")))
    pools, held_out, dropped = load_prompts(cfg, tok)
    assert {lv: [p for _, p, _ in pool] for lv, pool in pools.items()} == {0: ["b", "c", "e", "f", "g"], 1: ["a"], 2: ["d"]}
    fields = {p: f for pool in pools.values() for _, p, f in pool}
    assert fields["b"] == {"answer": "2", "level": "hard"} and fields["d"]["level"] == "2"  # passed on unchanged
    assert held_out == [] and dropped == 0
    sampler = PromptSampler(pools, seed=0)
    assert len(sampler.draw(6)) == 6 and {p for _, p, _ in sampler.draw(4, 0)} <= {"b", "c", "e", "f", "g"}


def test_pool_level():
    assert [pool_level({"level": v}) for v in (3, "4", " 5 ", "-1", "x", 1.0, None, False)] == [3, 4, 5, -1, 0, 0, 0, 0]


def test_empty_pool_raises_instead_of_spinning():
    with pytest.raises(ValueError, match=r"cannot draw 4 prompts: no prompts at all"):
        PromptSampler({}, seed=0).draw(4)
    sampler = PromptSampler({1: [([1], "p", {})]}, seed=0)
    with pytest.raises(ValueError, match=r"cannot draw 2 prompts: no prompts at level 3 \(pools: \[1\]\)"):
        sampler.draw(2, 3)
    with pytest.raises(ValueError, match=r"no prompts at level 2"):
        PromptSampler({2: []}, seed=0).draw(1, 2)
    assert sampler.draw(0, 3) == [] and len(sampler.draw(3, 1)) == 3


def test_over_long_prompt_names_file_row_field_and_options(tmp_path, tok):
    path = write_jsonl([{"prompt": "short", "answer": "1"}, {"prompt": "x" * 80, "answer": "2"}], tmp_path / "rl.jsonl")
    cfg = PromptDataSection(train_file=str(path), max_prompt_length=32)  # 80 x + <|user|> <|end|> <|assistant|>
    with pytest.raises(DataError) as err:
        load_prompts(cfg, tok)
    assert str(err.value) == (f"{path}, row 2, field 'prompt': 83 tokens with the chat template, longer than "
                              "data.max_prompt_length=32; raise data.max_prompt_length or set data.on_overflow=drop")
    assert set(PromptDataSection.model_fields) >= {"max_prompt_length", "on_overflow"}  # the options named exist
    pools, _, dropped = load_prompts(cfg.model_copy(update={"on_overflow": "drop"}), tok)
    assert dropped == 1 and [p for _, p, _ in pools[0]] == ["short"]
    with pytest.raises(DataError, match=r"rl\.jsonl: no prompt left: all 1 are longer than data\.max_prompt_length=4"):
        load_prompts(PromptDataSection(train_file=str(write_jsonl([{"prompt": "x" * 80}], path)),
                                       max_prompt_length=4, on_overflow="drop"), tok)


def test_synthetic_over_long_prompt_names_the_synthetic_source(tok):
    with pytest.raises(DataError, match=r"^<synthetic arithmetic>, row 1, field 'prompt': \d+ tokens .* "
                                        r"data\.max_prompt_length=2;"):
        load_prompts(PromptDataSection(n_train=4, n_eval=1, max_prompt_length=2), tok)


def test_prompt_section_split_and_columns(tmp_path, tok):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"question": "2+3", "gold": "5", "level": 1}]),
                          "test": datasets.Dataset.from_list([{"question": "1+1", "gold": "2"}])}
                         ).save_to_disk(str(tmp_path / "dd"))
    cfg = PromptDataSection(train_file=str(tmp_path / "dd"), eval_file=str(tmp_path / "dd"), split="train",
                            eval_split="test", columns={"question": "prompt", "gold": "answer"})
    pools, held_out, _ = load_prompts(cfg, tok)
    assert [(p, f) for _, p, f in pools[1]] == [("2+3", {"answer": "5", "level": 1})]
    assert [(h.question, h.answer) for h in held_out] == [("1+1", "2")]


def test_render_many_names_the_row_of_a_bare_prompt(tok):
    from alignkit.data import render_many

    with pytest.raises(DataError, match=r"^<records>, row 2: example is \d+ tokens, longer than max_length=20; "
                                        r"raise max_length or set on_overflow='drop' \(a prompt is never truncated\)$"):
        render_many(tok, ["2+3", "9" * 40], kind="prompt", max_length=20)
