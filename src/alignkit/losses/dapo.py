"""DAPO's batch and length handling (Yu et al. 2025, "DAPO: an open-source LLM RL system at scale").

Pure helpers a GRPO-style recipe composes; DAPO's other two parts are options elsewhere: clip-higher is
``clip_eps_high`` of the policy losses, the token-level loss is ``aggregate_loss(mode="token_mean")``.

- Dynamic sampling: keep only groups whose valid rewards differ (an all-equal group has zero advantages
  and gives no gradient), and draw more prompts until the batch is full of such groups.
  :func:`select_informative_groups` (one draw), :class:`DynamicSampler` (the loop's bookkeeping).
- Overlong filtering: a completion cut at the length limit has no final answer to judge; leave it out of
  the loss: :func:`overlong_mask`.
- Soft overlong punishment, in tokens: :func:`soft_overlong_penalty`, added to the sequence reward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FINISH_REASONS = ("eos", "stop", "length")  # alignkit.rollout.types; "length" = cut at max_new_tokens


def _group_sizes(n: int, group_size: int | Sequence[int]) -> list[int]:
    sizes = [group_size] * (n // group_size) if isinstance(group_size, int) else list(group_size)
    if sum(sizes) != n or min(sizes, default=1) < 1:
        raise ValueError(f"group sizes {sizes} (group_size={group_size}) do not cover the {n} rewards")
    return sizes


def select_informative_groups(
    rewards: torch.Tensor, group_size: int | Sequence[int], valid: torch.Tensor | None = None
) -> torch.Tensor:
    """DAPO dynamic sampling, one draw: which groups carry a learning signal.

        keep_g = (at least two valid rows in g) and max_{valid i in g} r_i != min_{valid i in g} r_i

    (DAPO's 0 < |{correct}| < G, for any reward.) Invalid rows (a failed verifier) do not count.

    Args:
        rewards: [N] sequence rewards, the samples of a prompt in contiguous rows.
        group_size: G, or one size per group (ragged groups).
        valid: optional [N] bool.
    Returns:
        [num_groups] bool, True = keep.
    """
    sizes = _group_sizes(rewards.numel(), group_size)
    v = torch.ones(rewards.numel(), dtype=torch.bool) if valid is None else valid.bool()
    keep = []
    for r, ok in zip(torch.split(rewards.float(), sizes), torch.split(v, sizes)):
        rv = r[ok]
        keep.append(bool(rv.numel() >= 2 and rv.max() != rv.min()))
    return torch.tensor(keep, dtype=torch.bool)


class DynamicSampler:
    """The bookkeeping of "sample until the batch is full of informative groups" (DAPO, Algorithm 1).

    One per training step. The recipe loops::

        sampler = DynamicSampler(target_groups=B, max_draws=1 + extra_draws)
        while not sampler.done:
            draw = generate(next prompts); rewards, valid = score(draw)
            keep = sampler.add(rewards, group_size, valid)   # indices of this draw's groups to train on
            kept.append(draw.groups(keep))
        sampler.metrics()   # log it; sampler.filled False = a short batch, say so

    ``add`` returns at most the groups still missing, in draw order. After ``max_draws`` draws the loop
    stops even if the batch is short (DAPO's verl code raises instead; a recipe can, with ``filled``).
    """

    def __init__(self, target_groups: int, max_draws: int):
        if target_groups < 1 or max_draws < 1:
            raise ValueError(f"target_groups and max_draws must be >= 1, got {target_groups}, {max_draws}")
        self.target_groups, self.max_draws = target_groups, max_draws
        self.draws = self.groups_seen = self.groups_kept = 0

    def add(
        self, rewards: torch.Tensor, group_size: int | Sequence[int], valid: torch.Tensor | None = None
    ) -> list[int]:
        """Account one draw; returns the indices (within this draw) of the groups to keep."""
        if self.done:
            raise RuntimeError("DynamicSampler.add after done: the batch is full or the draws are spent")
        informative = select_informative_groups(rewards, group_size, valid)
        need = self.target_groups - self.groups_kept
        keep = torch.nonzero(informative).flatten().tolist()[:need]
        self.draws += 1
        self.groups_seen += informative.numel()
        self.groups_kept += len(keep)
        return keep

    @property
    def filled(self) -> bool:
        return self.groups_kept >= self.target_groups

    @property
    def done(self) -> bool:
        return self.filled or self.draws >= self.max_draws

    def metrics(self) -> dict:
        """``dynamic_sampling/draws``, ``/groups_kept``, ``/kept_share`` (of the groups seen), ``/filled``."""
        return {
            "dynamic_sampling/draws": self.draws,
            "dynamic_sampling/groups_kept": self.groups_kept,
            "dynamic_sampling/kept_share": self.groups_kept / max(self.groups_seen, 1),
            "dynamic_sampling/filled": float(self.filled),
        }


def overlong_mask(finish_reasons: Sequence[str]) -> torch.Tensor:
    """DAPO overlong filtering: [B] bool, True = the sample counts in the loss, False = it was truncated.

    Multiply it into ``response_mask`` (rows) or the ``valid`` of the advantage estimators.

    >>> overlong_mask(["eos", "length", "stop"]).tolist()
    [True, False, True]
    """
    bad = sorted({r for r in finish_reasons if r not in FINISH_REASONS})
    if bad:
        raise ValueError(f"unknown finish reasons {bad}; expected {', '.join(FINISH_REASONS)}")
    return torch.tensor([r != "length" for r in finish_reasons], dtype=torch.bool)


def soft_overlong_penalty(lengths: torch.Tensor, max_tokens: int, cache_tokens: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, counted in tokens (added to the sequence reward):

        R(L) = 0                                    L <= L_max - L_cache
        R(L) = ((L_max - L_cache) - L) / L_cache    L_max - L_cache < L <= L_max    (0 down to -1)
        R(L) = -1                                   L > L_max

    DAPO: L_max = 20480, L_cache = 4096 (the penalty starts at 16384 tokens). ``cache_tokens=0`` is a step
    at L_max. L_max is usually ``rollout.max_new_tokens``, so the -1 branch only shows when it is larger.

    >>> soft_overlong_penalty(torch.tensor([10, 12, 14, 16, 17]), max_tokens=16, cache_tokens=4).tolist()
    [0.0, 0.0, -0.5, -1.0, -1.0]

    Args:
        lengths: [B] completion lengths in tokens (response_mask.sum(-1), EOS included).
    Returns:
        [B] float penalties in [-1, 0].
    """
    if not 0 <= cache_tokens <= max_tokens:
        raise ValueError(f"need 0 <= cache_tokens <= max_tokens, got cache_tokens={cache_tokens}, "
                         f"max_tokens={max_tokens}")
    length = lengths.float()
    start = max_tokens - cache_tokens
    ramp = (start - length) / max(cache_tokens, 1)
    out = torch.where(length <= start, torch.zeros_like(length), ramp)
    return torch.where(length > max_tokens, torch.full_like(length, -1.0), out)
