"""`generate`: the one entry point every sampler in alignkit goes through (GRPO, PPO, rejection sampling,
on-policy distillation, evaluation).

Prompts come in three forms, mixed freely in one call:

- chat messages (a list of ``{"role": ..., "content": ...}`` dicts): rendered with the tokenizer's chat
  template and the generation prompt (``apply_chat_template(..., add_generation_prompt=True)``);
- strings, tokenized as-is: no chat template and no special tokens added (``add_special_tokens=False``, so a
  BOS the model needs must be in the text, as a rendered chat template puts it);
- token-id lists (or 1-D tensors), used as given.

The model is put in eval mode for the call and restored after.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch

from alignkit.rollout.hf import generate_hf
from alignkit.rollout.native import StopStringMatcher, generate_native, left_pad
from alignkit.rollout.types import Rollout, Samples
from alignkit.rollout.vllm_backend import generate_vllm

BACKENDS = ("native", "hf", "vllm")


def generate(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    backend: str = "native",
    do_sample: bool | None = None,
    compile: bool = False,
    ignore_eos: bool = False,
    fast: bool = True,
) -> Rollout:
    """Sample `num_samples` completions of each prompt; rows group-contiguous (row i*G + j: prompt i, sample j).

    Args:
        model: a transformers causal LM (native, hf) or a `vllm.LLM` / model path (vllm).
        tokenizer: its tokenizer (pad id: `pad_token_id`, else the EOS id); decodes the completions.
        prompts: N prompts, each chat messages, a string or a list of token ids (see module docstring).
        num_samples: G >= 1 samples per prompt.
        max_new_tokens: most tokens generated per row; prompt + max_new_tokens must fit the model's context.
        temperature: T > 0 samples from softmax(logits / T); 0 is greedy.
        top_k: keep the k most likely tokens (None or 0: no top-k).
        top_p: nucleus mass in (0, 1] (1: no top-p).
        stop: stop string(s): a row ends at the token that completes one (text cut before it).
        seed: same seed, same completions (same machine, backend and batch). None draws one from torch's
            global RNG, so `torch.manual_seed` governs it.
        backend: "native" (default, KV-cached loop), "hf" (`model.generate`), "vllm" (optional, GPUs).
        do_sample: None = (temperature > 0); False forces greedy; True with temperature <= 0 is an error.
        compile: native only: `torch.compile` the decode step (first call compiles).
        ignore_eos: EOS does not end a row (vLLM's option; benchmarks use it to make work equal).
        fast: native only: run the lean Llama-family forward (`alignkit.models.decoder.FastDecoder`) where the
            model qualifies (LoRA adapters included: merged into its weight snapshot); False, or a model it does not
            support (see `FastDecoder.supports`: e.g. DoRA, soft-capped logits), runs `model.forward`.
    Returns:
        `Rollout` with B = N * G rows; EOS ids are the tokenizer's plus the model's generation_config's.
    """
    _check_options(num_samples, max_new_tokens, temperature, top_k, top_p, backend, do_sample)
    if compile and backend != "native":
        raise ValueError(f"compile=True compiles the native decode step; backend={backend!r} has none")
    greedy = do_sample is False or (do_sample is None and temperature == 0)
    temperature = 0.0 if greedy else float(temperature)
    stops = _check_stop(stop)
    token_prompts = _encode_prompts(tokenizer, prompts)
    pad_id, eos_ids = _special_ids(model, tokenizer, backend)
    if ignore_eos:
        eos_ids = []
    if backend != "vllm":
        _check_fits(model, token_prompts, max_new_tokens)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    matcher = StopStringMatcher(tokenizer, stops) if stops else None
    common = dict(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_k=top_k or None, top_p=float(top_p), pad_token_id=pad_id)
    if backend == "vllm":
        samples = generate_vllm(model, token_prompts, seed=seed, stop=stops, ignore_eos=ignore_eos, **common)
        device, logprob_temperature = torch.device("cpu"), 1.0
    else:
        device = next(model.parameters()).device
        logprob_temperature = 1.0 if greedy else temperature
        with _eval_mode(model):
            if backend == "hf":
                samples = generate_hf(model, tokenizer, token_prompts, eos_token_ids=eos_ids, seed=seed,
                                      stop=matcher, **common)
            else:
                generator = torch.Generator(device=device).manual_seed(seed)
                samples = generate_native(model, token_prompts, eos_token_ids=eos_ids, generator=generator,
                                          stop=matcher, compile=compile, fast=fast, **common)
    return _to_rollout(samples, tokenizer, token_prompts, num_samples, pad_id, eos_ids, stops, device,
                       logprob_temperature)


def _check_options(num_samples, max_new_tokens, temperature, top_k, top_p, backend, do_sample) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples (G) must be an int >= 1, got {num_samples!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if do_sample is True and temperature <= 0:
        raise ValueError(
            f"temperature={temperature} with sampling on: sampling needs temperature > 0 "
            "(use temperature=0.0 or do_sample=False for greedy decoding)"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be None, 0 (off) or an int >= 1, got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def _check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


def _is_chat(prompt) -> bool:
    return isinstance(prompt, Sequence) and not isinstance(prompt, str) and len(prompt) > 0 and all(
        isinstance(m, Mapping) for m in prompt)


def render_chat(tokenizer, messages, index: int = 0) -> list[int]:
    """Chat messages -> token ids through the tokenizer's chat template, generation prompt added."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt {index} is chat messages but the tokenizer has no chat template: set "
                         "model.chat_template (a Jinja file or string) or pass rendered strings / token ids")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Chat messages -> ids through the chat template; strings -> ids (as-is, no special tokens); id lists are
    checked. Errors name the prompt index."""
    if isinstance(prompts, (str, torch.Tensor)) or not isinstance(prompts, Sequence) or _is_chat(prompts):
        raise TypeError("prompts must be a list of prompts, each chat messages, a string or a token-id list "
                        "(wrap a single prompt in a list)")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: generate needs at least one prompt")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        elif _is_chat(p):
            ids = render_chat(tokenizer, p, i)
        else:
            ids = p
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if not isinstance(ids, Sequence) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise TypeError(f"prompt {i} must be chat messages, a string or a flat list of int token ids, "
                            f"got {type(p).__name__}")
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty (no tokens): every prompt needs at least one token")
        out.append(list(ids))
    return out


def _special_ids(model, tokenizer, backend: str) -> tuple[int, list[int]]:
    """(pad id, EOS ids): the tokenizer's EOS plus the model generation_config's (native / hf)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) if backend != "vllm" else None
    for e in [config_eos] if isinstance(config_eos, int) else (config_eos or []):
        if e not in eos:
            eos.append(e)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token: set tokenizer.pad_token")
    return pad, eos


def _check_fits(model, prompts: list[list[int]], max_new_tokens: int) -> None:
    """Token ids inside the vocabulary; prompt + max_new_tokens inside the context window."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab = getattr(config, "vocab_size", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    for i, p in enumerate(prompts):
        if vocab is not None and (min(p) < 0 or max(p) >= vocab):
            raise ValueError(f"prompt {i} has token ids outside the model's vocabulary [0, {vocab})")
        if context is not None and len(p) > context:
            raise ValueError(f"prompt {i} has {len(p)} tokens, longer than the model's context of {context}")
        if context is not None and len(p) + max_new_tokens > context:
            raise ValueError(
                f"prompt {i} ({len(p)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
                f"of {context}: shorten the prompt or lower max_new_tokens"
            )


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _to_rollout(samples: Samples, tokenizer, prompts, group, pad_id, eos_ids, stops, device,
                temperature: float) -> Rollout:
    """Backend output -> Rollout: repeated left-padded prompts, masks, decoded and stop-cut texts."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    lengths = samples.lengths.to(device)
    completion_ids = samples.completion_ids.to(device)
    steps = torch.arange(completion_ids.shape[1], device=device)
    response_mask = (steps[None, :] < lengths[:, None]).long()
    texts = []
    for row, n, reason in zip(completion_ids.tolist(), lengths.tolist(), samples.finish_reasons):
        ids = row[:n - 1] if reason == "eos" and n > 0 and row[n - 1] in eos_ids else row[:n]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if reason == "stop":
            cut = min((text.find(s) for s in stops if s in text), default=len(text))
            text = text[:cut]
        texts.append(text)
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(group, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(group, dim=0),
        completion_ids=completion_ids,
        response_mask=response_mask,
        rollout_logprobs=samples.rollout_logprobs.to(device) * response_mask,
        completions=texts,
        finish_reasons=list(samples.finish_reasons),
        group_size=group,
        temperature=temperature,
    )
