"""Odds-ratio preference optimization (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
Reference Model"): SFT on the chosen response plus an odds-ratio penalty on the rejected one, no reference.

With P(y|x) = exp(mean over response tokens of log pi(y_t | x, y_<t)) (the per-token AVERAGE, as the
paper), odds(y|x) = P / (1 - P) and log odds = logp - log(1 - exp(logp)):

    L = L_SFT + lambda * L_OR,    L_OR = -log sigma(log odds(y_w|x) - log odds(y_l|x))

L_SFT is the chosen response's NLL. log(1 - exp(x)) is computed without cancellation (Maechler 2012,
"log1mexp"): log(-expm1(x)) for x > -log 2, log1p(-exp(x)) below; x is capped just under 0 (P = 1 would
make the odds infinite).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x; x >= 0 is capped just under 0.

    Naive equivalent: ``torch.log1p(-torch.exp(x))``, which is -inf for x in (-6e-8, 0) in float32.
    Each branch sees only inputs where it is finite, so gradients are finite too."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = torch.log(-torch.expm1(x.clamp(min=-math.log(2.0))))
    far = torch.log1p(-torch.exp(x.clamp(max=-math.log(2.0))))
    return torch.where(x > -math.log(2.0), near_zero, far)


def orpo_loss(
    chosen_logps_mean: torch.Tensor,
    rejected_logps_mean: torch.Tensor,
    chosen_nll: torch.Tensor,
    *,
    lam: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO loss per pair: chosen_nll + lam * -log sigma(log odds_w - log odds_l).

    Args:
        chosen_logps_mean, rejected_logps_mean: [B] policy logprobs AVERAGED over response tokens (< 0).
        chosen_nll: [B] the SFT term, normally -chosen_logps_mean (a caller may use another token weighting).
    Returns:
        losses [B]; metrics (detached, [B]): ``rewards/chosen`` = lam * chosen_logps_mean, ``rewards/rejected``,
        ``rewards/margin``, ``orpo/log_odds`` (log odds_w - log odds_l), ``orpo/nll``.
    """
    log_odds = (chosen_logps_mean - rejected_logps_mean) - (log1mexp(chosen_logps_mean) - log1mexp(rejected_logps_mean))
    losses = chosen_nll - lam * F.logsigmoid(log_odds)
    chosen_rewards, rejected_rewards = (lam * chosen_logps_mean).detach(), (lam * rejected_logps_mean).detach()
    return losses, {
        "rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
        "rewards/margin": chosen_rewards - rejected_rewards, "orpo/log_odds": log_odds.detach(),
        "orpo/nll": chosen_nll.detach(),
    }
