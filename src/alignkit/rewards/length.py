"""Length penalty: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), a reward in [-1, 0].

With L = the completion's length, ``max_length`` = L_max and ``target`` = L_max - L_cache (the length up to
which nothing is taken off; default 0.8 * max_length):

    R_length = 0                                   if L <= target
             = (target - L) / (max_length - target)  if target < L <= max_length   (linear from 0 to -1)
             = -1                                  if L > max_length

L is, first found: ``num_tokens`` (an explicit count), the length of ``completion_ids`` (the scorer passes
the response's token ids when the recipe gives them to ``score_batch``), else the number of characters of
the completion: state the unit with ``max_length``. Add it to the task reward with a weight (DAPO adds it
with weight 1).

Threat model: what a policy may try and what this reward does

- the reward is never above 0, so the only way to raise it is to be shorter than ``target`` -- its purpose;
  an empty or truncated-early completion scores 0 here and is left to the accuracy and format rewards.
- a completion cut off at the generation limit is measured by what it holds (L > target is penalized, and
  L > max_length gets -1), so running out of budget is never cheaper than stopping.
- the length is measured from the completion (or its token ids), never from anything the completion says
  about itself; a negative ``num_tokens`` (a data error) raises ``RewardError``.
- limits: characters and tokens differ (a policy may favour long tokens when L is characters): give the
  scorer ``completion_ids`` where the budget is in tokens.
"""

from __future__ import annotations

from collections.abc import Sized

from alignkit.rewards.errors import RewardError


def length_penalty(completion: str, *, max_length: int, target: int | None = None, num_tokens: int | None = None,
                   completion_ids: Sized | None = None, **_: object) -> float:
    """Soft overlong penalty (see the module docstring).

    Hand numbers, max_length=100, target=80: L=80 -> 0; L=90 -> (80-90)/20 = -0.5; L=95 -> -0.75;
    L=100 -> -1; L=150 -> -1.

    >>> [length_penalty("x" * n, max_length=100, target=80) for n in (50, 80, 90, 95, 100, 150)]
    [0.0, 0.0, -0.5, -0.75, -1.0, -1.0]
    >>> length_penalty("ignored", max_length=100, num_tokens=90)  # target defaults to 80
    -0.5
    >>> length_penalty("ignored", max_length=100, completion_ids=[7] * 95)
    -0.75
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    target = int(0.8 * max_length) if target is None else target
    if not 0 <= target < max_length:
        raise ValueError(f"target must be in [0, max_length), got target={target}, max_length={max_length}")
    if num_tokens is not None:
        n = int(num_tokens)
    elif completion_ids is not None:
        n = len(completion_ids)
    else:
        n = len(completion)
    if n < 0:
        raise RewardError(f"length_penalty: negative length {n} (num_tokens={num_tokens!r})")
    if n <= target:
        return 0.0
    if n > max_length:
        return -1.0
    return (target - n) / (max_length - target)
