"""Per-token log-probabilities (and entropies) of sequences under a causal LM, chunked over rows.

Layout, everywhere in alignkit: a sequence batch is `input_ids` [B, T] with `attention_mask` [B, T]
(1 = real token; padding LEFT or RIGHT). Per-token values are aligned with `input_ids`:

    logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])       for t >= 1 and t, t-1 real tokens
    logprobs[b, t] = 0                                              at t = 0, padding, first real token

so a `response_mask` [B, T] aligned the same way (1 = counts, EOS included) multiplies them directly.
The full-vocabulary log-softmax is never materialized: each row gathers its chosen logit and subtracts the
logsumexp, `chunk_size` rows at a time, in fp32.
"""

from __future__ import annotations

import torch

from alignkit.losses import entropy_from_logits

DEFAULT_CHUNK_SIZE = 512  # rows (token positions) per chunk: 512 x 152k vocab x 4 B = 311 MB of fp32


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE, temperature: float = 1.0,
) -> torch.Tensor:
    """log_softmax(logits / temperature)[index], chunked over rows, computed in fp32.

        out[...] = z[..., index] - logsumexp_v z[..., v],   z = float(logits) / temperature

    Naive equivalent (materializes a full fp32 [..., V] copy):
    `torch.log_softmax(logits.float() / temperature, -1).gather(-1, index[..., None])[..., 0]`.

    Args:
        logits: [..., V] any float dtype (bf16 / fp16 are upcast one chunk at a time).
        index: [...] int64 token ids.
        chunk_size: rows of the flattened [N, V] logits processed at once (bounds the fp32 temporary).
    Returns:
        [...] fp32 log-probabilities.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # a view when logits is contiguous
    flat_index = index.reshape(-1, 1)
    out = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        z = flat_logits[start:start + chunk_size].float()
        if temperature != 1.0:
            z = z / temperature
        chosen = z.gather(-1, flat_index[start:start + chunk_size])[:, 0]
        out.append(chosen - torch.logsumexp(z, dim=-1))
    if not out:
        return logits.new_zeros(index.shape, dtype=torch.float32)
    return torch.cat(out).reshape(index.shape)


def _chunked_entropy(logits: torch.Tensor, *, chunk_size: int, temperature: float) -> torch.Tensor:
    """entropy_from_logits(logits / temperature) [...] from logits [..., V], `chunk_size` rows at a time."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = [entropy_from_logits(flat[s:s + chunk_size].float() / temperature)
           for s in range(0, flat.shape[0], chunk_size)]
    if not out:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])


def _shift_right(values: torch.Tensor) -> torch.Tensor:
    """[B, T] values computed at position t-1 for token t -> aligned layout (column 0 = 0, last col dropped)."""
    return torch.cat([values.new_zeros(values.shape[0], 1), values[:, :-1]], dim=1)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs_from_logits(
    logits: torch.Tensor, input_ids: torch.Tensor, *, temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Aligned per-token logprobs from a causal LM's logits over `input_ids` (no padding handling).

        out[b, 0] = 0,   out[b, t] = log_softmax(logits[b, t-1] / temperature)[input_ids[b, t]]   (t >= 1)

    Args:
        logits: [B, T, V] (logits[:, t] predict token t+1).
        input_ids: [B, T].
    Returns:
        [B, T] fp32.
    """
    _check_temperature(temperature)
    # Gather on the full (contiguous) logits with next-token targets instead of slicing logits[:, :-1],
    # which would copy [B, T-1, V]; the last column (no target) is computed on a dummy id and dropped.
    next_ids = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
    lp = selective_log_softmax(logits, next_ids, chunk_size=chunk_size, temperature=temperature)
    return _shift_right(lp)


def predicted_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 1 where a token has a real token before it (attention_mask[t] and attention_mask[t-1])."""
    m = attention_mask.bool()
    prev = torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)
    return m & prev


def sequence_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE, return_entropy: bool = False, logits_to_keep: int | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Aligned per-token logprobs (and entropies) of `input_ids` under `model`, padding-invariant.

    position_ids = clamp(cumsum(attention_mask) - 1, min=0), so a left-padded row gives the same values as
    the same row right-padded or alone. Values are 0 at t = 0, at padding and at each row's first real token.

        logprobs[b, t] = log softmax(z[b, t-1] / temperature)[input_ids[b, t]]
        entropy[b, t]  = H(softmax(z[b, t-1] / temperature))     (the distribution token t was drawn from)

    Args:
        model: a causal LM returning `.logits` [B, T, V] (transformers' *ForCausalLM).
        input_ids, attention_mask: [B, T].
        position_ids: for PACKED rows (several examples per row, see alignkit.data.packing): positions restart
            at 0 at each example; the model then builds a block-diagonal causal mask (no attention across
            examples) and the first token of each example gets 0, like position 0.
        logits_to_keep: if k, the model computes logits for the last k+1 positions only and only the last k
            columns of the output are filled (the rest 0): enough when responses sit at the end (left
            padding), and it saves the lm_head on the prompt. None computes every position.
    Returns:
        logprobs [B, T] fp32, or (logprobs, entropy) if `return_entropy`. Gradients flow unless the caller
        runs under torch.no_grad().
    """
    _check_temperature(temperature)
    B, T = input_ids.shape
    packed = position_ids is not None
    if not packed:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if logits_to_keep is not None and logits_to_keep < 1:
        raise ValueError(f"logits_to_keep must be >= 1 or None, got {logits_to_keep}")
    keep = T if logits_to_keep is None else min(logits_to_keep + 1, T)  # logits at T-k-1 predict token T-k
    kwargs = {} if keep == T else {"logits_to_keep": keep}
    logits = model(
        input_ids=input_ids, attention_mask=None if packed else attention_mask, position_ids=position_ids,
        use_cache=False, **kwargs,
    ).logits  # [B, keep, V]: positions T-keep .. T-1
    kept_ids = input_ids[:, T - keep:]
    valid = attention_mask.bool() & (position_ids > 0) if packed else predicted_mask(attention_mask)

    def place(values: torch.Tensor) -> torch.Tensor:  # [B, keep] -> [B, T], zero outside the kept / valid
        full = values.new_zeros(B, T)
        full[:, T - keep:] = values
        return full * valid

    lp = place(token_logprobs_from_logits(logits, kept_ids, temperature=temperature, chunk_size=chunk_size))
    if not return_entropy:
        return lp
    ent = _shift_right(_chunked_entropy(logits, chunk_size=chunk_size, temperature=temperature))
    return lp, place(ent)
