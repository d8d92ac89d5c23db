"""generate() takes chat messages, strings and token ids, mixed; chat messages go through the chat template."""

import warnings

import pytest
import torch

from alignkit.models import build_tiny
from alignkit.rollout import generate


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny()


def test_chat_messages_equal_their_rendered_ids(tiny):
    model, tok = tiny
    chat = [{"role": "user", "content": "12+35="}]
    rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    rendered = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    text = tok.decode(rendered)
    a = generate(model, tok, [chat, rendered, text], max_new_tokens=6, temperature=0)
    assert a.completion_ids[0].tolist() == a.completion_ids[1].tolist() == a.completion_ids[2].tolist()
    assert a.prompt_ids[0].tolist() == a.prompt_ids[1].tolist()


def test_chat_messages_without_a_chat_template_say_what_to_set(tiny):
    model, tok = tiny
    template, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="model.chat_template"):
            generate(model, tok, [[{"role": "user", "content": "hi"}]], max_new_tokens=2)
    finally:
        tok.chat_template = template


def test_a_bare_message_list_is_refused_as_one_prompt(tiny):
    model, tok = tiny
    with pytest.raises(TypeError, match="wrap a single prompt"):
        generate(model, tok, [{"role": "user", "content": "hi"}], max_new_tokens=2)


@pytest.mark.parametrize("fast", [False, True])
def test_native_sampling_calls_no_deprecated_transformers_argument(tiny, fast):
    model, tok = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        generate(model, tok, ["hello", "hi"], num_samples=2, max_new_tokens=4, temperature=1.0, seed=0, fast=fast)
