"""Kahneman-Tversky optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization"): alignment from UNPAIRED examples, each a (prompt, completion) labelled desirable or not.

With the implicit reward r(x, y) = log pi(y|x) - log pi_ref(y|x) (sequence logprobs summed over response
tokens) and the reference point z0 = max(0, E[KL(pi || pi_ref)]), detached:

    desirable:    L = lambda_D * (1 - sigma(beta * (r - z0)))
    undesirable:  L = lambda_U * (1 - sigma(beta * (z0 - r)))

(the paper's lambda_y - v(x, y)). z0 is estimated in the batch from MISMATCHED pairs: completion y_j
scored under prompt x_i (i != j), so it measures how far the policy has moved on text that is neither
desirable nor undesirable for that prompt. Deviations / choices, as in TRL's KTOTrainer:
- z0 is the batch mean of r over the mismatched pairs, clamped at 0 and never back-propagated through;
- the mismatched pairs are the batch rotated by one (completion of row i - 1 under the prompt of row i),
  which the caller builds (``torch.roll``); under data parallelism the caller gathers the mismatched
  logprobs of every process (or their sum and count) before calling :func:`kto_reference_point`;
- the paper advises lambda_D * n_D / (lambda_U * n_U) in [1, 4/3] for imbalanced data.
"""

from __future__ import annotations

import torch


def kto_reference_point(policy_logps_mismatched: torch.Tensor, ref_logps_mismatched: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean_j (log pi(y_j | x_i) - log pi_ref(y_j | x_i))) over mismatched pairs (i != j), detached.

    Args:
        policy_logps_mismatched, ref_logps_mismatched: [M] summed response-token logprobs of mismatched
            (prompt, completion) pairs under the policy and the reference.
    Returns:
        0-dim tensor z0 >= 0 (0 for an empty batch).
    """
    if policy_logps_mismatched.shape != ref_logps_mismatched.shape:
        raise ValueError(f"mismatched logps shapes differ: {tuple(policy_logps_mismatched.shape)} vs "
                         f"{tuple(ref_logps_mismatched.shape)}")
    diff = (policy_logps_mismatched - ref_logps_mismatched).detach()
    diff = diff.to(torch.promote_types(diff.dtype, torch.float32))  # at least fp32 for the mean
    if diff.numel() == 0:
        return diff.new_zeros(())
    return diff.mean().clamp(min=0.0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    *,
    kl_ref_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO loss per example.

    Args:
        policy_logps, ref_logps: [B] summed response-token logprobs of each (prompt, completion).
        labels: [B] bool, True = desirable.
        kl_ref_point: z0, a 0-dim tensor or float (from :func:`kto_reference_point`); detached here.
    Returns:
        losses [B]; metrics ``rewards`` [B] = beta * r (detached), ``kl`` 0-dim = z0.
    """
    if not (policy_logps.shape == ref_logps.shape == labels.shape):
        raise ValueError(f"kto_loss: policy_logps {tuple(policy_logps.shape)}, ref_logps "
                         f"{tuple(ref_logps.shape)} and labels {tuple(labels.shape)} must have one shape [B]")
    z0 = torch.as_tensor(kl_ref_point, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    log_ratio = policy_logps - ref_logps
    desirable = labels.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1.0 - torch.sigmoid(beta * (log_ratio - z0))),
        undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - log_ratio))),
    )
    return losses, {"rewards": (beta * log_ratio).detach(), "kl": z0}
