"""The hf backend: `model.generate`, the reference for the native loop and the fallback for architectures it
does not support (encoder-decoder, custom caches). Stop strings use our own completion-only criterion.

Every sampling setting is passed explicitly (top_k=0, top_p=1.0, temperature=1.0 when off), so the model's
own `generation_config` defaults (e.g. a hub top_k=20) never leak in. The seed goes through
`torch.random.fork_rng`, leaving the caller's global RNG untouched. Logprobs come from the raw logits
(`output_logits=True`), scaled by 1/T: the same convention as the native backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from alignkit.rollout.native import StopStringMatcher, left_pad
from alignkit.rollout.types import Samples


@torch.inference_mode()
def generate_hf(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    seed: int,
    stop: StopStringMatcher | None = None,
) -> Samples:
    """Sample `num_samples` completions of each prompt with `model.generate`; same contract as
    `alignkit.rollout.native.generate_native`."""
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
    # rows repeated here (not num_return_sequences, which greedy refuses): same layout either way
    input_ids = input_ids.repeat_interleave(num_samples, dim=0)
    attention_mask = attention_mask.repeat_interleave(num_samples, dim=0)
    greedy = temperature == 0
    sampling = {} if greedy else {"top_k": top_k or 0, "top_p": top_p, "temperature": temperature}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=pad_token_id,
        eos_token_id=list(eos_token_ids),  # [] = no EOS (None would take the model's)
        return_dict_in_generate=True, output_logits=True, **sampling,
    )
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        criteria = StoppingCriteriaList([_CompletionStop(stop, input_ids.shape[1])] if stop is not None else [])
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                             stopping_criteria=criteria)
    ids = out.sequences[:, input_ids.shape[1]:]  # [B, C]
    logits = torch.stack(out.logits, dim=1).float()  # [B, C, V] raw logits
    scale = 1.0 if greedy else temperature
    z = logits / scale
    logprobs = z.gather(-1, ids[..., None])[..., 0] - torch.logsumexp(z, -1)
    lengths, reasons = _ends(ids, eos_token_ids, stop)
    steps = torch.arange(ids.shape[1], device=device)
    live = steps[None, :] < torch.tensor(lengths, device=device)[:, None]
    return Samples(
        completion_ids=ids.masked_fill(~live, pad_token_id),
        rollout_logprobs=logprobs.masked_fill(~live, 0.0),
        lengths=torch.tensor(lengths, dtype=torch.long, device=device),
        finish_reasons=reasons,
    )


class _CompletionStop(StoppingCriteria):
    """Stop strings matched in the completion only (HF's `stop_strings` also match across the end of the
    prompt; vLLM and the native backend do not)."""

    def __init__(self, matcher: StopStringMatcher, prompt_width: int):
        self.matcher, self.prompt_width = matcher, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        windows = input_ids[:, self.prompt_width:][:, -self.matcher.window:].tolist()
        return torch.tensor(self.matcher.hits(windows), dtype=torch.bool, device=input_ids.device)


def _ends(ids: torch.Tensor, eos_token_ids: Sequence[int], stop: StopStringMatcher | None) -> tuple[list[int], list[str]]:
    """Per row of generated ids [B, C]: (length up to and including the ending token, finish reason).

    `generate` pads finished rows with the pad id, which a row may also have sampled, so the end is found
    from the tokens themselves: the first EOS, else the token that completes a stop string, else all C.
    """
    eos = set(eos_token_ids)
    lengths, reasons = [], []
    for row in ids.tolist():
        end = next((t for t, tok in enumerate(row) if tok in eos), None)
        hit = stop.first_hit(row[:end]) if stop is not None else None
        if hit is not None:
            lengths.append(hit + 1)
            reasons.append("stop")
        elif end is not None:
            lengths.append(end + 1)
            reasons.append("eos")
        else:
            lengths.append(len(row))
            reasons.append("length")
    return lengths, reasons
