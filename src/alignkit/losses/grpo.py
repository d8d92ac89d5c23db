"""GRPO loss (lecture section 3; Shao et al. 2024, DeepSeekMath).

Per token, with rho_t = pi(o_t) / pi_old(o_t) and the group-normalized advantage A_i of sequence i:

    l_{i,t} = -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_t
    KL_t = k3 estimate of KL(pi || pi_ref) = pi_ref/pi - 1 - log(pi_ref/pi)

then reduced with one of the aggregations of :mod:`alignkit.losses.aggregate`. The KL sits in the loss
(not in the reward, unlike PPO-RLHF). With one update per batch, old_logprobs = logprobs.detach() and
the ratio is 1: nothing clips (ERRATA).
"""

from __future__ import annotations

import torch

from alignkit.losses.aggregate import aggregate_loss, masked_mean
from alignkit.losses.kl import kl_divergence
from alignkit.losses.ppo import ppo_policy_loss


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.04,
    kl_estimator: str = "k3",
    aggregation: str = "seq_mean_token_mean",
    num_sequences: float | None = None,
    num_tokens: float | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """GRPO loss, reduced to a scalar.

    Args:
        logprobs, old_logprobs: [B, T] current and behaviour-policy logprobs of the sampled tokens.
        ref_logprobs: [B, T], or None when beta == 0 (no reference model).
        advantages: [B] per sequence (or [B, T]).
        response_mask: [B, T].
        num_sequences, num_tokens, max_tokens: global normalizers, see ``aggregate_loss``.
    Returns:
        scalar loss, metrics (clip fractions, approx_kl to pi_old, ``kl`` to the reference).
    """
    per_token, metrics = ppo_policy_loss(
        logprobs, old_logprobs, advantages, response_mask, clip_eps=clip_eps, clip_eps_high=clip_eps_high
    )
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("grpo_loss: beta != 0 needs ref_logprobs (or set beta=0 to drop the KL term)")
        kl = kl_divergence(logprobs, ref_logprobs, estimator=kl_estimator)
        per_token = per_token + beta * kl * response_mask
        metrics["kl"] = masked_mean(kl, response_mask).detach()
    loss = aggregate_loss(
        per_token, response_mask, mode=aggregation, num_sequences=num_sequences, num_tokens=num_tokens,
        max_tokens=max_tokens,
    )
    return loss, metrics
