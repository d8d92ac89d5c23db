"""Chat rendering: response masks cover exactly the targets (completion / assistant turns + EOS)."""

import logging

import pytest
import torch

from alignkit.data import (
    DataError,
    RenderedExample,
    pad_batch,
    parse_prompt,
    parse_sft,
    render_many,
    render_preference,
    render_prompt,
    render_sft,
)
from alignkit.models.tiny import build_tiny_tokenizer

# ChatML (Qwen-style): the assistant turn ends with "<|im_end|>\n", not with the tokenizer's EOS.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# EOS then a newline after assistant turns: the newline is input but not a target.
EOS_NEWLINE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}\n{% else %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Not prefix-stable: the message count is written first, so earlier renderings are no prefix.
UNSTABLE = "{{ messages|length }}" + EOS_NEWLINE


def _tok_with(template):
    t = build_tiny_tokenizer()
    t.chat_template = template
    return t


def masked_text(tok, ex: RenderedExample) -> str:
    return tok.decode([i for i, m in zip(ex.input_ids, ex.response_mask) if m])


def masked_runs(tok, ex: RenderedExample) -> list[str]:
    """Decoded maximal runs of mask-1 tokens."""
    runs, cur = [], []
    for i, m in zip(ex.input_ids + [None], ex.response_mask + [0]):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


def test_prompt_completion_mask_is_completion_plus_eos(tok):
    completion = "<think>12*3=36 36+7=43</think><answer>43</answer>"
    ex = render_sft(tok, {"prompt": "12*3+7", "completion": completion})
    assert masked_runs(tok, ex) == [completion + tok.eos_token]
    prompt_ids = render_prompt(tok, "12*3+7")
    n = len(prompt_ids)
    assert ex.input_ids[:n] == prompt_ids and ex.response_mask[:n] == [0] * n  # prompt + generation prompt: 0
    assert ex.response_mask[n:] == [1] * (len(ex) - n) and ex.input_ids[-1] == tok.eos_token_id
    conversation = [{"role": "user", "content": "12*3+7"}, {"role": "assistant", "content": completion}]
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(conversation, tokenize=False)


def test_messages_mask_only_assistant_turns(tok):
    messages = [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2 done"},
    ]
    ex = render_sft(tok, {"messages": messages})
    assert masked_runs(tok, ex) == ["a1" + tok.eos_token, "a2 done" + tok.eos_token]
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(messages, tokenize=False)


def test_text_form_all_tokens_plus_eos(tok):
    ex = render_sft(tok, {"text": "hello world"})
    assert tok.decode(ex.input_ids) == "hello world" + tok.eos_token
    assert ex.response_mask == [1] * len(ex)


def test_render_prompt_ends_with_generation_prompt(tok):
    messages = [{"role": "user", "content": "2+3"}]
    ids = render_prompt(tok, "2+3")
    without = tok.encode(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    with_gen = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)
    assert ids == with_gen and len(ids) > len(without) and ids[: len(without)] == without
    assert tok.decode(ids).endswith("<|assistant|>")
    assert render_prompt(tok, messages) == ids == render_prompt(tok, {"prompt": "2+3", "answer": "5"})


def test_preference_shares_prompt_prefix(tok):
    chosen, rejected = render_preference(tok, {"prompt": "2+2", "chosen": "4", "rejected": "five"})
    n = len(render_prompt(tok, "2+2"))
    assert chosen.input_ids[:n] == rejected.input_ids[:n] == render_prompt(tok, "2+2")
    assert masked_text(tok, chosen) == "4" + tok.eos_token and masked_text(tok, rejected) == "five" + tok.eos_token
    # a conversational prompt's earlier assistant turn is context, not a target
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
               {"role": "user", "content": "2+2"}]
    chosen, _ = render_preference(tok, {"prompt": history, "chosen": [{"role": "assistant", "content": "4"}],
                                        "rejected": "5"})
    assert masked_runs(tok, chosen) == ["4" + tok.eos_token]


def test_template_without_eos_gets_eos_appended():
    t = _tok_with(CHATML)
    ex = render_sft(t, {"prompt": "2+3", "completion": "5"})
    assert masked_runs(t, ex) == ["5<|im_end|>\n" + t.eos_token]
    two = render_sft(t, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})
    assert masked_runs(t, two) == ["b<|im_end|>\n", "d<|im_end|>\n" + t.eos_token]
    assert t.decode(render_prompt(t, "2+3")).endswith("<|im_start|>assistant\n")


def test_tokens_after_eos_in_a_turn_are_not_targets():
    t = _tok_with(EOS_NEWLINE)
    ex = render_sft(t, {"prompt": "2+3", "completion": "5"})
    assert masked_runs(t, ex) == ["5" + t.eos_token]
    assert t.decode(ex.input_ids).endswith(t.eos_token + "\n") and ex.response_mask[-1] == 0


def test_template_that_is_not_prefix_stable_is_an_error():
    with pytest.raises(ValueError, match="not prefix-stable"):
        render_sft(_tok_with(UNSTABLE), {"prompt": "2+3", "completion": "5"})


def test_missing_chat_template_is_an_error():
    with pytest.raises(ValueError, match="no chat template"):
        render_sft(_tok_with(None), {"prompt": "2+3", "completion": "5"})


def test_overflow_error_drop_truncate(tok, caplog):
    rec = parse_sft({"prompt": "2+3", "completion": "x" * 50}, source="data/train.jsonl", row=7)
    full = render_sft(tok, rec)
    with pytest.raises(DataError, match=r"data/train\.jsonl, row 7: example is \d+ tokens, longer than max_length=20"):
        render_sft(tok, rec, max_length=20)
    assert render_sft(tok, rec, max_length=20, on_overflow="drop") is None
    cut = render_sft(tok, rec, max_length=20, on_overflow="truncate")
    assert cut.input_ids == full.input_ids[:20] and cut.response_mask == full.response_mask[:20]
    assert render_sft(tok, rec, max_length=3, on_overflow="truncate") is None  # no target left
    assert render_sft(tok, rec, max_length=len(full)) == full
    long_prompt = parse_prompt({"prompt": "a long prompt", "answer": "1"}, source="rl.jsonl", row=9)
    with pytest.raises(DataError, match=r"rl\.jsonl, row 9: example is"):
        render_prompt(tok, long_prompt, max_length=5)
    assert render_prompt(tok, long_prompt, max_length=5, on_overflow="drop") is None

    rows = [{"prompt": "1+1", "completion": "2"}, {"prompt": "2+3", "completion": "x" * 50}]
    with pytest.raises(DataError, match=r"<records>, row 2: example is"):
        render_many(tok, rows, max_length=20)
    with caplog.at_level(logging.WARNING, logger="alignkit.data.chat"):
        kept, dropped = render_many(tok, rows, max_length=20, on_overflow="drop")
    assert len(kept) == 1 and dropped == 1 and "dropped 1 of 2" in caplog.text
    prompts, dropped = render_many(tok, ["2+3", "9" * 40], kind="prompt", max_length=20, on_overflow="drop")
    assert prompts == [render_prompt(tok, "2+3")] and dropped == 1
    pairs, _ = render_many(tok, [{"prompt": "q", "chosen": "a", "rejected": "b"}], kind="preference")
    assert masked_text(tok, pairs[0][1]) == "b" + tok.eos_token


def test_pad_batch_right_and_left(tok):
    a = render_sft(tok, {"prompt": "1+1", "completion": "2"})
    b = render_sft(tok, {"prompt": "10+10", "completion": "20"})
    right = pad_batch([a, b], pad_token_id=tok.pad_token_id)
    T = max(len(a), len(b))
    assert all(v.shape == (2, T) and v.dtype == torch.long for v in right.values())
    assert right["input_ids"][0, : len(a)].tolist() == a.input_ids
    assert right["input_ids"][0, len(a):].eq(tok.pad_token_id).all()
    assert right["attention_mask"][0].tolist() == [1] * len(a) + [0] * (T - len(a))
    assert right["response_mask"][0].tolist() == a.response_mask + [0] * (T - len(a))

    left = pad_batch([render_prompt(tok, "1+1"), render_prompt(tok, "100+100")], pad_token_id=0, side="left")
    short = render_prompt(tok, "1+1")
    assert left["input_ids"][0, -len(short):].tolist() == short
    assert left["attention_mask"][0].tolist() == [0] * (left["input_ids"].shape[1] - len(short)) + [1] * len(short)
    assert left["response_mask"].sum() == 0
    with pytest.raises(ValueError, match="side"):
        pad_batch([a], pad_token_id=0, side="middle")
