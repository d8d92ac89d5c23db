"""Per-token log-probabilities (and entropies) of sequences under a causal LM, chunked over rows.

Layout, everywhere in alignkit: a sequence batch is `input_ids` [B, T] with `attention_mask` [B, T]
(1 = real token; padding LEFT or RIGHT). Per-token values are aligned with `input_ids`:

    logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])       for t >= 1 and t, t-1 real tokens
    logprobs[b, t] = 0                                              at t = 0, padding, first real token

so a `response_mask` [B, T] aligned the same way (1 = counts, EOS included) multiplies them directly.
The full-vocabulary log-softmax is never materialized: each row gathers its chosen logit and subtracts the
logsumexp, `chunk_size` rows at a time, in fp32.

Through the LM head (:func:`head_logprobs`, the fast path of :func:`sequence_logprobs` for the model classes of
:func:`head_route`): not even the logits are. The final hidden states of the positions that predict a counted
token ([N, H], nothing else) go through the head a chunk of rows at a time (chunk x V, ``HEAD_CHUNK_BYTES`` of
fp32), each chunk reduced at once to its target's logprob and its entropy; the backward recomputes each chunk's
logits instead of keeping them. Peak memory: one chunk x V instead of rows x tokens x V. Its slow twin (the
model's own [B, T, V] logits) runs under ``ALIGNKIT_SLOW_PATHS=1`` (`alignkit.models.forwards.slow_paths`).
"""

from __future__ import annotations

import contextlib
import os

import torch

from alignkit.losses import entropy_from_logits

DEFAULT_CHUNK_SIZE = 512  # rows (token positions) per chunk: 512 x 152k vocab x 4 B = 311 MB of fp32
HEAD_CHUNK_BYTES = 32 << 20  # head_logprobs: rows per chunk = this / (4 V), at least 16 (170 rows at V = 49,152)
# *ForCausalLM classes whose logits are exactly lm_head(decoder(...).last_hidden_state): no soft-capping,
# scaling or extra outputs (checked in transformers 5.x)
HEAD_ROUTE_CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM",
                      "Phi3ForCausalLM", "Olmo2ForCausalLM")
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "logit_softcapping")


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


class _ChunkedHead(torch.autograd.Function):
    """(logprobs [N], entropies [N or 0]) of softmax((h W^T + b) / T) at `targets`, `chunk` rows of the head at
    a time. Saves h, W, b and two floats per row; the backward recomputes each chunk's logits, so nothing of
    size [N, V] is ever alive. Gradients (z = logits / T, p = softmax(z), lp = z_y - lse, H = lse - p.z):

        d lp / d z = onehot(y) - p,        d H / d z = -p (log p + H)

    then d/d logits = (.) / T, d h = g W, d W = g^T h, d b = sum g (each only where its input needs it)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, want_entropy):
        n = hidden.shape[0]
        lp = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        ent = hidden.new_empty(n if want_entropy else 0, dtype=torch.float32)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z = _head_chunk(hidden[s:e], weight, bias, temperature)
            lse[s:e] = torch.logsumexp(z, -1)
            lp[s:e] = z.gather(-1, targets[s:e, None])[:, 0] - lse[s:e]
            if want_entropy:
                ent[s:e] = lse[s:e] - torch.linalg.vecdot(torch.softmax(z, -1), z)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.temperature, ctx.chunk, ctx.want_entropy = temperature, chunk, want_entropy
        ctx.set_materialize_grads(False)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not ctx.want_entropy:
            g_ent = None
        if (g_lp is None and g_ent is None) or not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None
        temperature, n = ctx.temperature, hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = torch.float32 if weight.dtype in (torch.bfloat16, torch.float16) else weight.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        for s in range(0, n, ctx.chunk):
            e = min(s + ctx.chunk, n)
            h = hidden[s:e]
            logp = _head_chunk(h, weight, bias, temperature).sub_(lse[s:e, None])  # log softmax, in place
            p = logp.exp()
            if g_ent is not None:  # g_ent * dH/dz = -g_ent p (log p + H), built in logp's buffer
                grad = logp.add_(ent[s:e, None]).mul_(p).mul_(-g_ent[s:e, None])
                if g_lp is not None:
                    grad.sub_(p.mul_(g_lp[s:e, None]))
            else:
                grad = p.mul_(-g_lp[s:e, None])
            if g_lp is not None:
                grad.scatter_add_(-1, targets[s:e, None], g_lp[s:e, None])
            if temperature != 1.0:
                grad.div_(temperature)
            grad = grad.to(hidden.dtype)
            if need_h:
                torch.mm(grad, weight, out=grad_h[s:e])
            if need_w:
                grad_w.addmm_(grad.t().to(acc), h.to(acc))
            if need_b:
                grad_b.add_(grad.sum(0).to(acc))
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def _head_chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """fp32 (hidden W^T + b) / temperature, a fresh tensor (callers modify it in place)."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    z = z.float() if z.dtype != torch.float32 else z
    return z.div_(temperature) if temperature != 1.0 else z


def head_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, *,
    temperature: float = 1.0, entropy: bool = False, chunk_rows: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logprobs (and entropies) of `targets` under the LM head, never materializing [N, V] logits.

        z = (hidden W^T + b) / temperature (fp32);  out[i] = log_softmax(z[i])[targets[i]],  H[i] = H(softmax(z[i]))

    Naive equivalent: `selective_log_softmax(F.linear(hidden, weight, bias), targets, temperature=temperature)`
    (and `entropy_from_logits(logits.float() / temperature)`), equal to ~1e-6 in fp32, values and gradients.

    Args:
        hidden: [N, H] final hidden states (after the model's final norm) of the positions that predict a token.
        weight, bias: the LM head's [V, H] and [V] (or None).
        targets: [N] int64 token ids.
        chunk_rows: rows of logits alive at once (default: ``HEAD_CHUNK_BYTES`` of fp32, at least 16 rows).
    The matmuls run in the autocast dtype where autocast is on (as the model's own head would), else in
    hidden's dtype; the backward recomputes each chunk (one extra head matmul per chunk, no stored logits).
    Returns:
        [N] fp32 logprobs, or ([N], [N]) with `entropy`. Gradients reach hidden, weight and bias.
    """
    _check_temperature(temperature)
    chunk = chunk_rows or max(16, HEAD_CHUNK_BYTES // (4 * weight.shape[0]))
    device_type = hidden.device.type
    try:
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    except (RuntimeError, ValueError):  # a device type without autocast
        device_type, dtype = None, hidden.dtype
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device_type, enabled=False) if device_type else contextlib.nullcontext():
        lp, ent = _ChunkedHead.apply(hidden, weight, bias, targets.reshape(-1), float(temperature), chunk, entropy)
    return (lp, ent) if entropy else lp


def head_route(model):
    """(decoder, lm_head) where ``model``'s logits are exactly ``lm_head(decoder(...).last_hidden_state)``: the
    classes of ``HEAD_ROUTE_CLASSES``, plain or inside DDP (``.module``) or a peft LoRA model, with a plain
    ``nn.Linear`` head (no LoRA on it) and no logit soft-capping or scaling in the config; else None."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "peft_config"):
        if not hasattr(inner, "get_base_model") or any(c.peft_type != "LORA" for c in inner.peft_config.values()):
            return None
        inner = inner.get_base_model()
    if type(inner).__name__ not in HEAD_ROUTE_CLASSES:
        return None
    if any(getattr(inner.config, key, None) for key in _LOGIT_TRANSFORMS):
        return None
    head = getattr(inner, "lm_head", None)
    if type(head) is not torch.nn.Linear:
        return None
    return inner.get_decoder(), head


def final_hidden(model, decoder, **inputs) -> torch.Tensor:
    """The last hidden state [B, T, H] (what the LM head reads) of one ``model(**inputs)`` forward, caught by a
    forward hook on ``decoder``; the head itself runs on the last position only (``logits_to_keep=1``). The call
    goes through ``model`` itself, so DDP, peft and accelerate's autocast wrappers apply as usual."""
    caught = []

    def hook(module, args, output):
        caught.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = decoder.register_forward_hook(hook)
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return caught[-1]


def _shift_right(values: torch.Tensor) -> torch.Tensor:
    """[B, T] values computed at position t-1 for token t -> aligned layout (column 0 = 0, last col dropped)."""
    return torch.cat([values.new_zeros(values.shape[0], 1), values[:, :-1]], dim=1)


_SLOW = {"on": False}


def fast_paths_enabled() -> bool:
    """False under ``ALIGNKIT_SLOW_PATHS=1`` (any value but '', '0') or inside :func:`slow_paths`: the one switch
    of every fast path (here and in `alignkit.models.forwards`, which re-exports it)."""
    return not (_SLOW["on"] or os.environ.get("ALIGNKIT_SLOW_PATHS", "") not in ("", "0"))


@contextlib.contextmanager
def slow_paths():
    """Inside the block every forward takes its plain (slow) twin."""
    before, _SLOW["on"] = _SLOW["on"], True
    try:
        yield
    finally:
        _SLOW["on"] = before


def _fast_route(model):
    """`head_route(model)` unless fast paths are off (``ALIGNKIT_SLOW_PATHS=1`` / `slow_paths()`)."""
    return head_route(model) if fast_paths_enabled() else None


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
    valid = attention_mask.bool() & (position_ids > 0) if packed else predicted_mask(attention_mask)
    route = _fast_route(model)
    if route is not None:  # chunked through the LM head: only the rows that predict a counted token
        decoder, head = route
        hidden = final_hidden(model, decoder, input_ids=input_ids, attention_mask=None if packed else attention_mask,
                              position_ids=position_ids)
        rows, cols = (valid & (torch.arange(T, device=valid.device) > T - keep)).nonzero(as_tuple=True)
        out = head_logprobs(hidden[rows, cols - 1], head.weight, head.bias, input_ids[rows, cols],
                            temperature=temperature, entropy=return_entropy)

        def scatter(values: torch.Tensor) -> torch.Tensor:  # [N] -> [B, T], zero elsewhere
            return values.new_zeros(B, T).index_put((rows, cols), values)

        return (scatter(out[0]), scatter(out[1])) if return_entropy else scatter(out)
    kwargs = {} if keep == T else {"logits_to_keep": keep}
    logits = model(
        input_ids=input_ids, attention_mask=None if packed else attention_mask, position_ids=position_ids,
        use_cache=False, **kwargs,
    ).logits  # [B, keep, V]: positions T-keep .. T-1
    kept_ids = input_ids[:, T - keep:]

    def place(values: torch.Tensor) -> torch.Tensor:  # [B, keep] -> [B, T], zero outside the kept / valid
        full = values.new_zeros(B, T)
        full[:, T - keep:] = values
        return full * valid

    lp = place(token_logprobs_from_logits(logits, kept_ids, temperature=temperature, chunk_size=chunk_size))
    if not return_entropy:
        return lp
    ent = _shift_right(_chunked_entropy(logits, chunk_size=chunk_size, temperature=temperature))
    return lp, place(ent)
