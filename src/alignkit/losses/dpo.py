"""Direct preference optimization (lecture section 2; Rafailov et al. 2023).

Implicit reward r_hat(y) = beta * log(pi(y|x) / pi_ref(y|x)); sequence logprobs are sums over response
tokens. With h = (log pi_w - log ref_w) - (log pi_l - log ref_l):

- sigmoid:  L = -log sigma(beta h)                                    (the DPO loss)
- label smoothing e (conservative DPO):  L = -(1-e) log sigma(beta h) - e log sigma(-beta h)
- ipo:      L = (h - 1/(2 beta))^2                                     (Azar et al. 2023)
- reference_free: the reference terms are 0, h = log pi_w - log pi_l

Gradient (sigmoid, e=0): dL/dtheta = -beta * sigma(r_hat_l - r_hat_w) * (grad log pi_w - grad log pi_l).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    reference_free: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss per pair, ``(loss, metrics)`` like every loss of ``alignkit.losses``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: [B] summed
            response-token logprobs.
    Returns:
        (losses [B], {"rewards/chosen": [B], "rewards/rejected": [B], "rewards/margin": [B]}); the implicit
        rewards are beta * log-ratios, detached.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if reference_free:
        ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
        ref_rejected_logps = torch.zeros_like(policy_rejected_logps)
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_log_ratio - rejected_log_ratio
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)).square()
    chosen_rewards = (beta * chosen_log_ratio).detach()
    rejected_rewards = (beta * rejected_log_ratio).detach()
    return losses, {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                    "rewards/margin": chosen_rewards - rejected_rewards}
