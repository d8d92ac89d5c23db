"""Bradley-Terry reward-model loss (lecture section 2).

    P(y_w > y_l | x) = exp(r_w) / (exp(r_w) + exp(r_l)) = sigma(r_w - r_l)
    L_RM = -log sigma(r_w - r_l [- margin])

Only the difference of the two scores matters (shift invariance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_probability(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """sigma(r_w - r_l): the modeled probability that the chosen response is preferred. Shapes [B] -> [B]."""
    return torch.sigmoid(chosen_rewards - rejected_rewards)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *, margin: torch.Tensor | float | None = None
) -> tuple[torch.Tensor, dict]:
    """Per-pair loss -log sigma(r_w - r_l - margin) (Llama-2's optional margin), computed stably.

    Args:
        chosen_rewards, rejected_rewards: [B] scalar scores r(x, y_w), r(x, y_l).
        margin: optional [B] or scalar required gap.
    Returns:
        losses [B], metrics: ``accuracy`` (r_w > r_l), ``margin`` mean(r_w - r_l), ``preference_prob``.
    """
    diff = chosen_rewards - rejected_rewards
    logits = diff if margin is None else diff - margin
    losses = -F.logsigmoid(logits)
    with torch.no_grad():
        metrics = {
            "accuracy": (diff > 0).float().mean(),
            "margin": diff.mean(),
            "preference_prob": torch.sigmoid(diff).mean(),
        }
    return losses, metrics
