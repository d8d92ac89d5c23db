"""A tiny character-level tokenizer and causal LM, built locally (no download), for tests and CPU runs.

The tokenizer is byte-level with no merges (one id per byte, so one per ASCII char), has three special
tokens (`<pad>`, `<|endoftext|>` = EOS, `<unk>`), no BOS, and atomic marker tokens for reasoning
(`<think>`, `</think>`, `<answer>`, `</answer>`) and chat roles (`<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`). Its chat
template renders, with nothing added between parts:

    <|system|>{content}<|end|><|user|>{content}<|end|><|assistant|>{content}<|endoftext|>

so an assistant turn ends with EOS, which the response mask then includes. `add_generation_prompt=True`
appends `<|assistant|>`.

The model is a randomly initialized LlamaForCausalLM or Qwen2ForCausalLM (eager attention: padded and
unpadded inputs agree to ~2e-7 in fp32; sdpa is slightly further apart).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

PAD, EOS, UNK = "<pad>", "<|endoftext|>", "<unk>"
MARKERS = ("<think>", "</think>", "<answer>", "</answer>")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- else -%}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

_ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode char map (the alphabet of tokenizers' ByteLevel pre-tokenizer)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def build_tiny_tokenizer(*, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with no merges: one token per UTF-8 byte, so one per ASCII char.

    Ids: 0 `<pad>`, 1 `<|endoftext|>` (EOS), 2 `<unk>` (never produced: every byte is in the vocab), then
    byte b -> 3 + b (so ASCII char c -> 3 + ord(c)), then 259..266 the markers `<think>`, `</think>`,
    `<answer>`, `</answer>`, `<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`, each one atomic id.
    `len(tok) == 267`. No BOS. `tok.decode(tok.encode(s)) == s` for any NFC string (ASCII included).

    The pipeline (NFC normalizer, ByteLevel pre-tokenizer and decoder, BPE) is the one transformers 5
    rebuilds when it loads a directory whose config.json says `qwen2` (AutoTokenizer forces
    Qwen2Tokenizer there and ignores tokenizer.json's pipeline), so both archs reload identically.
    """
    specials = [PAD, EOS, UNK]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({ch: len(specials) + b for b, ch in _bytes_to_unicode().items()})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKERS + ROLE_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        clean_up_tokenization_spaces=False, model_max_length=model_max_length,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(
    vocab_size: int, *, arch: str = "llama", hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
    num_kv_heads: int | None = None, intermediate_size: int | None = None, max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True, seed: int = 0, pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PreTrainedModel:
    """A randomly initialized causal LM, deterministic in `seed` (the global torch RNG is left untouched).

    `num_kv_heads` defaults to `num_heads` (no GQA), `intermediate_size` to `4 * hidden_size`. With the
    defaults and the tiny tokenizer (vocab 267) the llama model has 148,480 parameters (qwen2 adds q/k/v
    biases: 148,864). Attention is "eager" (see module docstring).
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; allowed: {sorted(_ARCHS)}")
    config_cls, model_cls = _ARCHS[arch]
    config = config_cls(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        bos_token_id=None,
    )
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config = GenerationConfig(pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    return model.eval()


def build_tiny(
    out_dir: str | Path | None = None, *, arch: str = "llama", **model_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Tokenizer plus a model sized to it (pad / EOS ids from the tokenizer); saved (safetensors) to
    `out_dir` if given, loadable with `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(out_dir)`."""
    tok = build_tiny_tokenizer(model_max_length=model_kwargs.get("max_position_embeddings", 512))
    model_kwargs.setdefault("pad_token_id", tok.pad_token_id)
    model_kwargs.setdefault("eos_token_id", tok.eos_token_id)
    model = build_tiny_model(len(tok), arch=arch, **model_kwargs)
    if out_dir is not None:
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    return model, tok
