"""Completion logprobs with each distinct prompt computed once: the training-side twin of prefix sharing.

GRPO samples G completions per prompt, so a batch of R = N * G rows holds each prompt G times. The plain
forward (`alignkit.logprobs.sequence_logprobs` over prompt + completion) runs every prompt token through
every layer G times. Here the N distinct prompts run once, and the G completions of a prompt attend to its
keys and values:

    prompt rows    [N, P]:  causal self-attention over the prompt (left padding masked)
    completion rows [R, C]:  attention over [its prompt's keys (P) | its own completion keys, causal (C)]
    logprob of completion token 0 from the prompt's last position, of token t >= 1 from completion position t-1

Row-wise work (projections, MLP, LM head) runs on the real completion tokens only: padding after EOS costs
nothing there, and attention scatters the tokens into the padded [R, C] layout. The LM head runs a chunk of
rows at a time (`alignkit.logprobs.head_logprobs`): peak memory chunk x V, not M x V. Compute per layer drops
from R (P + C) token rows to N P + (real completion tokens). Rows with the same prompt must be consecutive
(the group-contiguous layout of `alignkit.rollout`); consecutive rows with equal prompt ids and mask share.

The layers read the model's own parameters (`F.linear` on each projection's weight, RoPE in HF's half-split
layout; RMSNorm and SwiGLU through `alignkit.models.lean_ops`, which keep less for the backward), not
`FastDecoder`'s folded copies. A matmul keeps its weight operand for the backward, so the folded copies
(concatenated, transposed, norm-scaled: 425 MB for SmolLM2-135M's layers) stayed alive from the forward to the
backward of every training step, and the backward ran through the folding. Separate q/k/v and gate/up
matmuls cost nothing measurable at a training micro-batch's thousand-odd rows: one 16-row GRPO micro-batch on
SmolLM2 went from 7.2 to 6.4 s and from 3,507 to ~2,470 MiB of peak (docs/benchmarks.md, "Session 11").
`FastDecoder` keeps its fused copies for decode steps, where a step multiplies a few rows and per-op cost
matters. A peft LoRA projection adds its low-rank branch, (h A^T) (s B)^T, beside the frozen base weight
(`decoder.linear_parts`), so gradients reach A and B through two thin matmuls and the base costs no weight
gradient. Everything is differentiable: gradients reach the model's parameters exactly as through
`model.forward`.

Naive form: `sequence_logprobs(model, cat([prompt, completion]), ...)[:, P:]`; `tests/unit/test_grouped.py`
checks values and parameter gradients against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.logprobs import head_logprobs
from alignkit.models.decoder import FastDecoder, lean_base, linear_parts
from alignkit.models.lean_ops import rms_norm, swiglu


def supports(model) -> bool:
    """Llama-family model, plain or peft LoRA (not DDP-wrapped; see `FastDecoder.supports`), with no attention
    dropout or gradient checkpointing in training."""
    if not FastDecoder.supports(model):
        return False
    base = lean_base(model)
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.2x; older: the old name
    checkpointing = base.is_gradient_checkpointing if checkpointing is None else checkpointing
    if base.training and (getattr(base.config, "attention_dropout", 0.0) or checkpointing):
        return False
    return True


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, P] -> (first row of each distinct prompt [N], group index of each row [R]); consecutive equal
    rows (ids and mask) form one group."""
    new = torch.ones(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    if prompt_ids.shape[0] > 1:
        new[1:] = (prompt_ids[1:] != prompt_ids[:-1]).any(-1) | (prompt_mask[1:] != prompt_mask[:-1]).any(-1)
    return new.nonzero()[:, 0], new.long().cumsum(0) - 1


def grouped_completion_logprobs(
    model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
    completion_mask: torch.Tensor, *, temperature: float = 1.0, return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token logprobs [R, C] fp32 of `completion_ids` given the LEFT-padded prompts (module docstring).

    Args:
        prompt_ids, prompt_mask: [R, P], left-padded, every row with at least one real token.
        completion_ids, completion_mask: [R, C], right-padded (1 = a real completion token).
    Returns:
        logprobs [R, C] (0 where completion_mask is 0), or (logprobs, entropies) with `return_entropy`.
        Gradients flow unless the caller runs under torch.no_grad().
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # clones: rollout tensors are inference-mode tensors, which autograd may not save
    prompt_ids, prompt_mask, completion_ids = prompt_ids.clone(), prompt_mask.clone(), completion_ids.clone()
    base = lean_base(model)
    config, inner = base.config, base.model
    first_attn = inner.layers[0].self_attn
    h_, kv, d = config.num_attention_heads, config.num_key_value_heads, first_attn.head_dim
    rep, hidden, dtype = h_ // kv, config.hidden_size, inner.embed_tokens.weight.dtype
    first, group = prompt_groups(prompt_ids, prompt_mask)
    p_ids, p_mask = prompt_ids[first], prompt_mask[first].bool()
    n, p = p_ids.shape
    r, c = completion_ids.shape
    neg = torch.finfo(dtype).min
    device = prompt_ids.device

    valid = completion_mask.bool()
    real = valid.reshape(-1).nonzero()[:, 0]  # [M]: the real completion tokens, in [R * C] order
    m = real.numel()
    p_pos = (p_mask.long().cumsum(-1) - 1).clamp(min=0)  # [N, P]
    c_pos = p_mask.sum(-1)[group][:, None] + torch.arange(c, device=device)  # [R, C]
    positions = torch.cat([p_pos.reshape(-1), c_pos.reshape(-1)[real]])  # [N P + M]
    cos, sin = _rope(inner, positions, d)  # [N P + M, 1, d/2] each
    scale = first_attn.scaling
    cos_q, sin_q = cos * scale, sin * scale  # the attention scale folded into q's rotation
    causal_p = torch.ones(p, p, dtype=torch.bool, device=device).tril()
    mask_p = torch.zeros(n, 1, p, p, dtype=dtype, device=device).masked_fill(~(causal_p & p_mask[:, None, None, :]), neg)
    causal_c = torch.ones(c, c, dtype=torch.bool, device=device).tril()
    keys_ok = torch.cat([p_mask[group][:, None, :].expand(r, c, p), causal_c & valid[:, None, :]], -1)  # [R, C, P+C]
    mask_c = torch.zeros(r, 1, c, p + c, dtype=dtype, device=device).masked_fill(~keys_ok[:, None], neg)

    def attend(q, k, v, mask):  # q [A, T, H, d], k/v [A, S, KV, d], mask [A, 1, T, S] -> [A * T, H * d]
        a, t = q.shape[:2]
        qh = q.reshape(a, t, kv, rep, d).permute(0, 2, 3, 1, 4).reshape(a, kv, rep * t, d)
        scores = qh @ k.permute(0, 2, 3, 1) + mask.expand(a, 1, t, k.shape[1]).repeat(1, 1, rep, 1)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        out = probs @ v.transpose(1, 2)  # [A, KV, rep*T, d]
        return out.view(a, kv, rep, t, d).permute(0, 3, 1, 2, 4).reshape(a * t, h_ * d)

    def padded(t):  # [M, ...] real completion rows -> [R * C, ...], zeros at padding
        return t.new_zeros((r * c, *t.shape[1:])).index_copy(0, real, t)

    # Rows of x: the N P prompt tokens, then only the M REAL completion tokens (row-wise work skips padding;
    # attention scatters them into the padded [R, C] layout)
    x = F.embedding(torch.cat([p_ids.reshape(-1), completion_ids.reshape(-1)[real]]), inner.embed_tokens.weight)
    rows = [n * p, m]  # torch.split, not slicing: a slice's backward zero-fills a full-size gradient, split's is one cat
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        h = _norm(x, layer.input_layernorm)
        q = _rotate(_linear(h, attn.q_proj).view(-1, h_, d), cos_q, sin_q)
        k = _rotate(_linear(h, attn.k_proj).view(-1, kv, d), cos, sin)
        v = _linear(h, attn.v_proj).view(-1, kv, d)
        (qp, qc), (kp, kc), (vp, vc) = q.split(rows), k.split(rows), v.split(rows)
        kp, vp = kp.reshape(n, p, kv, d), vp.reshape(n, p, kv, d)
        out_p = attend(qp.reshape(n, p, h_, d), kp, vp, mask_p)
        keys = torch.cat([kp[group], padded(kc).reshape(r, c, kv, d)], 1)  # [R, P + C, KV, d]
        values = torch.cat([vp[group], padded(vc).reshape(r, c, kv, d)], 1)
        out_c = attend(padded(qc).reshape(r, c, h_, d), keys, values, mask_c)[real]
        x = _linear(torch.cat([out_p, out_c]), attn.o_proj, residual=x)
        h = _norm(x, layer.post_attention_layernorm)
        x = _linear(swiglu(_linear(h, mlp.gate_proj), _linear(h, mlp.up_proj)), mlp.down_proj, residual=x)
    xp, xc = x.split(rows)
    last_prompt = xp.reshape(n, p, hidden)[:, -1][group]  # [R, h]: predicts completion token 0
    pred = torch.cat([last_prompt[:, None], padded(xc).reshape(r, c, hidden)[:, :-1]], 1)  # [R, C, h]
    # token t from position t - 1: the LM head in chunks of rows (no [M, V] logits, `head_logprobs`)
    head = base.lm_head
    out = head_logprobs(_norm(pred.reshape(r * c, hidden)[real], inner.norm), head.weight, head.bias,
                        completion_ids.reshape(-1)[real], temperature=temperature, entropy=return_entropy)
    if not return_entropy:
        return padded(out).view(r, c)
    return padded(out[0]).view(r, c), padded(out[1]).view(r, c)


def _rope(inner, positions: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, 1, d/2] of the model's own rotary embedding at `positions` [T] (HF repeats each half)."""
    x = inner.embed_tokens.weight[:1][None]
    cos, sin = inner.rotary_emb(x, positions[None])  # [1, T, d] each, in x's dtype
    cos, sin = cos[0], sin[0]
    if not (torch.equal(cos[:, :d // 2], cos[:, d // 2:]) and torch.equal(sin[:, :d // 2], sin[:, d // 2:])):
        raise ValueError("unexpected rotary layout: cos/sin halves differ")
    return cos[:, None, :d // 2], sin[:, None, :d // 2]


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's RoPE, t cos + rotate_half(t) sin, on t [T, heads, d] with cos/sin [T, 1, d/2]: the halves
    (t1, t2) -> (t1 cos - t2 sin, t2 cos + t1 sin)."""
    t1, t2 = t.chunk(2, -1)
    return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1)


def _norm(x: torch.Tensor, norm) -> torch.Tensor:
    """The model's RMSNorm module applied through `lean_ops.rms_norm` (its weight, no copy; less kept for the
    backward than the composed form)."""
    return rms_norm(x, norm.weight, norm.variance_epsilon)


def _linear(h: torch.Tensor, module, residual: torch.Tensor | None = None) -> torch.Tensor:
    """(residual +) h W^T + b of a plain `nn.Linear` or a peft `lora.Linear` (+ (h A^T) (s B)^T for its active
    adapters), reading the module's own parameters (`decoder.linear_parts`); one addmm with the residual."""
    weight, bias, lora = linear_parts(module)
    out = F.linear(h, weight, bias) if residual is None else torch.addmm(residual, h, weight.t())
    if residual is not None and bias is not None:
        out = out + bias
    return out if lora is None else torch.addmm(out, h @ lora[0].t(), lora[1].t())
