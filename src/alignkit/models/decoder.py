"""A lean KV-cached forward for Llama-family causal LMs (Llama, Qwen2, Mistral), for the native rollout loop.

`model.forward` of transformers is general: per call it builds masks through `masking_utils`, runs rotary
embeddings, wraps every layer in hooks and output records. For small models and decode steps (one token
per row) that bookkeeping costs more than the arithmetic. `FastDecoder` reads the SAME weights and runs
the same computation with only the tensor operations, per layer:

    h = RMSNorm(x);  [q k v] = h W_qkv (+ b_qkv);  q, k = RoPE(q, k)
    x = x + softmax(q K^T * scale + mask) V  W_o
    h = RMSNorm(x);  x = x + (silu(h W_gate) * h W_up) W_down
    logits = RMSNorm(x) W_lm_head

Two changes of form, not of value:
- q/k/v (and gate/up) projections are concatenated into one matrix each, one matmul instead of three.
- RoPE is one complex multiplication: the rows of W_q and W_k are permuted inside each head so that the
  pairs (j, j + d/2) that HF's `rotate_half` rotates together are adjacent; q . k is unchanged because q and
  k are permuted alike (the cached keys are kept in that order; values are not permuted).

The naive form is `model.forward`; `tests/unit/test_decoder.py` checks prefill and decode logits against it on
Llama, Qwen2 (q/k/v biases) and grouped-query attention, and greedy decoding against `model.generate`.
Weights are snapshotted when the decoder is built (one rollout), so build a new one after an optimizer step.
`FastDecoder.supports(model)` says whether a model qualifies (others: the native loop uses `model.forward`).

LoRA (a peft `PeftModel` of LoRA type, or the transformers model inside it): each projection is a peft
`lora.Linear`, W x + sum_a s_a B_a A_a x over the active adapters (none while `disable_adapter()` is on). The
decoder reads the base weight and, either
- merged (`merge_lora=True`, the default under no_grad / inference mode, e.g. sampling): W + s B A folded into
  the weight before everything else, so a step costs what the plain model's does; or
- unmerged (the default with gradients on): the low-rank branch kept beside the folded projection,
  x W' + (x A') B' with A' = diag(g) sqrt(n) A^T (the RMSNorm weight folded in like W's) and B' the blocks of
  q/k/v (gate/up) side by side, block-diagonal; gradients then reach A and B through two thin matmuls and the
  frozen base costs no weight gradient. (Training steps use `alignkit.models.grouped`, which reads the
  parameters without folded copies.)
Both equal `model.forward` (tests/unit/test_decoder.py). Not supported: LoRA
dropout active in training (the lean forward has no per-module dropout), DoRA and other variants, a LoRA bias,
merged adapters, adapters on the embeddings or the LM head.

Shapes: A active rows, T new tokens per row, L = cache length so far, H query heads, KV key/value heads,
d head dim, cap the cache capacity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
PREFILL_BUCKET_OVERHEAD = 128  # a prefill bucket's fixed cost, in token positions (per-call work of 30 layers)


def length_buckets(lengths: list[int], overhead: int) -> list[list[int]]:
    """Rows grouped into buckets of similar length for a left-padded prefill: a bucket computes
    len(bucket) * max(its lengths) positions, and each bucket costs ``overhead`` positions more.
    Returns the buckets (row indices, ascending length) minimizing sum(len(b) * max(b) + overhead) over
    splits of the length-sorted rows into contiguous runs (exact: a dynamic program, O(N^2)).

    >>> length_buckets([5, 100, 6, 98], 10)  # 2 * 6 + 2 * 100 + 20 = 232 < 4 * 100 + 10
    [[0, 2], [3, 1]]
    >>> length_buckets([5, 100, 6, 98], 1000)
    [[0, 2, 3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        top = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + (j - i) * top + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], n
    while j > 0:
        out.append(order[cut[j]:j])
        j = cut[j]
    return out[::-1]


class FastDecoder:
    """Prefill + decode steps over a preallocated KV cache [A, KV, cap, d] per layer (see module docstring)."""

    @staticmethod
    def supports(model) -> bool:
        """True where the lean forward computes exactly what `model.forward` does (plain or LoRA, see the
        module docstring)."""
        model = lean_base(model)
        if type(model).__name__ not in SUPPORTED:
            return False
        config = model.config
        if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "use_sliding_window", False):
            return False
        if getattr(config, "sliding_window", None) and type(model).__name__ == "MistralForCausalLM":
            return False
        rope = getattr(model.model.rotary_emb, "rope_type", "default")
        if rope == "dynamic" or type(model.lm_head) is not nn.Linear or type(model.model.embed_tokens) is not nn.Embedding:
            return False
        if any(getattr(config, key, None) for key in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
            return False
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            mods = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if not all(_linear_ok(m) for m in mods):
                return False
        return True

    def __init__(self, model, capacity: int, *, merge_lora: bool | None = None):
        """``merge_lora``: LoRA adapters folded into the weights (True) or kept as a low-rank branch (False);
        None: merged unless gradients are on (module docstring)."""
        if not self.supports(model):
            raise ValueError(f"FastDecoder does not support {type(model).__name__} with this configuration")
        model = lean_base(model)
        self.merge_lora = not torch.is_grad_enabled() if merge_lora is None else merge_lora
        config, inner = model.config, model.model
        first = inner.layers[0].self_attn
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scale = first.head_dim, first.scaling
        self.hidden, self.inter = config.hidden_size, config.intermediate_size
        self.capacity = capacity
        self.embed = inner.embed_tokens.weight
        d = self.head_dim
        # interleave (j, j + d/2) within each head: new 2j <- j, new 2j+1 <- j + d/2
        self.perm = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], -1).reshape(-1)
        self.head_weight, self.head_bias = model.lm_head.weight, model.lm_head.bias  # [V, h], [V] or None
        self.final_norm = inner.norm
        self._folded_head = None  # built on the first _logits call: the [h, V] copy only sampling needs
        self.final_eps = self._eps(inner.norm)
        self.layers = [self._layer_weights(layer) for layer in inner.layers]
        device = self.embed.device
        positions = torch.arange(capacity, device=device)[None]
        cos, sin = inner.rotary_emb(self.embed[:1][None], positions)  # [1, cap, d] each, HF's own RoPE values
        cos, sin = cos[0].float(), sin[0].float()
        if not (torch.equal(cos[:, :d // 2], cos[:, d // 2:]) and torch.equal(sin[:, :d // 2], sin[:, d // 2:])):
            raise ValueError("unexpected rotary layout: cos/sin halves differ")
        self.rope = torch.complex(cos[:, :d // 2], sin[:, :d // 2])  # [cap, d/2]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0
        self.key_mask: torch.Tensor | None = None  # [A, cap] additive: 0 where a key may be attended, min elsewhere

    def _eps(self, norm) -> torch.Tensor:
        """sqrt(n * eps) of an RMSNorm, for `_normed_linear`."""
        return torch.tensor((self.hidden * norm.variance_epsilon) ** 0.5, dtype=torch.float32, device=self.embed.device)

    def _layer_weights(self, layer) -> dict:
        """One layer's weights in the decoder's form: q/k/v and gate/up concatenated, [in, out] (transposed) so
        `x @ w` is the projection; the RMSNorm weight before each block folded into its input rows
        (RMSNorm(x) W = r(x) * (x @ diag(g) W), r(x) = rsqrt(mean(x^2) + eps)); the attention scale folded
        into W_q; each head's q/k rows permuted for the complex RoPE."""
        attn, mlp = layer.self_attn, layer.mlp
        d, perm, merge = self.head_dim, self.perm, self.merge_lora

        def parts(linear):  # (weight [out, in], bias, LoRA (A [R, in], B [out, R]) or None), merged if asked
            w, b, lora = linear_parts(linear)
            if lora is not None and merge:
                w, lora = (w.float() + lora[1].float() @ lora[0].float()).to(w.dtype), None
            return w, b, lora

        def heads(linear, n, scale=1.0):  # weight [n*d, in], bias [n*d], LoRA B [n*d, R]: each head's rows permuted
            w, b, lora = parts(linear)
            w = w.view(n, d, -1)[:, perm].reshape(n * d, -1) * scale
            b = b.view(n, d)[:, perm].reshape(-1) * scale if b is not None else None
            if lora is not None:
                lora = (lora[0], lora[1].reshape(n, d, -1)[:, perm].reshape(n * d, -1) * scale)
            return w, b, lora

        def fold(blocks, norm):  # [(weight [out, in], bias, LoRA)] -> (sqrt(n) diag(g) W^T, bias, LoRA branch)
            gain = norm.weight.float()[None, :] * self.hidden ** 0.5
            weights, biases = [x[0] for x in blocks], [x[1] for x in blocks]
            w = torch.cat(weights).float() * gain
            b = None
            if any(x is not None for x in biases):
                b = torch.cat([x if x is not None else torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
                               for x, m in zip(biases, weights)])
            return w.t().contiguous().to(norm.weight.dtype), b, _lora_branch(blocks, gain, norm.weight.dtype)

        def plain(linear):  # no norm before it: (W^T, bias, LoRA branch)
            w, b, lora = parts(linear)
            return w.t().contiguous(), b, _lora_branch([(w, b, lora)], None, w.dtype)

        return dict(
            eps1=self._eps(layer.input_layernorm), eps2=self._eps(layer.post_attention_layernorm),
            qkv=fold([heads(attn.q_proj, self.heads, self.scale), heads(attn.k_proj, self.kv_heads),
                      parts(attn.v_proj)], layer.input_layernorm),
            o=plain(attn.o_proj),
            gate_up=fold([parts(mlp.gate_proj), parts(mlp.up_proj)], layer.post_attention_layernorm),
            down=plain(mlp.down_proj),
        )

    # ---- the forward -------------------------------------------------------------------------------------
    @staticmethod
    def _normed_linear(x: torch.Tensor, eps: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None,
                       lora: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """RMSNorm(x) W + b with the norm weight and sqrt(n) folded into W (see `_layer_weights`):

            x / sqrt(mean(x^2) + eps) diag(g) W = (x / hypot(||x||, sqrt(n eps))) @ sqrt(n) diag(g) W

        two small ops (a norm and a hypot, in fp32 as HF's RMSNorm) instead of HF's five. `eps` holds
        sqrt(n eps) as a 0-d fp32 tensor (`_eps`). `lora` (A', B'): + (h A') B', the unmerged LoRA branch."""
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        h = x / torch.hypot(norm, eps).to(x.dtype)  # scaled before the matmul: in < out, and a cheap backward
        out = h @ weight_t if bias is None else torch.addmm(bias, h, weight_t)
        return out if lora is None else torch.addmm(out, h @ lora[0], lora[1])

    @staticmethod
    def _residual(x: torch.Tensor, h: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None,
                  lora: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x + h W (+ b) (+ (h A') B'), one addmm (and the LoRA branch's two thin ones)."""
        out = torch.addmm(x, h, weight_t)
        out = out if bias is None else out.add_(bias)
        return out if lora is None else out.addmm_(h @ lora[0], lora[1])

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 repeats: int = 1, rows: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        """input_ids [A, T], positions [A, T] (rotary positions), mask [A, 1, T, L + T] additive.

        Writes the T new keys/values at cache columns [L, L + T) and returns the last position's hidden
        state [A, hidden] (before the final norm). Prefill (L = 0) attends to its own keys/values and writes
        each row's into `repeats` consecutive cache rows (the cache holds N * repeats rows), at columns
        [offset, offset + T) of prompts `rows` [A] (None: all N = A prompts)."""
        a, t = input_ids.shape
        h_, kv, d = self.heads, self.kv_heads, self.head_dim
        rep, start, end = h_ // kv, self.length, self.length + t
        if (offset + t if start == 0 else end) > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded")
        rope = self.rope[positions][:, :, None, :]  # [A, T, 1, d/2]
        mask = mask.expand(a, kv * rep, t, end).reshape(a * kv, rep * t, end)  # [A*KV, rep*T, L+T]
        x = F.embedding(input_ids, self.embed).reshape(a * t, self.hidden)
        for i, w in enumerate(self.layers):
            qkv = self._normed_linear(x, w["eps1"], *w["qkv"])  # [A*T, (H + 2 KV) d]
            qk = qkv[:, :(h_ + kv) * d].reshape(a, t, h_ + kv, d // 2, 2)
            qk = torch.view_as_real(torch.view_as_complex(qk.float()) * rope).to(x.dtype)  # [A, T, H+KV, d/2, 2]
            q = qk[:, :, :h_].reshape(a, t, kv, rep, d).permute(0, 2, 3, 1, 4).reshape(a * kv, rep * t, d)
            new_k = qk[:, :, h_:].reshape(a, t, kv, d).transpose(1, 2)  # [A, KV, T, d]
            new_v = qkv[:, (h_ + kv) * d:].reshape(a, t, kv, d).transpose(1, 2)
            if start == 0:  # prefill: attend to the new keys; fill each row's `repeats` cache rows at once
                cache_shape = (self.keys[i].shape[0] // repeats, repeats, kv, self.capacity, d)
                where = (slice(None) if rows is None else rows, slice(None), slice(None), slice(offset, offset + t))
                self.keys[i].view(cache_shape)[where] = new_k[:, None]
                self.values[i].view(cache_shape)[where] = new_v[:, None]
                keys, values = new_k.reshape(a * kv, end, d), new_v.reshape(a * kv, end, d)
            else:
                self.keys[i][:, :, start:end] = new_k
                self.values[i][:, :, start:end] = new_v
                keys = self.keys[i][:, :, :end].reshape(a * kv, end, d)
                values = self.values[i][:, :, :end].reshape(a * kv, end, d)
            scores = torch.baddbmm(mask, q, keys.transpose(1, 2))  # [A*KV, rep*T, L+T], scale folded in W_q
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)
            out = probs.bmm(values).view(a, kv, rep, t, d).permute(0, 3, 1, 2, 4).reshape(a * t, h_ * d)
            x = self._residual(x, out, *w["o"])
            gate_up = self._normed_linear(x, w["eps2"], *w["gate_up"])
            x = self._residual(x, F.silu(gate_up[:, :self.inter]).mul_(gate_up[:, self.inter:]), *w["down"])
        self.length = end
        return x.view(a, t, self.hidden)[:, -1]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm and the LM head (its weight folded with the norm's), [A, hidden] -> [A, V]."""
        if self._folded_head is None:
            w = self.head_weight
            self._folded_head = ((w.float() * self.final_norm.weight.float()[None] * self.hidden ** 0.5)
                                 .t().contiguous().to(w.dtype), self.head_bias)
        return self._normed_linear(hidden, self.final_eps, *self._folded_head)

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final RMSNorm alone, [rows, hidden] -> [rows, hidden]: what the LM head reads (`head_weight`,
        `head_bias`), for `alignkit.logprobs.head_logprobs`. Same arithmetic as `_logits`' folded form."""
        norm = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True, dtype=torch.float32)
        gain = (self.final_norm.weight.float() * self.hidden ** 0.5).to(hidden.dtype)
        return hidden / torch.hypot(norm, self.final_eps).to(hidden.dtype) * gain

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                repeats: int = 1, *, bucket_overhead: int | None = PREFILL_BUCKET_OVERHEAD) -> torch.Tensor:
        """Left-padded prompts input_ids / attention_mask / positions [N, P] -> last-position logits [N, V].

        Each prompt is computed once; the cache gets N * repeats rows (prompt i -> rows i*repeats ..
        i*repeats + repeats - 1, for G samples per prompt). Pad keys are masked for every later step.

        Prompts of different lengths are computed in length buckets (`length_buckets`, `bucket_overhead`
        tokens of cost per bucket; None: one bucket): a bucket runs only its own longest prompt's width of
        the left padding, its keys/values written at the right-aligned cache columns [P - width, P), the
        columns left of them zeroed (masked, never attended). The values equal one [N, P] forward (the pad
        columns a bucket skips are masked keys); on 100 word-problem prompts of 98-204 tokens the padded
        forward computed 20,400 positions for 12,474 real ones. Cache columns past P are left uninitialized:
        no step reads them before writing."""
        n, p = input_ids.shape
        dtype, device = self.embed.dtype, self.embed.device
        shape = (n * repeats, self.kv_heads, self.capacity, self.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]
        neg = torch.finfo(dtype).min
        key_mask = torch.zeros((n, self.capacity), dtype=dtype, device=device)  # generated tokens: attended
        key_mask[:, :p].masked_fill_(~attention_mask.bool(), neg)
        causal = torch.ones(p, p, dtype=torch.bool, device=device).tril()
        self.key_mask = key_mask.repeat_interleave(repeats, dim=0) if repeats > 1 else key_mask
        lengths = attention_mask.sum(-1).tolist()
        buckets = [list(range(n))] if bucket_overhead is None else length_buckets(lengths, bucket_overhead)
        if len(buckets) == 1:
            buckets = [None]  # all rows at the full width: no row indexing
        hidden = torch.empty((n, self.hidden), dtype=dtype, device=device)
        for bucket in buckets:
            rows = None if bucket is None else torch.tensor(bucket, device=device)
            width = p if bucket is None else max(max(lengths[i] for i in bucket), 1)
            off = p - width
            if off:  # the skipped pad columns: zeros (masked keys must not be uninitialized NaNs)
                cache_rows = (rows[:, None] * repeats + torch.arange(repeats, device=device)).reshape(-1)
                for cache in (*self.keys, *self.values):
                    cache[cache_rows, :, :off] = 0
            sel = slice(None) if rows is None else rows
            mask = key_mask[sel, None, None, off:p].masked_fill(~causal[off:, off:], neg)  # [A, 1, W, W]
            self.length = 0
            out = self._forward(input_ids[sel, off:], positions[sel, off:], mask, repeats, rows, off)
            if rows is None:
                hidden = out
            else:
                hidden[rows] = out
        self.length = p
        return self._logits(hidden)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One decode step: tokens [A] at rotary positions [A] -> logits [A, V]."""
        mask = self.key_mask[:, None, None, :self.length + 1]  # [A, 1, 1, L+1]
        return self._logits(self._forward(tokens[:, None], positions[:, None], mask))

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the current rows), in that order. Only the written cache columns
        [0, length) are copied; the rest of the new cache is left uninitialized, as after `prefill`."""
        n = self.length

        def take(cache: torch.Tensor) -> torch.Tensor:
            out = cache.new_empty((rows.numel(), *cache.shape[1:]))
            out[:, :, :n] = cache[:, :, :n].index_select(0, rows)
            return out

        self.keys = [take(k) for k in self.keys]
        self.values = [take(v) for v in self.values]
        self.key_mask = self.key_mask[rows]


def lean_base(model):
    """The transformers model the lean forward reads: ``model`` itself, or the one inside a peft LoRA
    `PeftModel` (its projections then peft `lora.Linear`s); other peft types are returned as they are (and
    not supported)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        if all(c.peft_type == "LORA" for c in model.peft_config.values()):
            return model.get_base_model()
    return model


def _is_lora_linear(m) -> bool:
    if not type(m).__module__.startswith("peft."):
        return False
    from peft.tuners.lora import Linear as LoraLinear

    return type(m) is LoraLinear


def _linear_ok(m) -> bool:
    """A plain `nn.Linear`, or a peft `lora.Linear` over one in the form the decoder reproduces: not merged, no
    variant (DoRA ...), no LoRA bias, no dropout active (training with lora_dropout > 0)."""
    if type(m) is nn.Linear:
        return True
    if not _is_lora_linear(m) or type(m.base_layer) is not nn.Linear or m.merged or getattr(m, "fan_in_fan_out", False):
        return False
    if m.disable_adapters:
        return True
    for name in m.active_adapters:
        if name not in m.lora_A:
            continue
        a, b, drop = m.lora_A[name], m.lora_B[name], m.lora_dropout[name]
        if name in getattr(m, "lora_variant", {}) or getattr(m, "use_dora", {}).get(name, False):
            return False
        if type(a) is not nn.Linear or type(b) is not nn.Linear or a.bias is not None or b.bias is not None:
            return False
        if not (type(drop) is nn.Identity or (type(drop) is nn.Dropout and (drop.p == 0 or not drop.training))):
            return False
    return True


def linear_parts(m) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """(weight [out, in], bias, LoRA) of a `_linear_ok` module; LoRA = (A [R, in], B [out, R]) of its active
    adapters stacked along R, each B times its scaling (sum_a s_a B_a A_a = B A), or None."""
    if type(m) is nn.Linear:
        return m.weight, m.bias, None
    base = m.base_layer
    if m.disable_adapters:
        return base.weight, base.bias, None
    active = [name for name in m.active_adapters if name in m.lora_A]
    if not active:
        return base.weight, base.bias, None
    a = torch.cat([m.lora_A[name].weight for name in active])
    b = torch.cat([m.lora_B[name].weight * m.scaling[name] for name in active], 1)
    return base.weight, base.bias, (a, b)


def _lora_branch(blocks, gain: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The unmerged LoRA branch of concatenated projections [(weight [out_i, in], bias, LoRA or None)]:
    A' = (A_i diag(gain))^T stacked [in, R] and B' = block_diag(B_i^T) [R, sum out_i] (a block of no rows
    where a projection has no adapter), so (h A') B' = [h A_1^T B_1^T | ...]. None when no block has one."""
    if all(lora is None for _, _, lora in blocks):
        return None
    scaled = [lora[0].float() * gain if gain is not None else lora[0].float() for _, _, lora in blocks if lora is not None]
    a = torch.cat(scaled).t().to(dtype)
    b = torch.block_diag(*[lora[1].float().t() if lora is not None else w.new_zeros((0, w.shape[0]), dtype=torch.float32)
                           for w, _, lora in blocks]).to(dtype)
    return a, b
