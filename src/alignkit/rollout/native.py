"""The native backend: a KV-cached decode loop over any HF causal LM that takes `past_key_values`.

Per call:
1. Prefill: the N prompts, LEFT-padded, run once (position ids = cumsum(mask) - 1, a 2-D attention mask,
   a fresh `DynamicCache` whose layers are `PreallocatedLayer`s sized for prompt + max_new_tokens, logits of
   the last position only).
2. The prefill cache and last logits are repeated G times (`DynamicCache.batch_repeat_interleave`), so each
   prompt is encoded once and shared by its G samples.
3. Decode: per step one `sample_tokens` and one forward of the [A, 1] new tokens. Rows that end (EOS, stop
   string) leave the active batch: the cache (`batch_select_indices`), attention mask, position ids and row
   map are compacted, so later steps cost only what is still running. Nothing else runs per token (stop
   strings, when given, decode a short window of the active rows' last tokens).

Llama-family models (`FastDecoder.supports`: plain, or peft LoRA, whose adapters are merged into the
decoder's weight snapshot for the call) run prefill and steps through `alignkit.models.decoder.FastDecoder`
(the same computation as `model.forward` with only tensor ops; the prompt's keys/values are written once
into its G rows); others and `fast=False` through `model.forward` and a `DynamicCache` as above.

`compile=True` runs the decode step through `torch.compile` with static shapes: the prefill cache is copied
into a `StaticCache` of capacity round_up(P + max_new_tokens, 64), every step feeds all B rows (finished rows
are not computed on further: their outputs are ignored, but they stay in the batch so shapes never change)
and a fixed-width attention mask. One graph per (B, capacity) per model class and process; the first call
with a new shape pays the compilation. Full-attention models only.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer

from alignkit.models.decoder import FastDecoder
from alignkit.rollout.sampling import sample_tokens
from alignkit.rollout.types import Samples

_COMPILED: dict[type, object] = {}  # model class -> torch.compile'd unbound forward


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> input_ids [N, P] int64 left-padded with `pad_id`, attention_mask [N, P] int64."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


class StopStringMatcher:
    """Finds the step at which a row's decoded completion first contains one of `stop`.

    Each step decodes only the last `window` tokens of a row (enough tokens to spell the longest stop
    string when every token decodes to at least one character, plus slack for multi-token characters),
    so the work per step does not grow with the completion.
    """

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.window = max(len(s) for s in self.stop) + 3

    def hits(self, windows: list[list[int]]) -> list[bool]:
        """For each token list (a row's last tokens), whether its decoded text contains a stop string."""
        texts = self.tokenizer.batch_decode(windows, skip_special_tokens=True)
        return [any(s in t for s in self.stop) for t in texts]

    def first_hit(self, tokens: Sequence[int]) -> int | None:
        """Index of the token that completes the first stop string in `tokens`, or None (used by the hf backend)."""
        for t in range(len(tokens)):
            if self.hits([list(tokens[max(0, t + 1 - self.window):t + 1])])[0]:
                return t
        return None


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys / values live in buffers [B, H, capacity, D] allocated once: each step
    writes its new token in place and exposes views of the filled part. `DynamicLayer` (what
    `model.generate` uses) instead `torch.cat`s the whole cache every step, copying O(length) per token.
    Naive equivalent: `DynamicLayer`; the greedy parity test covers both."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b, h, _, d = key_states.shape
        self.key_buffer = key_states.new_empty((b, h, self.capacity, d))
        self.value_buffer = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded")
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
        self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def _new_cache(model, capacity: int) -> DynamicCache:
    """A DynamicCache; with preallocated layers where every layer is a plain full-attention DynamicLayer
    (sliding-window or linear-attention layers keep their own classes)."""
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def _to_static(model, cache: DynamicCache, capacity: int) -> StaticCache:
    """Copy a filled (preallocated) DynamicCache into a StaticCache of `capacity` tokens, for compiled steps."""
    if not all(isinstance(layer, PreallocatedLayer) for layer in cache.layers):
        raise ValueError("compile=True supports full-attention models only; use compile=False")
    static = StaticCache(config=model.config, max_cache_len=capacity)
    for dst, src in zip(static.layers, cache.layers):
        dst.lazy_initialization(src.keys[:, :, :1], src.values[:, :, :1])
        dst.keys[:, :, :src.length] = src.keys
        dst.values[:, :, :src.length] = src.values
        dst.cumulative_length.fill_(src.length)
    return static


def _supports_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _decode_fn(model, compile: bool):
    """The callable for decode steps: the bound forward, or a compiled unbound forward shared per class."""
    if not compile:
        return model.forward
    cls = type(model)
    if cls not in _COMPILED:
        _COMPILED[cls] = torch.compile(cls.forward, dynamic=False)
    compiled = _COMPILED[cls]
    return lambda **kw: compiled(model, **kw)


def _cache_keyword(model) -> str:
    """The forward's name for the KV cache: ``cache`` where transformers has it (``past_key_values`` is
    deprecated there, to be removed in 5.40), else ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _last_logits(fn, keep_last: bool, cache_kw: str = "past_key_values", **inputs) -> torch.Tensor:
    """One forward -> logits of the last position [A, V]; ``inputs["past_key_values"]`` is passed under
    ``cache_kw``."""
    if keep_last:
        inputs["logits_to_keep"] = 1
    if "past_key_values" in inputs and cache_kw != "past_key_values":
        inputs[cache_kw] = inputs.pop("past_key_values")
    return fn(**inputs, use_cache=True).logits[:, -1, :]


@torch.inference_mode()
def generate_native(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    generator: torch.Generator,
    stop: StopStringMatcher | None = None,
    compile: bool = False,
    fast: bool = True,
) -> Samples:
    """Sample `num_samples` completions of each prompt (token-id lists); see the module docstring.

    Returns `Samples` with B = len(prompts) * num_samples group-contiguous rows and C = longest completion.
    """
    device = next(model.parameters()).device
    group, budget = num_samples, max_new_tokens
    input_ids, prompt_mask = left_pad(prompts, pad_token_id, device)
    batch, width = len(prompts) * group, input_ids.shape[1]
    keep_last = _supports_logits_to_keep(model)
    cache_kw = _cache_keyword(model)
    positions = (prompt_mask.cumsum(-1) - 1).clamp_(min=0)
    decoder = FastDecoder(model, width + budget) if fast and not compile and FastDecoder.supports(model) else None
    if decoder is not None:
        logits = decoder.prefill(input_ids, prompt_mask, positions, repeats=group)
        cache = None
    else:
        cache = _new_cache(model, width + budget)
        logits = _last_logits(model.forward, keep_last, cache_kw, input_ids=input_ids, attention_mask=prompt_mask,
                              position_ids=positions, past_key_values=cache)
    if group > 1:
        if decoder is None:
            cache.batch_repeat_interleave(group)
        logits = logits.repeat_interleave(group, dim=0)
    capacity = -(-(width + budget) // 64) * 64 if compile else width + budget
    if compile:
        cache = _to_static(model, cache, capacity)
        feed = torch.full((batch,), pad_token_id, dtype=torch.long, device=device)  # static [B] step input
    # compiled: 0 until a position is written; eager: sliced to the written width each step
    mask = torch.full((batch, capacity), 0 if compile else 1, dtype=torch.long, device=device)
    mask[:, :width] = prompt_mask.repeat_interleave(group, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(group, dim=0) + 1  # [A, 1]
    rows = torch.arange(batch, device=device)  # output row of each active row
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)
    out_ids = torch.full((batch, budget), pad_token_id, dtype=torch.long, device=device)
    out_lp = torch.zeros((batch, budget), dtype=torch.float32, device=device)
    lengths = [budget] * batch
    reasons = ["length"] * batch
    history = [[] for _ in range(batch)] if stop is not None else None
    step_fn = _decode_fn(model, compile)
    can_end = eos.numel() > 0 or history is not None  # else skip the per-step end check (and its sync)
    steps = 0
    for step in range(budget):
        tokens, logprobs = sample_tokens(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                         generator=generator)
        out_ids[rows, step] = tokens
        out_lp[rows, step] = logprobs
        steps = step + 1
        if steps == budget:
            _record_ends(rows, tokens, eos, history, stop, lengths, reasons, steps)
            break
        if can_end:
            keep = _record_ends(rows, tokens, eos, history, stop, lengths, reasons, steps)
            if keep is not None:
                if keep.numel() == 0:
                    break
                rows, tokens = rows[keep], tokens[keep]
                if decoder is not None:
                    next_pos = next_pos[keep]
                    decoder.select(keep)
                elif not compile:
                    mask, next_pos = mask[keep], next_pos[keep]
                    cache.batch_select_indices(keep)
        if compile:  # static shapes: all B rows, finished ones fed their last token and ignored
            feed.index_copy_(0, rows, tokens)
            mask[:, width + step] = 1
            logits = _last_logits(step_fn, keep_last, cache_kw, input_ids=feed[:, None], attention_mask=mask,
                                  position_ids=next_pos, past_key_values=cache)[rows]
        elif decoder is not None:
            logits = decoder.step(tokens, next_pos[:, 0])
        else:
            logits = _last_logits(step_fn, keep_last, cache_kw, input_ids=tokens[:, None],
                                  attention_mask=mask[:, :width + steps], position_ids=next_pos,
                                  past_key_values=cache)
        next_pos = next_pos + 1
    return Samples(out_ids[:, :steps], out_lp[:, :steps],
                   torch.tensor(lengths, dtype=torch.long, device=device).clamp_(max=steps), reasons)


def _record_ends(rows, tokens, eos, history, stop, lengths, reasons, steps) -> torch.Tensor | None:
    """Mark active rows whose new token ends them (EOS, else a completed stop string): set their length to
    `steps` and their finish reason. Returns the indices of the rows that go on, or None if none ended."""
    done = torch.isin(tokens, eos) if eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)
    is_eos = done
    if history is not None:
        done = done | _stop_hits(stop, history, rows, tokens, done)
    if not done.any():
        return None
    for r, e in zip(rows[done].tolist(), is_eos[done].tolist()):
        lengths[r], reasons[r] = steps, "eos" if e else "stop"
    return (~done).nonzero()[:, 0]


def _stop_hits(stop: StopStringMatcher, history: list[list[int]], rows: torch.Tensor, tokens: torch.Tensor,
               done: torch.Tensor) -> torch.Tensor:
    """Append each active row's new token to its history; [A] bool: rows whose text now holds a stop string.

    Rows already ending on EOS are not checked (EOS wins).
    """
    checked, windows = [], []
    for i, (r, t, d) in enumerate(zip(rows.tolist(), tokens.tolist(), done.tolist())):
        history[r].append(t)
        if not d:
            checked.append(i)
            windows.append(history[r][-stop.window:])
    hit = [False] * len(done)
    for i, h in zip(checked, stop.hits(windows) if windows else []):
        hit[i] = h
    return torch.tensor(hit, dtype=torch.bool, device=done.device)
