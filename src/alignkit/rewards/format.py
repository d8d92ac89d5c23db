"""Format rewards: the strict R1 layout ``<think>...</think><answer>...</answer>`` (the one R1 recipes use)
and a soft variant that only asks for a think block followed by an answer block somewhere."""

from __future__ import annotations

import re

_STRICT = re.compile(r"^\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)+</answer>\s*$", re.DOTALL)
_SOFT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def format_reward(completion: str, **_: object) -> float:
    """1.0 for exactly one think block followed by exactly one non-empty answer block, nothing else.

    >>> format_reward("<think>20% of 50 is 10</think><answer>10</answer>")
    1.0
    >>> format_reward("<answer>10</answer>"), format_reward("<think>a</think><answer>1</answer> extra")
    (0.0, 0.0)
    """
    return 1.0 if _STRICT.match(completion) else 0.0


def format_reward_soft(completion: str, **_: object) -> float:
    """1.0 when a think block is followed by an answer block anywhere in the text (text around is allowed).

    >>> format_reward_soft("Sure. <think>a</think> <answer>1</answer> Done."), format_reward_soft("<answer>1</answer>")
    (1.0, 0.0)
    """
    return 1.0 if _SOFT.search(completion) else 0.0
