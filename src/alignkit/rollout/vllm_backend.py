"""The vllm backend (optional, GPUs): `vllm.LLM.generate` on token-id prompts.

`model` is a `vllm.LLM` (or a path / hub name to build one from); keeping its weights in sync with a
training policy is the recipe's job. vllm is imported here, lazily: without it, `generate(...,
backend="vllm")` raises an ImportError that says what to install.

Conventions mapped onto `Samples`: vLLM's `stop_reason` is None for EOS (finish "eos"), a string for a
stop string ("stop"); `finish_reason == "length"` is "length". vLLM returns the sampled token's logprob
according to the LLM's `logprobs_mode`; the returned Rollout says `temperature=1.0`, which is right for the
default "raw_logprobs" (T = 1 logprobs). Recompute logprobs at T with `alignkit.logprobs` where a loss
needs the native backend's convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.rollout.types import Samples


def import_vllm():
    """The vllm module, or an ImportError naming the extra to install."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "backend='vllm' needs vLLM, an optional GPU dependency: pip install 'alignkit[vllm]' "
            "(or use backend='native', which runs everywhere)"
        ) from err
    return vllm


def generate_vllm(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float,
    pad_token_id: int,
    seed: int,
    stop: Sequence[str] | None = None,
    ignore_eos: bool = False,
) -> Samples:
    """Sample with vLLM; same contract as `alignkit.rollout.native.generate_native`. Prompt i uses seed + i."""
    vllm = import_vllm()
    if isinstance(model, str):
        model = vllm.LLM(model=model)
    if not isinstance(model, vllm.LLM):
        raise TypeError(
            f"backend='vllm' needs a vllm.LLM (or a model path), got {type(model).__name__}; "
            "for a transformers model use backend='native' or 'hf'"
        )
    params = [
        vllm.SamplingParams(
            n=num_samples, max_tokens=max_new_tokens, temperature=temperature, top_k=top_k or -1, top_p=top_p,
            stop=list(stop) if stop else None, seed=seed + i, logprobs=0, ignore_eos=ignore_eos,
        )
        for i in range(len(prompts))
    ]
    outputs = model.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
    rows, logprobs, reasons = [], [], []
    for request in outputs:
        for completion in request.outputs:
            ids = list(completion.token_ids)
            rows.append(ids)
            logprobs.append([lp[t].logprob if lp is not None and t in lp else 0.0
                             for t, lp in zip(ids, completion.logprobs or [None] * len(ids))])
            if completion.finish_reason == "length":
                reasons.append("length")
            else:
                reasons.append("stop" if isinstance(completion.stop_reason, str) else "eos")
    width = max(1, max(len(r) for r in rows))
    ids_t = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    lp_t = torch.zeros((len(rows), width), dtype=torch.float32)
    for b, (r, lp) in enumerate(zip(rows, logprobs)):
        ids_t[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        lp_t[b, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return Samples(ids_t, lp_t, lengths, reasons)
