"""Pure loss functions: tensors in, (per-token or per-example loss, metrics) out. Imports torch only."""

from alignkit.losses.aggregate import AGGREGATIONS, aggregate_loss, masked_mean, masked_sum
from alignkit.losses.dapo import (
    DynamicSampler,
    overlong_mask,
    select_informative_groups,
    soft_overlong_penalty,
)
from alignkit.losses.distill import forward_kl_distill_loss, generalized_jsd_loss, reverse_kl_loss
from alignkit.losses.dpo import DPO_LOSS_TYPES, dpo_loss
from alignkit.losses.grpo import POLICY_LOSSES, cispo_policy_loss, grpo_loss, gspo_policy_loss
from alignkit.losses.kl import KL_ESTIMATORS, AdaptiveKLController, kl_divergence
from alignkit.losses.kto import kto_loss, kto_reference_point
from alignkit.losses.orpo import log1mexp, orpo_loss
from alignkit.losses.ppo import (
    entropy_from_logits,
    policy_gradient_loss,
    ppo_kl_penalty_loss,
    ppo_objective,
    ppo_policy_loss,
    value_loss,
)
from alignkit.losses.preference import PREFERENCE_LOSSES, REFERENCE_FREE_LOSSES, PairLogps, rank_pairs
from alignkit.losses.reward_model import bradley_terry_loss, preference_probability
from alignkit.losses.sft import sft_loss
from alignkit.losses.simpo import simpo_loss

__all__ = [
    "AGGREGATIONS", "DPO_LOSS_TYPES", "KL_ESTIMATORS", "AdaptiveKLController", "aggregate_loss",
    "bradley_terry_loss", "dpo_loss", "entropy_from_logits", "forward_kl_distill_loss", "grpo_loss",
    "kl_divergence", "masked_mean", "masked_sum", "policy_gradient_loss", "ppo_kl_penalty_loss",
    "ppo_objective", "ppo_policy_loss", "preference_probability", "sft_loss", "value_loss",
    # preference losses beyond DPO (issue 20), on-policy distillation
    "PREFERENCE_LOSSES", "REFERENCE_FREE_LOSSES", "PairLogps", "generalized_jsd_loss", "kto_loss",
    "kto_reference_point", "log1mexp", "orpo_loss", "rank_pairs", "reverse_kl_loss", "simpo_loss",
    # policy-loss variants and DAPO's helpers (issue 20)
    "POLICY_LOSSES", "DynamicSampler", "cispo_policy_loss", "gspo_policy_loss", "overlong_mask",
    "select_informative_groups", "soft_overlong_penalty",
]
