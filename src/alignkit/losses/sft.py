"""Supervised fine-tuning loss: next-token cross-entropy on response tokens."""

from __future__ import annotations

import torch


def sft_loss(logprobs: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Per-token negative log-likelihood -log pi(y_t | x, y_<t) on masked tokens.

    Args:
        logprobs: [B, T] logprobs of the target tokens (aligned with input_ids, see alignkit.logprobs).
        response_mask: [B, T], 1 = target token (completion and its EOS).
    Returns:
        per-token loss [B, T] (0 where masked), metrics (empty; token accuracy needs logits).
    """
    return -logprobs * response_mask, {}
