"""Format rewards: the strict R1 layout ``<think>...</think><answer>...</answer>`` (the one R1 recipes use)
and a soft variant that allows text around the two blocks.

Both ask for exactly one think block followed by exactly one answer block, each with some content (a letter
or digit: whitespace or punctuation alone is empty), and no tag inside another block. The strict layout
allows only whitespace outside the blocks; the soft one allows any text around them that holds no other
``<think>``/``<answer>`` tag.

Threat model: what a policy may try and what this reward does

- empty reasoning (``<think></think><answer>48</answer>``, ``<think> . </think>``): 0 -- the layout asks for
  reasoning; an empty block is the tag without the thing.
- nested or repeated tags (``<think>a<think>b</think>``, a second ``<answer>`` block that hedges between two
  answers, an answer block hidden inside the think block): 0 in both variants.
- empty answer (``<answer> </answer>``): 0.
- limits (not refused): the reward checks layout, not reasoning quality -- a one-word think block passes;
  pair it with accuracy (R1 does) so that the layout alone is worth little.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"</?(?:think|answer)>")
_BLOCK = r"<{tag}>(?P<{tag}>(?:(?!</?think>|</?answer>).)*)</{tag}>"
_LAYOUT = _BLOCK.format(tag="think") + r"\s*" + _BLOCK.format(tag="answer")
_STRICT = re.compile(r"^\s*" + _LAYOUT + r"\s*$", re.DOTALL)
_SOFT = re.compile(_LAYOUT, re.DOTALL)
_CONTENT = re.compile(r"\w")


def _well_formed(completion: str, match: re.Match | None) -> bool:
    """The match holds the only four tags of the text, and both blocks have content."""
    return (match is not None and len(_TAG.findall(completion)) == 4
            and all(_CONTENT.search(match.group(tag)) for tag in ("think", "answer")))


def format_reward(completion: str, **_: object) -> float:
    """1.0 for exactly one non-empty think block followed by exactly one non-empty answer block, nothing else.

    >>> format_reward("<think>20% of 50 is 10</think><answer>10</answer>")
    1.0
    >>> format_reward("<answer>10</answer>"), format_reward("<think>a</think><answer>1</answer> extra")
    (0.0, 0.0)
    >>> format_reward("<think></think><answer>10</answer>")  # no reasoning
    0.0
    """
    return 1.0 if _well_formed(completion, _STRICT.match(completion)) else 0.0


def format_reward_soft(completion: str, **_: object) -> float:
    """1.0 when one non-empty think block is followed by one non-empty answer block (text around is allowed,
    other think/answer tags are not).

    >>> format_reward_soft("Sure. <think>a</think> <answer>1</answer> Done."), format_reward_soft("<answer>1</answer>")
    (1.0, 0.0)
    """
    return 1.0 if _well_formed(completion, _SOFT.search(completion)) else 0.0
