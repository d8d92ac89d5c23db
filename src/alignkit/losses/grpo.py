"""GRPO loss (lecture section 3; Shao et al. 2024, DeepSeekMath).

Per token, with rho_t = pi(o_t) / pi_old(o_t) and the group-normalized advantage A_i of sequence i:

    l_{i,t} = -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_t
    KL_t = k3 estimate of KL(pi || pi_ref) = pi_ref/pi - 1 - log(pi_ref/pi)

then reduced with one of the aggregations of :mod:`alignkit.losses.aggregate`. The KL sits in the loss
(not in the reward, unlike PPO-RLHF; the GRPO recipe's ``loss.kl_in_reward`` moves it into the reward, REINFORCE++
style, and calls this with beta = 0 and token-level advantages [B, T]). With one update per batch, old_logprobs = logprobs.detach() and
the ratio is 1: nothing clips (ERRATA).

The policy term is one of :data:`POLICY_LOSSES` (``policy_loss=``), all of one signature
``fn(logprobs, old_logprobs, advantages, response_mask, *, clip_eps, clip_eps_high) -> (per-token loss
[B, T], metrics)``:

- ``clip``: the token-level clipped surrogate above (PPO; DeepSeekMath's GRPO).
- ``gspo``: one length-normalized importance ratio per sequence, clipped per sequence (GSPO, Zheng et al.
  2025); ``length_normalize=False`` is the lecture's literal sequence ratio pi(o_i)/pi_old(o_i) (GRPO-14).
- ``cispo``: REINFORCE weighted by a clipped, stop-gradient importance weight; no token loses its gradient
  (CISPO, MiniMax-M1 2025).

With old_logprobs == logprobs (one update per batch) all three have the plain policy gradient's gradient.
"""

from __future__ import annotations

import torch

from alignkit.losses.aggregate import aggregate_loss, masked_mean, masked_sum
from alignkit.losses.kl import kl_divergence
from alignkit.losses.ppo import _per_token, ppo_policy_loss


def gspo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
    length_normalize: bool = True,
) -> tuple[torch.Tensor, dict]:
    """GSPO's sequence-level clipped surrogate (Zheng et al. 2025, "Group Sequence Policy Optimization").

        s_i = exp( (1/|o_i|) sum_t m_t (logprobs_t - old_logprobs_t) )     (length_normalize=False: no 1/|o_i|)
        loss_{i,t} = -min(s_{i,t} A_i, clip(s_{i,t}, 1 - eps_low, 1 + eps_high) A_i)
        s_{i,t} = sg(s_i) * pi(o_t) / sg(pi(o_t))        (value s_i; gradient s_i * grad log pi(o_t))

    Every token of sequence i has the value of the sequence objective and the clip decision is one per
    sequence; with the ``seq_mean_token_mean`` aggregation the loss and gradient are GSPO's exactly
    (GSPO-token with a per-sequence advantage). The paper's clip range is tiny because s_i is a geometric
    mean: eps_low = 3e-4, eps_high = 4e-4 (the defaults here; ``grpo_loss`` passes its own clip_eps).

    Metrics: ``clip_fraction`` etc. count tokens of clipped sequences (GSPO's paper counts tokens too),
    ``ratio_mean`` is the mean of s_i over sequences, ``approx_kl`` the token k3 KL(pi_old || pi).

    Args:
        logprobs, old_logprobs: [B, T]; advantages: [B] (or [B, T]); response_mask: [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    adv = _per_token(advantages, logprobs)
    mask = response_mask.to(logprobs.dtype)
    seq_log_ratio = masked_sum(logprobs - old_logprobs, mask, dim=-1)  # [B]
    if length_normalize:
        seq_log_ratio = seq_log_ratio / mask.sum(-1).clamp(min=1)
    ratio = torch.exp(seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach())  # [B, T], value s_i
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped) * mask
    with torch.no_grad():
        low = (ratio < 1.0 - clip_eps) & (adv < 0)
        high = (ratio > 1.0 + eps_high) & (adv > 0)
        rows = mask.sum(-1) > 0
        metrics = {
            "clip_fraction": masked_mean((low | high).float(), mask),
            "clip_low_fraction": masked_mean(low.float(), mask),
            "clip_high_fraction": masked_mean(high.float(), mask),
            "approx_kl": masked_mean(kl_divergence(old_logprobs, logprobs, estimator="k3"), mask),
            "ratio_mean": masked_mean(seq_log_ratio.exp(), rows),
        }
    return loss, metrics


def cispo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """CISPO: clipped importance-sampling weight, stop-gradient, times REINFORCE (MiniMax-M1, 2025).

        r_t = exp(logprobs_t - old_logprobs_t)
        w_t = sg(clip(r_t, 1 - eps_low, 1 + eps_high))
        loss_t = -w_t * A_t * logprobs_t                 gradient: -w_t A_t grad log pi(o_t)

    Unlike the clipped surrogate, a token whose ratio leaves the band keeps its gradient (only its weight is
    capped). MiniMax-M1 sets no lower bound (clip_eps >= 1 makes 1 - clip_eps <= 0, i.e. none) and tunes only
    eps_high. The loss VALUE is not an objective estimate (it carries logprobs); only its gradient is.

    Metrics: ``clip_fraction`` = share of tokens whose weight was capped (either side; the gradient is kept),
    ``clip_low_fraction`` / ``clip_high_fraction``, ``approx_kl``, ``ratio_mean``.

    Args:
        logprobs, old_logprobs: [B, T]; advantages: [B] or [B, T]; response_mask: [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    adv = _per_token(advantages, logprobs)
    ratio = torch.exp(logprobs - old_logprobs).detach()
    weight = torch.clamp(ratio, min=max(1.0 - clip_eps, 0.0), max=1.0 + eps_high)
    loss = -weight * adv * logprobs * response_mask
    with torch.no_grad():
        low, high = ratio < 1.0 - clip_eps, ratio > 1.0 + eps_high
        metrics = {
            "clip_fraction": masked_mean((low | high).float(), response_mask),
            "clip_low_fraction": masked_mean(low.float(), response_mask),
            "clip_high_fraction": masked_mean(high.float(), response_mask),
            "approx_kl": masked_mean(kl_divergence(old_logprobs, logprobs, estimator="k3"), response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
        }
    return loss, metrics


# name -> fn(logprobs, old_logprobs, advantages, response_mask, *, clip_eps, clip_eps_high, **its options)
#      -> (per-token loss [B, T], metrics). Options beyond the clip range: "gspo" length_normalize.
POLICY_LOSSES = {
    "clip": ppo_policy_loss,
    "gspo": gspo_policy_loss,
    "cispo": cispo_policy_loss,
}


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
    policy_loss: str = "clip",
) -> tuple[torch.Tensor, dict]:
    """GRPO loss, reduced to a scalar.

    Args:
        logprobs, old_logprobs: [B, T] current and behaviour-policy logprobs of the sampled tokens.
        ref_logprobs: [B, T], or None when beta == 0 (no reference model).
        advantages: [B] per sequence (or [B, T]).
        response_mask: [B, T].
        num_sequences, num_tokens, max_tokens: global normalizers, see ``aggregate_loss``.
        policy_loss: the policy term, a key of :data:`POLICY_LOSSES` ("clip", "gspo", "cispo"); it gets
            ``clip_eps`` and ``clip_eps_high`` (for "gspo" set them to the paper's 3e-4 / 4e-4).
    Returns:
        scalar loss, metrics (clip fractions, approx_kl to pi_old, ``kl`` to the reference).
    """
    if policy_loss not in POLICY_LOSSES:
        raise ValueError(f"unknown policy_loss {policy_loss!r}; choose one of {', '.join(POLICY_LOSSES)}")
    per_token, metrics = POLICY_LOSSES[policy_loss](
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
