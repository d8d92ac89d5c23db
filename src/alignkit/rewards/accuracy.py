"""Accuracy reward: the final answer, extracted from the completion, compared with the ground truth.

Model text is never evaluated: numbers are parsed with ``fractions.Fraction``.
"""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(/\d+)?$")


def extract_answer(completion: str) -> str | None:
    """The last ``<answer>...</answer>`` content, else the last ``\\boxed{...}``, else None.

    >>> extract_answer("<think>2+2=4</think><answer> 4 </answer>")
    '4'
    >>> extract_answer("so the result is \\\\boxed{12}") is None
    False
    >>> extract_answer("no answer here") is None
    True
    """
    found = _ANSWER.findall(completion) or _BOXED.findall(completion)
    return found[-1].strip() if found else None


def parse_number(text: str) -> Fraction | None:
    """Exact rational value of a plain number: '42', '-3.50', '1/2', '$1,000' ; None if not a number.

    >>> parse_number("$1,000.50") == Fraction(200100, 200)
    True
    >>> parse_number("x+1") is None
    True
    """
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, truth: str) -> bool:
    """Numeric equality when both parse as numbers, else exact string equality after stripping.

    >>> answers_match("42.0", "42"), answers_match("0.5", "1/2"), answers_match("41", "42")
    (True, True, False)
    """
    p, t = parse_number(predicted), parse_number(truth)
    if p is not None and t is not None:
        return p == t
    return predicted.strip() == str(truth).strip()


def accuracy_reward(completion: str, *, answer: str | int | float, **_: object) -> float:
    """1.0 if the completion's final answer equals ``answer``, else 0.0.

    >>> accuracy_reward("<think>12*3=36</think><answer>36</answer>", answer=36)
    1.0
    >>> accuracy_reward("<answer>35</answer>", answer="36")
    0.0
    """
    predicted = extract_answer(completion)
    return 1.0 if predicted is not None and answers_match(predicted, str(answer)) else 0.0
