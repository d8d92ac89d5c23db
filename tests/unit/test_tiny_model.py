"""The tiny locally built tokenizer + model: round-trips, chat template, size, save / load."""

import string

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.models import build_tiny, build_tiny_model, load_causal_lm, load_tokenizer
from alignkit.models.tiny import MARKERS, ROLE_TOKENS


@pytest.mark.parametrize("text", [
    string.printable,
    "  two  spaces, trailing \n\nnewlines\n",
    "<think>2 + 2 = 4</think>\n<answer> 4 </answer><|endoftext|>",
    "<|user|>hi<|end|><|assistant|>a . , ! ? 's n't<|endoftext|>",
    "",
    "caf\u00e9 \u65e5\u672c \x00\x7f",  # byte-level: any NFC string round-trips
])
def test_tokenizer_round_trips_ascii_and_markers(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[:1] != [tok.bos_token_id] or text == ""  # no BOS prepended


def test_markers_and_specials_are_single_distinct_ids(tok):
    for marker in MARKERS + ROLE_TOKENS + ("<|endoftext|>", "<pad>", "<unk>"):
        assert len(tok.encode(marker)) == 1, marker
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.bos_token is None
    ids = [tok.convert_tokens_to_ids(t) for t in MARKERS + ROLE_TOKENS] + list(range(3))
    assert len(set(ids)) == len(ids)
    assert len(tok) == 267
    assert tok.encode("ab \n") == [3 + ord(c) for c in "ab \n"]  # one id per ASCII char: 3 + ord(c)
    assert tok.convert_tokens_to_ids("<think>") == 259


def test_chat_template_renders_exactly(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>easy</think>4"},
    ]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|><think>easy</think>4<|endoftext|>"
    )
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True) == (
        "<|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|>"
    )
    # the rendered assistant turn ends with the EOS id
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.encode(rendered)[-1] == tok.eos_token_id


def test_default_model_is_small_and_deterministic():
    model, tok = build_tiny()
    n = sum(p.numel() for p in model.parameters())
    assert n == 148_480 < 1_000_000
    assert model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    again = build_tiny_model(len(tok), pad_token_id=0, eos_token_id=1)
    other = build_tiny_model(len(tok), seed=1)
    w = model.model.embed_tokens.weight
    assert torch.equal(w, again.model.embed_tokens.weight)
    assert not torch.equal(w, other.model.embed_tokens.weight)


def test_qwen2_arch_runs():
    model, tok = build_tiny(arch="qwen2")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([tok.encode("<|user|>hi<|end|>")])
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_bad_arch_is_a_value_error():
    with pytest.raises(ValueError, match="llama"):
        build_tiny_model(267, arch="gpt9")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_and_load_round_trip(tmp_path, arch):
    model, tok = build_tiny(tmp_path, arch=arch)
    assert (tmp_path / "model.safetensors").exists()
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True, attn_implementation="eager")
    tok2 = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "<|user|>What's 3*4?<|end|><|assistant|><think>\n3*4 = 12</think><answer>12</answer><|endoftext|>"
    assert tok2.encode(text) == tok.encode(text)
    assert tok2.decode(tok2.encode(text), skip_special_tokens=True) == text.removesuffix("<|endoftext|>")
    assert tok2.decode(tok2.encode(text)) == text
    assert tok2.chat_template == tok.chat_template
    assert (tok2.pad_token_id, tok2.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2.eval()(ids).logits)
    # the alignkit loaders give the same model (default attention within float tolerance)
    model3 = load_causal_lm(tmp_path)
    tok3 = load_tokenizer(tmp_path, padding_side="left")
    assert tok3.padding_side == "left" and tok3.encode(text) == tok.encode(text)
    with torch.no_grad():
        torch.testing.assert_close(model3(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_load_bf16_and_missing_dir(tmp_path):
    build_tiny(tmp_path)
    assert load_causal_lm(tmp_path, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(tmp_path, dtype="fp8")
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_causal_lm(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
