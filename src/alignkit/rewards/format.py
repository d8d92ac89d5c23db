"""Format reward: the strict R1 layout ``<think>...</think><answer>...</answer>``."""

from __future__ import annotations

import re

_STRICT = re.compile(r"^\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)+</answer>\s*$", re.DOTALL)


def format_reward(completion: str, **_: object) -> float:
    """1.0 for exactly one think block followed by exactly one non-empty answer block, nothing else.

    >>> format_reward("<think>20% of 50 is 10</think><answer>10</answer>")
    1.0
    >>> format_reward("<answer>10</answer>"), format_reward("<think>a</think><answer>1</answer> extra")
    (0.0, 0.0)
    """
    return 1.0 if _STRICT.match(completion) else 0.0
