"""Forwards every recipe shares, each fast path beside its slow twin.

- :func:`completion_logprobs`: logprobs of group-contiguous completions after their prompts. Fast: each
  distinct prompt computed once (``alignkit.models.grouped``, Llama-family models); slow: one plain forward
  over prompt + completion per row.
- :func:`pair_logps`: summed response logprobs of preference pairs (``alignkit.data.pairs.collate_pairs``).
  Fast: the shared-prefix layout (one row per pair); slow: the plain [2B, T] layout.
- :func:`policy_forward` / :func:`critic_values`: completion logprobs, entropies and values of a rollout
  batch (``alignkit.rollout.batches``). Fast: sequences packed without padding; slow: padded rows.

Every loss-side forward goes through the LM head in chunks where the model allows
(``alignkit.logprobs.head_logprobs``: the final hidden states of the predicting positions only, chunk x V logits
at a time, recomputed in the backward); the slow twins build the model's own [rows, tokens, V] logits.

One switch turns every fast path off, to debug numbers: the environment variable ``ALIGNKIT_SLOW_PATHS=1``
or ``with slow_paths(): ...`` (:func:`fast_paths_enabled`). Recipes also consult it for their own layout
choices (DPO's shared prefix, PPO's packing). Tests assert each pair of paths agrees.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from alignkit.logprobs import fast_paths_enabled, slow_paths  # noqa: F401  (the switch lives one layer down)


def completion_logprobs(model, batch: dict, rows: slice, *, temperature: float, entropy: bool = False):
    """Logprobs [R, C] (and entropies) of the completion tokens of ``rows`` of a rollout batch (prompt_ids,
    prompt_mask [B, P] left-padded; completion_ids, response_mask [B, C]), prompt as context.

    Llama-family models (plain or peft LoRA, not DDP-wrapped) take `alignkit.models.grouped`: each distinct
    prompt of the group-contiguous rows is computed once; others the plain forward over prompt + completion."""
    from alignkit.logprobs import sequence_logprobs
    from alignkit.models import grouped

    if fast_paths_enabled() and grouped.supports(model):
        return grouped.grouped_completion_logprobs(
            model, batch.prompt_ids[rows], batch.prompt_mask[rows], batch.completion_ids[rows],
            batch.response_mask[rows], temperature=temperature, return_entropy=entropy)
    c = batch.completion_ids.shape[1]
    ids = torch.cat([batch.prompt_ids[rows], batch.completion_ids[rows]], dim=1)
    attn = torch.cat([batch.prompt_mask[rows], batch.response_mask[rows]], dim=1)
    out = sequence_logprobs(model, ids, attn, temperature=temperature, logits_to_keep=c, return_entropy=entropy)
    return (out[0][:, -c:], out[1][:, -c:]) if entropy else out[:, -c:]


SHARED_PREFIX_ATTENTION = ("eager", "sdpa")  # implementations that take a custom 4D mask as given


def attention_implementation(model) -> str | None:
    """The transformers attention implementation of ``model`` (DDP and peft wrappers looked through)."""
    model = getattr(model, "module", model)
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def prefix_sharing_mask(segments: torch.Tensor, float_dtype: torch.dtype | None) -> torch.Tensor:
    """[B, 1, L, L] mask of the shared-prefix layout: query q sees key k <= q whose segment is the prefix (0)
    or its own. Boolean (True = attend) for sdpa, additive (0 / dtype min) when ``float_dtype`` is given."""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    keys, queries = segments[:, None, :], segments[:, :, None]
    allow = (causal & ((keys == 0) | (keys == queries)))[:, None]
    if float_dtype is None:
        return allow
    return torch.zeros(allow.shape, dtype=float_dtype, device=allow.device).masked_fill_(~allow, torch.finfo(float_dtype).min)


def pair_logps(model, batch: dict) -> torch.Tensor:
    """[2B] summed response-token logprobs, chosen then rejected, from ONE forward over a :func:`collate` batch
    (either layout). The lm_head runs only from the first column whose logits predict a target.

    Naive equivalent: ``sequence_logprobs(model, ids, mask) * response_mask`` summed per row of the plain
    [2B, T] batch; tests/unit/test_dpo_recipe.py asserts the shared-prefix layout agrees with it."""
    from alignkit.logprobs import (
        final_hidden,
        head_logprobs,
        head_route,
        selective_log_softmax,
        sequence_logprobs,
    )

    if "segments" not in batch:
        mask = batch["response_mask"]
        keep = mask.shape[1] - int(mask.any(0).long().argmax())  # from the first column with any target
        lp = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], logits_to_keep=keep)
        return (lp * mask).sum(-1)
    ids = batch["input_ids"]
    B, L = ids.shape
    rows, cols = (batch["chosen_mask"] + batch["rejected_mask"]).nonzero(as_tuple=True)  # target tokens
    prev = batch["prev"][rows, cols]
    eager = attention_implementation(model) == "eager"
    mask = prefix_sharing_mask(batch["segments"], next(model.parameters()).dtype if eager else None)
    route = head_route(model) if fast_paths_enabled() else None
    if route is not None:  # chunked through the LM head, on the target tokens' predicting positions only
        hidden = final_hidden(model, route[0], input_ids=ids, attention_mask=mask, position_ids=batch["position_ids"])
        lp = head_logprobs(hidden[rows, prev], route[1].weight, route[1].bias, ids[rows, cols])
    else:
        first = int(prev.min())
        logits = model(input_ids=ids, attention_mask=mask, position_ids=batch["position_ids"], use_cache=False,
                       logits_to_keep=L - first).logits  # [B, L - first, V]: columns first .. L-1
        lp = selective_log_softmax(logits[rows, prev - first], ids[rows, cols])
    chosen = lp.new_zeros(B).index_add(0, rows, lp * batch["chosen_mask"][rows, cols])
    rejected = lp.new_zeros(B).index_add(0, rows, lp * batch["rejected_mask"][rows, cols])
    return torch.cat([chosen, rejected])


def policy_forward(model, batch, rows, *, temperature: float, entropy: bool = False, head=None,
                   packing: bool = True):
    """Completion logprobs [R, C] (and entropies, and the shared head's values) of ``rows``; 0 past each
    row's end. ``packing``: one forward over the packed sequences (``batch.packed``) instead of padded rows."""
    from alignkit.logprobs import sequence_logprobs

    c, mask = batch.completion_ids.shape[1], batch.response_mask[rows]
    if packing and fast_paths_enabled():
        ids, attn, pos, index = batch.packed(rows)

        def take(x):  # [N, W] packed -> [R, C] aligned with the completions
            return x.reshape(-1)[index] * mask
    else:
        (ids, attn), pos = batch.sequences(rows), None

        def take(x):
            return x[:, -c:] * mask
    with head.capture(model) if head is not None else ExitStack():
        out = sequence_logprobs(model, ids, attn, temperature=temperature, return_entropy=entropy, position_ids=pos,
                                logits_to_keep=None if packing else c)
    lp, ent = (take(out[0]), take(out[1])) if entropy else (take(out), None)
    values = take(head.values(attn, pos)) if head is not None else None
    return lp, ent, values


def critic_values(critic, batch, rows, *, packing: bool = True) -> torch.Tensor:
    """V(s_t) [R, C] for each completion token of ``rows`` from a critic with its own trunk (0 past the end)."""
    mask = batch.response_mask[rows]
    if packing and fast_paths_enabled():
        ids, attn, pos, index = batch.packed(rows)
        return critic(ids, attn, pos).reshape(-1)[index] * mask
    ids, attn = batch.sequences(rows)
    return critic(ids, attn)[:, -batch.completion_ids.shape[1]:] * mask


