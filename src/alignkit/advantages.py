"""Advantage estimators (lecture sections 1 and 3). Pure: imports torch only.

Row layout: [B, T] token tensors aligned with a ``response_mask`` (1 = a response token); GRPO rewards are
[N] with the G samples of a prompt in contiguous rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.losses.aggregate import masked_mean
from alignkit.losses.kl import kl_divergence


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016), computed backwards.

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),   V after the last response token = 0 (terminal)
        A_t = delta_t + gamma * lam * A_{t+1}  =  sum_l (gamma lam)^l delta_{t+l}
        returns_t = A_t + V(s_t)               (the critic's targets)

    Masked positions (padding on either side, or holes) are skipped: the recursion links each response
    token to the next response token of its row. Lecture example (ERRATA): r = [0.5, 1.2, 2.1],
    V = [0.8, 1.5, 1.9] -> A = [2.848839, 1.7691, 0.2].

    Args:
        rewards: [B, T] per-token rewards (``token_rewards``).
        values: [B, T] critic values V(s_t).
        response_mask: [B, T].
    Returns:
        (advantages [B, T], returns [B, T]), 0 where masked.
    """
    mask = response_mask.to(values.dtype)
    rewards, values = rewards.detach() * mask, values.detach() * mask
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = adv_t * m
        # A masked position passes the next token's value and advantage through unchanged.
        next_value = m * values[:, t] + (1 - m) * next_value
        next_adv = m * adv_t + (1 - m) * next_adv
    returns = (advantages + values) * mask
    return advantages, returns


def discounted_returns(rewards: torch.Tensor, response_mask: torch.Tensor, *, gamma: float = 1.0) -> torch.Tensor:
    """Monte-Carlo returns G_t = sum_l gamma^l r_{t+l} over response tokens (masked positions skipped).

    Equals ``gae(..., lam=1)`` advantages + values. Shapes [B, T] -> [B, T].
    """
    mask = response_mask.to(rewards.dtype)
    running = torch.zeros_like(rewards[:, 0])
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        g = rewards[:, t] * m + gamma * running
        out[:, t] = g * m
        running = m * g + (1 - m) * running
    return out


def whiten(
    x: torch.Tensor, response_mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with masked, population statistics over all tokens of the batch.

    With ``shift_mean=False`` the mean is added back (scale only). Shapes [B, T] -> [B, T], 0 where masked.
    """
    mean = masked_mean(x, response_mask)
    var = masked_mean((x - mean).square(), response_mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * response_mask


def _group_index(n: int, group_size: int | Sequence[int]) -> tuple[torch.Tensor, int]:
    """Row -> group id for fixed (int) or ragged (one size per group) contiguous groups."""
    sizes = [group_size] * (n // group_size) if isinstance(group_size, int) else list(group_size)
    if (isinstance(group_size, int) and n % group_size) or sum(sizes) != n or min(sizes, default=1) < 1:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, got shape ({n},)"
            if isinstance(group_size, int) else f"group sizes {sizes} do not add up to the {n} rewards"
        )
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)), len(sizes)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int | Sequence[int],
    *,
    eps: float = 1e-8,
    std_ddof: int = 0,
    scale: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """GRPO's group-relative advantage, one value per sequence.

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)

    ``std_ddof=0``: population std (divide by G), as every worked example of the lecture; ``std_ddof=1``
    gives TRL's sample std; ``scale=False`` gives Dr. GRPO (A_i = r_i - mean, no division). A group whose
    rewards are all equal gets advantages exactly 0 (never NaN, never a rounding residue / eps).
    Lecture example: r = [1, 1, 0] -> A = [0.7071, 0.7071, -1.4142].

    Args:
        rewards: [N] raw scalar rewards, the samples of a prompt in contiguous rows.
        group_size: G (int, N = num_prompts * G), or one size per group for ragged groups (adaptive G).
        valid: optional [N] bool; False rows (e.g. a failed verifier) are left out of their group's
            statistics and get advantage 0. A group with no more than ``std_ddof`` valid rows gets 0.
    Returns:
        [N] advantages (float32, or the input's float dtype).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if isinstance(group_size, int) and std_ddof >= group_size and scale:
        raise ValueError(f"std_ddof={std_ddof} needs group_size > {std_ddof}, got {group_size}")
    gid, n_groups = _group_index(rewards.numel(), group_size)
    r = rewards if rewards.is_floating_point() else rewards.float()
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool()
    r_valid = torch.where(v, r, torch.zeros_like(r))
    zeros = torch.zeros(n_groups, dtype=r.dtype)
    count = zeros.scatter_add(0, gid, v.to(r.dtype))
    mean = zeros.scatter_add(0, gid, r_valid) / count.clamp(min=1)
    centered = torch.where(v, r - mean[gid], torch.zeros_like(r))
    hi = zeros.scatter_reduce(0, gid, torch.where(v, r, torch.full_like(r, -torch.inf)), "amax", include_self=False)
    lo = zeros.scatter_reduce(0, gid, torch.where(v, r, torch.full_like(r, torch.inf)), "amin", include_self=False)
    degenerate = (hi == lo) | (count <= (std_ddof if scale else 0))
    if scale:
        var = zeros.scatter_add(0, gid, centered.square()) / (count - std_ddof).clamp(min=1)
        centered = centered / (var.sqrt()[gid] + eps)
    return torch.where(degenerate[gid] | ~v, torch.zeros_like(centered), centered)


def zero_variance_groups(rewards: torch.Tensor, group_size: int | Sequence[int]) -> torch.Tensor:
    """[N] rewards -> [num_groups] bool: True where every sample of the group got the same reward
    (such a group has zero advantages and contributes no policy gradient)."""
    gid, n_groups = _group_index(rewards.numel(), group_size)
    r = rewards.float()
    hi = torch.zeros(n_groups).scatter_reduce(0, gid, r, "amax", include_self=False)
    lo = torch.zeros(n_groups).scatter_reduce(0, gid, r, "amin", include_self=False)
    return hi == lo


def rloo_advantages(
    rewards: torch.Tensor,
    group_size: int | Sequence[int],
    *,
    valid: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """RLOO: REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024).

        A_i = r_i - (1 / (n - 1)) sum_{j != i} r_j  =  n / (n - 1) * (r_i - mean_g(r))

    over the n valid rows of the group. No division by a std (``eps`` is accepted for the shared signature
    of :data:`ADVANTAGE_ESTIMATORS` and unused). Invalid rows are left out of every baseline and get 0; a
    group with fewer than 2 valid rows, or whose valid rewards are all equal, gets exactly 0.

    Args:
        rewards: [N] raw scalar rewards, the samples of a prompt in contiguous rows.
        group_size: G, or one size per group (ragged groups).
        valid: optional [N] bool.
    Returns:
        [N] advantages.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    gid, n_groups = _group_index(rewards.numel(), group_size)
    r = rewards if rewards.is_floating_point() else rewards.float()
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool()
    zeros = torch.zeros(n_groups, dtype=r.dtype)
    count = zeros.scatter_add(0, gid, v.to(r.dtype))
    total = zeros.scatter_add(0, gid, torch.where(v, r, torch.zeros_like(r)))
    baseline = (total[gid] - r) / (count[gid] - 1).clamp(min=1)
    hi = zeros.scatter_reduce(0, gid, torch.where(v, r, torch.full_like(r, -torch.inf)), "amax", include_self=False)
    lo = zeros.scatter_reduce(0, gid, torch.where(v, r, torch.full_like(r, torch.inf)), "amin", include_self=False)
    degenerate = (hi == lo) | (count < 2)
    return torch.where(degenerate[gid] | ~v, torch.zeros_like(r), r - baseline)


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    group_size: int | Sequence[int],
    *,
    valid: torch.Tensor | None = None,
    eps: float = 1e-8,
    baseline: str = "group",
) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025), sequence level: a baseline, then normalization over the WHOLE batch.

        x_i = r_i - mean_g(r)   (baseline="group": REINFORCE++-baseline; all-equal groups give x = 0)
        x_i = r_i - mean_B(r)   (baseline="batch": the plain REINFORCE++ of a batch with one sample a prompt)
        A_i = x_i / (std_B(x) + eps)     population std over every valid row of the batch

    Unlike GRPO no group's std is used: a group with a small reward gap keeps a small advantage. With the
    group baseline the batch mean of x is 0 already and is not subtracted again, so rows of all-equal groups
    stay exactly 0. Invalid rows are left out of every statistic and get 0; an all-equal batch gives 0.

    REINFORCE++ puts the KL to the reference in the reward, per token: the token-level form is
    :func:`reinforce_pp_token_advantages` of the x above (:func:`reinforce_pp_baseline`).

    Args:
        rewards: [N] raw scalar rewards, the samples of a prompt in contiguous rows.
        group_size: G, or one size per group (ragged groups).
        valid: optional [N] bool.
        baseline: "group" or "batch".
    Returns:
        [N] advantages.
    """
    x = reinforce_pp_baseline(rewards, group_size, valid=valid, baseline=baseline)
    v = torch.ones_like(x, dtype=torch.bool) if valid is None else valid.bool()
    if not (x != 0).any():
        return x
    std = (x[v] - x[v].mean()).square().mean().sqrt()
    return torch.where(v, x / (std + eps), torch.zeros_like(x))


def reinforce_pp_baseline(
    rewards: torch.Tensor,
    group_size: int | Sequence[int],
    *,
    valid: torch.Tensor | None = None,
    baseline: str = "group",
) -> torch.Tensor:
    """REINFORCE++'s x before the batch normalization: x_i = r_i - mean_g(r) ("group") or r_i - mean_B(r)
    ("batch"), over valid rows (invalid rows 0). A batch whose valid rewards are all equal gives exactly 0.
    Shapes [N] -> [N]; see :func:`reinforce_pp_advantages`."""
    if baseline not in ("group", "batch"):
        raise ValueError(f"unknown REINFORCE++ baseline {baseline!r}; choose group or batch")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    _group_index(rewards.numel(), group_size)
    r = rewards if rewards.is_floating_point() else rewards.float()
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool()
    zeros = torch.zeros_like(r)
    if not v.any() or r[v].max() == r[v].min():
        return zeros
    if baseline == "group":
        return group_advantages(r, group_size, scale=False, valid=v)
    return torch.where(v, r - r[v].mean(), zeros)


def kl_shaped_token_rewards(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """Per-token rewards with the KL to the reference as reward shaping (InstructGPT; PPO-RLHF, REINFORCE++).

        token_rewards_t = -beta * KL_t  (+ rewards[b] at the row's last response token)
        KL_t = kl_divergence(logprobs, ref_logprobs, estimator)   (k1 = logprob - ref_logprob)

    The last response token is the EOS, or the last token of a truncated completion. Feed the result to
    :func:`gae` (PPO) or :func:`discounted_returns` (REINFORCE++).

    Args:
        rewards: [B] sequence rewards.
        logprobs: [B, T] logprobs of the sampled tokens under the behaviour policy (detached).
        ref_logprobs: [B, T] under the reference.
        response_mask: [B, T].
    Returns:
        token_rewards [B, T], 0 where masked.
    """
    mask = response_mask.to(logprobs.dtype)
    kl = kl_divergence(logprobs.detach(), ref_logprobs.detach(), estimator=estimator) * mask
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1, keepdim=True)
    score = torch.zeros_like(kl).scatter_(1, last, rewards[:, None].to(kl.dtype)) * mask
    return -beta * kl + score


def reinforce_pp_token_advantages(
    x: torch.Tensor,
    logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    response_mask: torch.Tensor,
    *,
    beta: float,
    estimator: str = "k1",
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++ with the KL to the reference in the reward, per token (Hu et al. 2025): token advantages.

        r_t = -beta * KL_t  (+ x_b at the row's last response token)       kl_shaped_token_rewards
        G_t = sum_{t' >= t} r_t'                                            discounted_returns, gamma = 1
        A_t = (G_t - mean(G)) / sqrt(var(G) + eps)                          whiten
        KL_t = kl_divergence(logprobs_t, ref_logprobs_t, estimator)         (the paper's: k1 = logprob - ref)

    mean and var are population statistics over EVERY response token of the batch (the paper's global
    normalization), so a long completion weighs more than a short one. With beta = 0, G_t = x_b on every token
    of row b and A is x whitened over tokens: the sequence-level :func:`reinforce_pp_advantages` exactly when
    all rows have the same length (up to where eps sits), a token-weighted version of it otherwise.

    Args:
        x: [B] sequence-level REINFORCE++ x (:func:`reinforce_pp_baseline`; 0 for rows left out).
        logprobs: [B, T] logprobs of the sampled tokens under the behaviour policy (detached); may be None
            when beta == 0, as may ``ref_logprobs`` ([B, T], under the reference).
        response_mask: [B, T]; rows left out of the loss are all 0 and take no part in the statistics.
    Returns:
        advantages [B, T], 0 where masked.
    """
    x = (x if x.is_floating_point() else x.float()).to(response_mask.device)
    mask = response_mask.to(x.dtype)
    if logprobs is None or ref_logprobs is None:
        if beta != 0:
            raise ValueError("reinforce_pp_token_advantages: beta != 0 needs logprobs and ref_logprobs")
        logprobs = ref_logprobs = torch.zeros_like(mask)
    token_rewards = kl_shaped_token_rewards(x, logprobs.to(mask.dtype), ref_logprobs.to(mask.dtype), mask,
                                            beta=beta, estimator=estimator)
    return whiten(discounted_returns(token_rewards, mask, gamma=1.0), mask, eps=eps)


# name -> fn(rewards [N], group_size, *, valid=None, eps=1e-8, **its own options) -> advantages [N].
# Options: "grpo" std_ddof (0), scale (True; False = Dr. GRPO); "rloo" none; "reinforce_pp" baseline
# ("group" or "batch"). An option another estimator does not take is a TypeError, never ignored.
ADVANTAGE_ESTIMATORS = {
    "grpo": group_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}
