"""KL estimators and the adaptive KL controller (lecture sections 1 and 3).

Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence",
2020). With log_ratio = logprobs - ref_logprobs and r = pi_ref / pi = exp(-log_ratio):

- k1 = log_ratio                 unbiased, high variance, can be negative
- k2 = 0.5 * log_ratio^2         biased, low variance, non-negative
- k3 = r - 1 - log r             unbiased, low variance, non-negative (DeepSeekMath's GRPO KL)
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_divergence(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *, estimator: str = "k3"
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) for tokens sampled from pi.

    Args:
        logprobs: [B, T] log pi(y_t | ...) of the sampled tokens.
        ref_logprobs: [B, T] log pi_ref of the same tokens.
    Returns:
        [B, T] estimates (mask them before reducing).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # Clamp the exponent so one wild token cannot overflow to inf (exp(20) ~ 4.9e8).
        neg = (-log_ratio).clamp(max=20.0)
        return torch.exp(neg) - 1.0 - neg
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


class AdaptiveKLController:
    """Adapts the KL coefficient beta toward a target KL.

    rule="ppo" (the lecture; Schulman et al. 2017, section 4), strict inequalities:
        KL > 1.5 * target  -> beta <- 2 * beta
        KL < target / 1.5  -> beta <- beta / 2
        otherwise          -> unchanged
    rule="proportional" (Ziegler et al. 2019):
        e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon)

    >>> c = AdaptiveKLController(0.02, 0.01)
    >>> c.update(0.016)
    0.04
    """

    RULES = ("ppo", "proportional")

    def __init__(self, init_coef: float, target: float, *, rule: str = "ppo", horizon: int = 10000):
        if rule not in self.RULES:
            raise ValueError(f"unknown KL controller rule {rule!r}; choose one of {', '.join(self.RULES)}")
        if target <= 0:
            raise ValueError(f"KL target must be > 0, got {target}")
        self.value = float(init_coef)
        self.target = float(target)
        self.rule = rule
        self.horizon = horizon

    def update(self, observed_kl: float, n_steps: int = 1) -> float:
        """Feed one measured KL; returns the new coefficient."""
        kl = float(observed_kl)
        if self.rule == "ppo":
            if kl > 1.5 * self.target:
                self.value *= 2.0
            elif kl < self.target / 1.5:
                self.value /= 2.0
        else:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
