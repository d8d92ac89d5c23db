"""PPO losses (lecture section 1).

Conventions: every ``*_loss`` is minimized and returns ``(per_token_loss [B, T], metrics)``; reduce it
with :func:`alignkit.losses.aggregate.aggregate_loss`. ``advantages`` may be per token [B, T] or per
sequence [B] (broadcast over tokens). Metrics are detached scalar tensors over the masked tokens.
"""

from __future__ import annotations

import torch

from alignkit.losses.aggregate import masked_mean
from alignkit.losses.kl import kl_divergence


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return advantages[:, None].expand_as(like) if advantages.dim() == 1 else advantages


def policy_gradient_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """REINFORCE: loss_t = -log pi(a_t|s_t) * A_t (the objective L_PG = log pi * A, negated).

    Args:
        logprobs: [B, T]; advantages: [B, T] or [B]; response_mask: [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics.
    """
    adv = _per_token(advantages, logprobs)
    loss = -logprobs * adv * response_mask
    return loss, {"pg/advantage_mean": masked_mean(adv, response_mask).detach()}


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate, per token, as a loss.

        r_t = exp(logprobs - old_logprobs)
        L^CLIP_t = min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t);   loss_t = -L^CLIP_t

    ``clip_eps_high`` (DAPO's asymmetric "clip-higher") defaults to ``clip_eps``.

    Metrics: ``clip_fraction`` (tokens whose clipped branch is selected and differs, i.e. the gradient
    is cut), ``clip_low_fraction`` / ``clip_high_fraction``, ``approx_kl`` = mean k3 KL(pi_old || pi)
    estimated on the samples, and ``ratio_mean``.

    Args:
        logprobs, old_logprobs: [B, T]; advantages: [B, T] or [B]; response_mask: [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    adv = _per_token(advantages, logprobs)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped) * response_mask
    with torch.no_grad():
        low = (ratio < 1.0 - clip_eps) & (adv < 0)
        high = (ratio > 1.0 + eps_high) & (adv > 0)
        metrics = {
            "clip_fraction": masked_mean((low | high).float(), response_mask),
            "clip_low_fraction": masked_mean(low.float(), response_mask),
            "clip_high_fraction": masked_mean(high.float(), response_mask),
            # KL(pi_old || pi) from samples of pi_old: k3 with logprobs as "ref" side.
            "approx_kl": masked_mean(kl_divergence(old_logprobs, logprobs, estimator="k3"), response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
        }
    return loss, metrics


def ppo_kl_penalty_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, dict]:
    """PPO with an adaptive KL penalty instead of clipping (Schulman et al. 2017, L^KLPEN), per token.

        loss_t = -(r_t A_t - beta * KL_t),  KL_t = k3 estimate of KL(pi_old || pi) on samples of pi_old

    ``beta`` usually comes from :class:`alignkit.losses.kl.AdaptiveKLController`.
    """
    adv = _per_token(advantages, logprobs)
    ratio = torch.exp(logprobs - old_logprobs)
    kl = kl_divergence(old_logprobs, logprobs, estimator="k3")
    loss = -(ratio * adv - beta * kl) * response_mask
    return loss, {"approx_kl": masked_mean(kl, response_mask).detach()}


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    old_values: torch.Tensor | None = None,
    clip_range: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """Critic loss L^VF_t = (V(s_t) - V^targ_t)^2 (the lecture's form: no 1/2 factor).

    With ``clip_range`` and ``old_values`` (PPO2's value clipping):
        V_clip = old + clip(V - old, -c, c);  loss_t = max((V - R)^2, (V_clip - R)^2)

    Args:
        values, returns, response_mask (and old_values): [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics (``value_clip_fraction`` when clipping).
    """
    loss = (values - returns).square()
    metrics = {}
    if clip_range is not None:
        if old_values is None:
            raise ValueError("value clipping (clip_range) needs old_values")
        v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        loss_clipped = (v_clipped - returns).square()
        metrics["value_clip_fraction"] = masked_mean((loss_clipped > loss).float(), response_mask).detach()
        loss = torch.maximum(loss, loss_clipped)
    return loss * response_mask, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, in nats.

    S[pi](s_t) = -sum_a pi(a|s_t) log pi(a|s_t) = logsumexp(z) - sum_a softmax(z)_a z_a.

    Args:
        logits: [..., V] unnormalized scores.
    Returns:
        [...] entropy per position.
    """
    logits = logits.float()
    pd = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (pd * logits).sum(dim=-1)


def ppo_objective(
    clip_objective: torch.Tensor, value_loss: torch.Tensor, entropy: torch.Tensor, *, c1: float = 0.5,
    c2: float = 0.01,
) -> torch.Tensor:
    """The combined objective L^{CLIP+VF+S} = L^CLIP - c1 * L^VF + c2 * S (maximized).

    Inputs are already-reduced scalars (or matching tensors). The loss to minimize is its negation,
    -L^CLIP + c1 * L^VF - c2 * S. Lecture example (exact, see ERRATA): -0.73 - 0.5*0.09 + 0.01*3.2 = -0.743.
    """
    return clip_objective - c1 * value_loss + c2 * entropy
