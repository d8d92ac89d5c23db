"""Masked reductions and loss aggregation.

Per-token losses [B, T] are kept apart from how they are reduced to a scalar. Every mode accepts global
normalizers (``num_sequences``, ``num_tokens``) so that a batch split into micro-batches, or across
processes, sums to exactly the loss of the whole batch (OpenRLHF ``aggregate_loss``; tested in
tests/invariance/test_aggregation.py).
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) over ``dim`` (all dims if None). Masked entries never contribute, even if NaN."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask) over ``dim``; an empty slice gives 0, never NaN."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def aggregate_loss(
    per_token_loss: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    mode: str = "seq_mean_token_mean",
    num_sequences: float | None = None,
    num_tokens: float | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    Modes (l_{i,t} the loss of token t of sequence i, m_{i,t} the response mask, |o_i| = sum_t m_{i,t}):

    - ``seq_mean_token_mean`` (GRPO paper): (1/N) sum_i (1/|o_i|) sum_t m l
    - ``token_mean`` (DAPO): (1/sum_i |o_i|) sum_{i,t} m l
    - ``seq_mean_token_sum_norm`` (Dr. GRPO): (1/N) sum_i (1/L) sum_t m l, L = ``max_tokens`` (a constant)

    N defaults to the number of rows with at least one response token (fully masked rows, e.g. samples
    left out of the loss, count for nothing); pass ``num_sequences`` / ``num_tokens`` for the whole
    accumulated batch to make micro-batch losses add up to the full-batch loss.

    Args:
        per_token_loss: [B, T].
        response_mask: [B, T], 1 = token counts.
    Returns:
        scalar tensor.
    """
    mask = response_mask.to(per_token_loss.dtype)
    token_sums = masked_sum(per_token_loss, mask, dim=-1)  # [B]
    lengths = mask.sum(dim=-1)  # [B]
    if num_sequences is None:
        num_sequences = (lengths > 0).sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        return (token_sums / lengths.clamp(min=1)).sum() / num_sequences
    if mode == "token_mean":
        if num_tokens is None:
            num_tokens = lengths.sum().clamp(min=1)
        return token_sums.sum() / num_tokens
    if mode == "seq_mean_token_sum_norm":
        if max_tokens is None:
            max_tokens = per_token_loss.shape[-1]
        return token_sums.sum() / (max_tokens * num_sequences)
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")
