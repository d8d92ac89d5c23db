"""Length penalty: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), a reward in [-1, 0].

With L = the completion's length, ``max_length`` = L_max and ``target`` = L_max - L_cache (the length up to
which nothing is taken off; default 0.8 * max_length):

    R_length = 0                                   if L <= target
             = (target - L) / (max_length - target)  if target < L <= max_length   (linear from 0 to -1)
             = -1                                  if L > max_length

L is ``num_tokens`` when the example/rollout passes it (the recipes pass the response's token count), else
the number of characters of the completion: state the unit with ``max_length``. Add it to the task reward
with a weight (DAPO adds it with weight 1).
"""

from __future__ import annotations


def length_penalty(completion: str, *, max_length: int, target: int | None = None, num_tokens: int | None = None,
                   **_: object) -> float:
    """Soft overlong penalty (see the module docstring).

    Hand numbers, max_length=100, target=80: L=80 -> 0; L=90 -> (80-90)/20 = -0.5; L=95 -> -0.75;
    L=100 -> -1; L=150 -> -1.

    >>> [length_penalty("x" * n, max_length=100, target=80) for n in (50, 80, 90, 95, 100, 150)]
    [0.0, 0.0, -0.5, -0.75, -1.0, -1.0]
    >>> length_penalty("ignored", max_length=100, num_tokens=90)  # target defaults to 80
    -0.5
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    target = int(0.8 * max_length) if target is None else target
    if not 0 <= target < max_length:
        raise ValueError(f"target must be in [0, max_length), got target={target}, max_length={max_length}")
    n = len(completion) if num_tokens is None else int(num_tokens)
    if n <= target:
        return 0.0
    if n > max_length:
        return -1.0
    return (target - n) / (max_length - target)
