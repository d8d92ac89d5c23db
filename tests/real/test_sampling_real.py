"""Native sampling on the real model: greedy output equals `model.generate` token for token on chat prompts
(EOS allowed, so rows end at different lengths), through the fast decoder and the plain forward."""

import pytest
import torch

from alignkit.rollout import generate

pytestmark = pytest.mark.real

CHATS = [
    [{"role": "user", "content": "What is 12 plus 35?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Say hello."}],
]


@pytest.mark.parametrize("fast", [True, False])
def test_native_greedy_equals_model_generate(real_model, fast):
    model, tok = real_model
    native = generate(model, tok, CHATS, max_new_tokens=24, temperature=0, fast=fast)
    for i, chat in enumerate(CHATS):
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            ref = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = ref[0, ids["input_ids"].shape[1]:].tolist()
        got = native.completion_ids[i, : int(native.response_mask[i].sum())].tolist()
        assert got == expected, f"prompt {i}: {tok.decode(got)!r} != {tok.decode(expected)!r}"
        assert native.completions[i] == tok.decode(expected, skip_special_tokens=True)
