"""Pure loss functions: tensors in, (per-token or per-example loss, metrics) out. Imports torch only."""

from alignkit.losses.aggregate import AGGREGATIONS, aggregate_loss, masked_mean, masked_sum
from alignkit.losses.distill import forward_kl_distill_loss
from alignkit.losses.dpo import DPO_LOSS_TYPES, dpo_loss
from alignkit.losses.grpo import grpo_loss
from alignkit.losses.kl import KL_ESTIMATORS, AdaptiveKLController, kl_divergence
from alignkit.losses.ppo import (
    entropy_from_logits,
    policy_gradient_loss,
    ppo_kl_penalty_loss,
    ppo_objective,
    ppo_policy_loss,
    value_loss,
)
from alignkit.losses.reward_model import bradley_terry_loss, preference_probability
from alignkit.losses.sft import sft_loss

__all__ = [
    "AGGREGATIONS", "DPO_LOSS_TYPES", "KL_ESTIMATORS", "AdaptiveKLController", "aggregate_loss",
    "bradley_terry_loss", "dpo_loss", "entropy_from_logits", "forward_kl_distill_loss", "grpo_loss",
    "kl_divergence", "masked_mean", "masked_sum", "policy_gradient_loss", "ppo_kl_penalty_loss",
    "ppo_objective", "ppo_policy_loss", "preference_probability", "sft_loss", "value_loss",
]
