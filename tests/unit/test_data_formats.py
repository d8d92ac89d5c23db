"""Every TRL dataset type, standard and conversational, read as TRL reads it and rendered with a real chat
template: no turn twice, datasets' null message keys, ShareGPT, implicit prompts, no chat template."""

import pytest

from alignkit.data import (
    DataError,
    PreferenceRecord,
    PromptRecord,
    SFTRecord,
    load_records,
    render_preference,
    render_prompt,
    render_sft,
    write_jsonl,
)
from alignkit.data.schemas import drop_repeated_prompt
from alignkit.models.tiny import build_tiny_tokenizer


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def masked_text(tok, ex):
    return tok.decode([i for i, m in zip(ex.input_ids, ex.response_mask) if m])


def load_one(tmp_path, row, kind):
    (rec,) = load_records(write_jsonl([row], tmp_path / "d.jsonl"), kind)
    return rec


# ---- the TRL table: language modeling, prompt-only, prompt-completion, preference ----------------------


def test_language_modeling_standard_and_conversational(tmp_path, tok):
    text = load_one(tmp_path, {"text": "The sky is blue."}, "sft")
    assert text.form == "text" and masked_text(tok, render_sft(tok, text)) == "The sky is blue." + tok.eos_token
    conv = load_one(tmp_path, {"messages": [user("What color is the sky?"), assistant("It is blue.")]}, "sft")
    assert conv.form == "messages" and masked_text(tok, render_sft(tok, conv)) == "It is blue." + tok.eos_token


def test_prompt_only_standard_and_conversational(tmp_path, tok):
    std = load_one(tmp_path, {"prompt": "The sky is"}, "prompt")
    conv = load_one(tmp_path, {"prompt": [user("The sky is")]}, "prompt")
    assert isinstance(std, PromptRecord) and render_prompt(tok, std) == render_prompt(tok, conv)


def test_prompt_completion_conversational_completion_is_a_list(tmp_path, tok):
    std = load_one(tmp_path, {"prompt": "What color is the sky?", "completion": "It is blue."}, "sft")
    conv = load_one(tmp_path, {"prompt": [user("What color is the sky?")],
                               "completion": [assistant("It is blue.")]}, "sft")
    assert conv.completion == [assistant("It is blue.")] and conv.form == "prompt_completion"
    assert render_sft(tok, conv) == render_sft(tok, std)
    assert masked_text(tok, render_sft(tok, conv)) == "It is blue." + tok.eos_token


def test_preference_explicit_prompt_standard_and_conversational(tmp_path, tok):
    std = load_one(tmp_path, {"prompt": "Sky?", "chosen": "blue", "rejected": "green"}, "preference")
    conv = load_one(tmp_path, {"prompt": [user("Sky?")], "chosen": [assistant("blue")],
                               "rejected": [assistant("green")]}, "preference")
    assert render_preference(tok, std) == render_preference(tok, conv)


def test_preference_implicit_prompt_conversational(tmp_path, tok):
    rec = load_one(tmp_path, {"chosen": [user("What color is the sky?"), assistant("It is blue.")],
                              "rejected": [user("What color is the sky?"), assistant("It is green.")]}, "preference")
    assert rec.prompt == [user("What color is the sky?")]
    assert rec.chosen == [assistant("It is blue.")] and rec.rejected == [assistant("It is green.")]
    chosen, rejected = render_preference(tok, rec)
    assert tok.decode(chosen.input_ids).count("What color is the sky?") == 1
    assert masked_text(tok, rejected) == "It is green." + tok.eos_token


def test_preference_implicit_prompt_multi_turn_keeps_the_shared_history(tmp_path):
    history = [user("hi"), assistant("hey"), user("2+2?")]
    rec = load_one(tmp_path, {"chosen": history + [assistant("4")], "rejected": history + [assistant("5")]},
                   "preference")
    assert rec.prompt == history and rec.chosen == [assistant("4")]


def test_preference_implicit_prompt_standard_splits_like_trl(tmp_path):
    # TRL's extract_prompt: the shared leading text; the space before the split goes with the responses
    rec = load_one(tmp_path, {"chosen": "The sky is blue.", "rejected": "The sky is green."}, "preference")
    assert (rec.prompt, rec.chosen, rec.rejected) == ("The sky is", " blue.", " green.")


@pytest.mark.parametrize("row, message", [
    ({"chosen": "blue", "rejected": "green"}, r"row 1: no 'prompt' field, and 'chosen' and 'rejected' share no leading text"),
    ({"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]}, r"share no leading messages"),
    ({"chosen": "Sky: blue", "rejected": [user("Sky:"), assistant("green")]}, r"not both strings or both chat messages"),
    ({"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]},
     r"row 1, field 'chosen': nothing to learn from after the prompt"),
    ({"prompt": "q", "completion": "a", "label": True}, r"unpaired preference row .* KTO"),
])
def test_implicit_prompt_and_unpaired_errors(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_one(tmp_path, row, "preference")


# ---- never a turn twice --------------------------------------------------------------------------------


ULTRAFEEDBACK = {  # trl-lib / HuggingFaceH4 ultrafeedback_binarized: a string prompt AND full conversations
    "prompt": "What color is the sky?",
    "chosen": [user("What color is the sky?"), assistant("It is blue.")],
    "rejected": [user("What color is the sky?"), assistant("It is green.")],
    "score_chosen": 8.0, "score_rejected": 3.0,
}


def test_ultrafeedback_shape_renders_the_user_turn_once(tmp_path, tok):
    rec = load_one(tmp_path, ULTRAFEEDBACK, "preference")
    assert rec.prompt == "What color is the sky?" and rec.chosen == [assistant("It is blue.")]
    assert rec.extra == {"score_chosen": 8.0, "score_rejected": 3.0}
    chosen, rejected = render_preference(tok, rec)
    for ex in (chosen, rejected):
        assert tok.decode(ex.input_ids).count("What color is the sky?") == 1
    explicit = render_preference(tok, {"prompt": "What color is the sky?", "chosen": "It is blue.",
                                       "rejected": "It is green."})
    assert (chosen, rejected) == explicit


def test_prompt_messages_that_prefix_chosen_render_once(tmp_path, tok):
    prompt = [{"role": "system", "content": "be brief"}, user("2+2?")]
    row = {"prompt": prompt, "chosen": prompt + [assistant("4")], "rejected": [assistant("5")]}
    rec = load_one(tmp_path, row, "preference")
    assert rec.chosen == [assistant("4")] and rec.rejected == [assistant("5")]
    chosen, _ = render_preference(tok, rec)
    assert tok.decode(chosen.input_ids).count("2+2?") == 1 and masked_text(tok, chosen) == "4" + tok.eos_token


def test_sft_completion_that_repeats_the_prompt_renders_once(tmp_path, tok):
    rec = load_one(tmp_path, {"prompt": "2+2?", "completion": [user("2+2?"), assistant("4")]}, "sft")
    assert rec.completion == [assistant("4")]
    assert tok.decode(render_sft(tok, rec).input_ids).count("2+2?") == 1


def test_records_built_in_code_render_once_too(tok):
    doubled = PreferenceRecord(prompt="q?", chosen=[user("q?"), assistant("a")], rejected="b")
    chosen, rejected = render_preference(tok, doubled)
    assert tok.decode(chosen.input_ids).count("q?") == 1 and masked_text(tok, chosen) == "a" + tok.eos_token
    sft = SFTRecord(prompt=[user("q?")], completion=[user("q?"), assistant("a")])
    assert tok.decode(render_sft(tok, sft).input_ids).count("q?") == 1


def test_drop_repeated_prompt_leaves_other_responses_alone():
    assert drop_repeated_prompt("q", "q and more") == "q and more"  # strings are never cut
    assert drop_repeated_prompt("q", [assistant("a")]) == [assistant("a")]
    assert drop_repeated_prompt(" q ", [user("q"), assistant("a")]) == [assistant("a")]  # whitespace-insensitive
    assert drop_repeated_prompt("q", [user("q")]) == [user("q")]  # nothing after it: left to validation


def test_a_response_that_starts_with_another_user_turn_is_an_error(tmp_path):
    row = {"prompt": "What color is the sky?", "chosen": [user("Something else"), assistant("a")], "rejected": "b"}
    with pytest.raises(DataError, match=r"row 1, field 'chosen': starts with a 'user' message that does not "
                                        r"repeat 'prompt'"):
        load_one(tmp_path, row, "preference")


# ---- messages as datasets and ShareGPT write them ------------------------------------------------------


def test_null_message_keys_from_datasets_are_dropped(tmp_path, tok):
    import datasets

    rows = [{"messages": [user("hi"), {"role": "assistant", "content": "hello", "tool_calls": None}]},
            {"messages": [user("2+2?"), assistant("4")]}]
    ds = datasets.Dataset.from_list(rows)  # datasets unifies the struct: every message gets every key
    assert ds[1]["messages"][0] == {"role": "user", "content": "2+2?", "tool_calls": None}
    ds.save_to_disk(str(tmp_path / "ds"))
    records = load_records(tmp_path / "ds", "sft")
    assert [r.messages for r in records] == [[user("hi"), assistant("hello")], [user("2+2?"), assistant("4")]]
    assert masked_text(tok, render_sft(tok, records[1])) == "4" + tok.eos_token


def test_a_message_key_with_a_value_is_still_an_error(tmp_path):
    row = {"messages": [user("hi"), {"role": "assistant", "content": "hello", "name": "bot", "tool_calls": None}]}
    with pytest.raises(DataError, match=r"row 1, field 'messages\[1\]': unknown key\(s\) \['name'\]"):
        load_one(tmp_path, row, "sft")


def test_sharegpt_from_value_messages(tmp_path):
    rec = load_one(tmp_path, {"messages": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                           {"from": "gpt", "value": "a"}]}, "sft")
    assert rec.messages == [{"role": "system", "content": "s"}, user("q"), assistant("a")]
    with pytest.raises(DataError, match=r"field 'messages\[0\]\.from': must be one of \['human', 'gpt'"):
        load_one(tmp_path, {"messages": [{"from": "function_call", "value": "x"}]}, "sft")


# ---- no chat template -----------------------------------------------------------------------------------


def test_no_chat_template_text_renders_the_rest_say_what_to_set():
    t = build_tiny_tokenizer()
    t.chat_template = None
    assert render_sft(t, {"text": "plain"}).response_mask  # text needs no template
    message = r"^the tokenizer has no chat template: set model\.chat_template \(a Jinja file or string\)$"
    for call in (lambda: render_sft(t, {"messages": [user("q"), assistant("a")]}),
                 lambda: render_sft(t, {"prompt": "q", "completion": "a"}),
                 lambda: render_prompt(t, "q"),
                 lambda: render_preference(t, {"prompt": "q", "chosen": "a", "rejected": "b"})):
        with pytest.raises(ValueError, match=message):
            call()
