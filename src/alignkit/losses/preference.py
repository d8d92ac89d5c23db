"""One table of pair-preference losses with one signature, and the pair picker of online DPO.

``PREFERENCE_LOSSES[name](batch: PairLogps, **opts) -> (losses [B], metrics)``; ``name`` is the value of
the recipe's ``loss.loss_type``:

- ``sigmoid``: DPO (Rafailov et al. 2023), :func:`alignkit.losses.dpo_loss`; opts beta, label_smoothing,
  reference_free
- ``ipo``: IPO (Azar et al. 2023), ``dpo_loss(loss_type="ipo")`` on summed logprobs; opts beta, reference_free
- ``simpo``: SimPO (Meng et al. 2024), :func:`alignkit.losses.simpo_loss`; opts beta, gamma, label_smoothing
- ``orpo``: ORPO (Hong et al. 2024), :func:`alignkit.losses.orpo_loss` on token-averaged logprobs; opt lam

Every entry's metrics hold detached [B] tensors under ``rewards/chosen``, ``rewards/rejected`` and
``rewards/margin`` (each loss's own implicit reward), plus its own keys. An option an entry does not take
is a TypeError, never ignored. ``REFERENCE_FREE_LOSSES`` names the entries that read no reference
logprobs (the recipe then loads no reference model).

KTO is not in the table: its examples are unpaired (one completion and a label), so its batch is not a
:class:`PairLogps`; the recipe calls :func:`alignkit.losses.kto_loss` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.losses.dpo import dpo_loss
from alignkit.losses.orpo import orpo_loss
from alignkit.losses.simpo import simpo_loss


@dataclass(frozen=True)
class PairLogps:
    """Sequence-level numbers of B preference pairs; every field is [B].

    policy_chosen_logps, policy_rejected_logps: policy logprobs summed over response tokens (with grad).
    chosen_lengths, rejected_lengths: response token counts (EOS included), >= 1.
    ref_chosen_logps, ref_rejected_logps: reference sums; None for reference-free losses.
    chosen_nll: ORPO's SFT term; None means the token mean -policy_chosen_logps / chosen_lengths.
    """

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None


def _dpo_family(batch: PairLogps, loss_type: str, beta: float, label_smoothing: float, reference_free: bool):
    if not reference_free and (batch.ref_chosen_logps is None or batch.ref_rejected_logps is None):
        raise ValueError(f"loss_type {loss_type!r} needs reference logprobs (or reference_free=True)")
    zeros = torch.zeros_like(batch.policy_chosen_logps)
    rc = zeros if reference_free else batch.ref_chosen_logps
    rr = zeros if reference_free else batch.ref_rejected_logps
    return dpo_loss(batch.policy_chosen_logps, batch.policy_rejected_logps, rc, rr, beta=beta,
                    label_smoothing=label_smoothing, loss_type=loss_type, reference_free=reference_free)


def _sigmoid(batch: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, reference_free: bool = False):
    return _dpo_family(batch, "sigmoid", beta, label_smoothing, reference_free)


def _ipo(batch: PairLogps, *, beta: float = 0.1, reference_free: bool = False):
    return _dpo_family(batch, "ipo", beta, 0.0, reference_free)


def _simpo(batch: PairLogps, *, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0):
    return simpo_loss(batch.policy_chosen_logps, batch.policy_rejected_logps, batch.chosen_lengths,
                      batch.rejected_lengths, beta=beta, gamma=gamma, label_smoothing=label_smoothing)


def _orpo(batch: PairLogps, *, lam: float = 0.1):
    chosen_mean = batch.policy_chosen_logps / batch.chosen_lengths
    nll = -chosen_mean if batch.chosen_nll is None else batch.chosen_nll
    return orpo_loss(chosen_mean, batch.policy_rejected_logps / batch.rejected_lengths, nll, lam=lam)


PREFERENCE_LOSSES = {"sigmoid": _sigmoid, "ipo": _ipo, "simpo": _simpo, "orpo": _orpo}
REFERENCE_FREE_LOSSES = frozenset({"simpo", "orpo"})


def rank_pairs(
    rewards: torch.Tensor, group_size: int, *, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online DPO pairs: per prompt, the best and the worst of its G sampled completions.

    Args:
        rewards: [N * G] scalar rewards, the G samples of a prompt in contiguous rows.
        group_size: G >= 2.
        valid: optional [N * G] bool; False samples (e.g. a failed verifier) are never picked.
    Returns:
        chosen_idx [N], rejected_idx [N] (long, rows of ``rewards``; the first of tied bests / worsts),
        pair_valid [N] bool: False where the best and worst valid rewards tie (all equal, or fewer than
        two valid samples) or a valid reward is NaN: the pair carries no preference and must be left
        out of the loss (count and log such groups).
    """
    if rewards.dim() != 1 or group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rank_pairs needs 1-D rewards with a length divisible by group_size >= 2, got shape "
                         f"{tuple(rewards.shape)} and group_size={group_size}")
    r = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool().view(-1, group_size)
    best_r, worst_r = torch.where(v, r, torch.full_like(r, -torch.inf)), torch.where(v, r, torch.full_like(r, torch.inf))
    chosen, rejected = best_r.argmax(dim=1), worst_r.argmin(dim=1)  # first index among ties
    best, worst = best_r.gather(1, chosen[:, None])[:, 0], worst_r.gather(1, rejected[:, None])[:, 0]
    offset = torch.arange(r.shape[0], device=r.device) * group_size
    return chosen + offset, rejected + offset, best > worst
