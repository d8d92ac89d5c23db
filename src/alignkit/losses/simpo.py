"""Simple preference optimization (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
Reference-Free Reward"): DPO with a length-normalized, reference-free implicit reward and a target margin.

    r(x, y) = beta / |y| * log pi(y|x)                     (log pi summed over the |y| response tokens)
    L = -log sigma(r(x, y_w) - r(x, y_l) - gamma)

gamma is the ABSOLUTE margin of the paper's equation (TRL's ``simpo_gamma``, default 0.5). The authors'
code takes ``gamma_beta_ratio`` instead: gamma = beta * gamma_beta_ratio. Label smoothing e as in
conservative DPO:
L = -(1-e) log sigma(z) - e log sigma(-z), z = r_w - r_l - gamma.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simpo_loss(
    chosen_logps_sum: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPO loss per pair.

    Args:
        chosen_logps_sum, rejected_logps_sum: [B] policy logprobs summed over response tokens.
        chosen_lengths, rejected_lengths: [B] response token counts |y| (EOS included), >= 1.
    Returns:
        losses [B]; metrics (detached, [B]): ``rewards/chosen`` = beta / |y_w| * log pi(y_w|x),
        ``rewards/rejected``, ``rewards/margin`` (r_w - r_l, without gamma).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if bool((chosen_lengths <= 0).any()) or bool((rejected_lengths <= 0).any()):
        raise ValueError("simpo_loss: every response length must be >= 1 (a response has at least its EOS)")
    chosen_rewards = beta * chosen_logps_sum / chosen_lengths
    rejected_rewards = beta * rejected_logps_sum / rejected_lengths
    z = chosen_rewards - rejected_rewards - gamma
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return losses, {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                    "rewards/margin": chosen_rewards - rejected_rewards}
