"""Synthetic integer arithmetic with exact answers: a seeded task small enough for the tiny model.

Levels (an operand written right after ``*`` comes from the "after *" range, keeping products short):

    level  form         operators   operands   after *   results
    1      a+b          +           0-9        -         >= 0
    2      a op b       + -         10-99      -         >= 0 (for '-', a >= b)
    3      a op b       + - *       10-99      2-9       >= 0 (for '-', a >= b)
    4      a op b op c  + - *       10-99      2-9       any sign
    5      a op b op c  + - *       100-999    10-99     any sign

Questions are the bare expression (``"23+45"``, ``"12*3+7"``); ``*`` binds tighter than ``+`` / ``-``,
which go left to right. Answers are computed with Python ints on the generated operands (no string is
ever evaluated). ``ideal_trace`` writes the R1 format with one step per operation, in evaluation order::

    23+45    -> <think>23+45=68</think><answer>68</answer>
    12*3+7   -> <think>12*3=36 36+7=43</think><answer>43</answer>
    7+12*3   -> <think>12*3=36 7+36=43</think><answer>43</answer>
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product

_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
STYLES = ("answer_only", "r1")


@dataclass(frozen=True)
class LevelSpec:
    """How problems of one level are drawn (see the table in the module docstring)."""

    n_operands: int
    operators: tuple[str, ...]
    operand_range: tuple[int, int]  # inclusive
    mul_range: tuple[int, int]  # inclusive; for an operand right after '*'
    non_negative: bool  # a two-operand subtraction is ordered so that a >= b


LEVELS: dict[int, LevelSpec] = {
    1: LevelSpec(2, ("+",), (0, 9), (0, 9), True),
    2: LevelSpec(2, ("+", "-"), (10, 99), (10, 99), True),
    3: LevelSpec(2, ("+", "-", "*"), (10, 99), (2, 9), True),
    4: LevelSpec(3, ("+", "-", "*"), (10, 99), (2, 9), False),
    5: LevelSpec(3, ("+", "-", "*"), (100, 999), (10, 99), False),
}


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem. ``operands`` has one more entry than ``operators``."""

    question: str
    answer: int
    level: int
    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def answer_text(self) -> str:
        return str(self.answer)


def evaluate_steps(operands: Sequence[int], operators: Sequence[str]) -> tuple[int, list[str]]:
    """Evaluate with precedence (all '*' left to right, then '+' / '-' left to right) -> (value, steps),
    one step ``"x op y=z"`` per operation.

    >>> evaluate_steps([7, 12, 3], ["+", "*"])
    (43, ['12*3=36', '7+36=43'])
    """
    if len(operands) != len(operators) + 1:
        raise ValueError(f"need one more operand than operators (got {len(operands)} and {len(operators)})")
    values, ops, steps = list(operands), list(operators), []
    for group in (("*",), ("+", "-")):
        i = 0
        while i < len(ops):
            if ops[i] not in group:
                i += 1
                continue
            result = _APPLY[ops[i]](values[i], values[i + 1])
            steps.append(f"{values[i]}{ops[i]}{values[i + 1]}={result}")
            values[i : i + 2] = [result]
            del ops[i]
    return values[0], steps


def _levels(level: int | Iterable[int]) -> list[int]:
    levels = [level] if isinstance(level, int) else list(level)
    bad = [lv for lv in levels if lv not in LEVELS]
    if not levels or bad:
        raise ValueError(f"unknown arithmetic level(s) {bad or levels}; levels are {sorted(LEVELS)}")
    return levels


def _draw(rng: random.Random, level: int) -> Problem:
    spec = LEVELS[level]
    ops = tuple(rng.choice(spec.operators) for _ in range(spec.n_operands - 1))
    operands = [rng.randint(*spec.operand_range)]
    operands += [rng.randint(*(spec.mul_range if op == "*" else spec.operand_range)) for op in ops]
    if spec.non_negative and ops == ("-",) and operands[0] < operands[1]:
        operands.reverse()
    question = "".join(f"{x}{op}" for x, op in zip(operands, ops)) + str(operands[-1])
    answer, _ = evaluate_steps(operands, ops)
    return Problem(question, answer, level, tuple(operands), ops)


def question_space(level: int | Iterable[int]) -> int:
    """Number of distinct questions at the given level(s), e.g. 100 for level 1."""
    total = 0
    for lv in set(_levels(level)):
        spec = LEVELS[lv]
        for ops in product(spec.operators, repeat=spec.n_operands - 1):
            ranges = [spec.operand_range] + [spec.mul_range if o == "*" else spec.operand_range for o in ops]
            sizes = [hi - lo + 1 for lo, hi in ranges]
            ordered = spec.non_negative and ops == ("-",)
            total += sizes[0] * (sizes[0] + 1) // 2 if ordered else math.prod(sizes)
    return total


def make_problems(n: int, *, level: int | Iterable[int] = 1, seed: int = 0) -> list[Problem]:
    """``n`` i.i.d. problems (repeats possible), each of a level drawn uniformly from ``level``;
    the same arguments always give the same list."""
    levels, rng = _levels(level), random.Random(seed)
    return [_draw(rng, rng.choice(levels)) for _ in range(n)]


def make_split(
    n_train: int, n_eval: int, *, level: int | Iterable[int] = 1, seed: int = 0,
) -> tuple[list[Problem], list[Problem]]:
    """(train, eval): ``n_eval`` distinct eval questions, then ``n_train`` i.i.d. train problems drawn
    from the remaining questions (train may repeat a question; no eval question is ever in train).

    ``n_eval`` may be at most half the question space (level 1 has 100 questions: n_eval <= 50).
    """
    levels = _levels(level)
    space = question_space(levels)
    if n_eval > space // 2:
        raise ValueError(f"n_eval={n_eval} is too large: level(s) {levels} have {space} distinct questions and "
                         f"at most half ({space // 2}) may be held out; lower n_eval or raise the level")
    rng = random.Random(seed)
    held_out: dict[str, Problem] = {}
    while len(held_out) < n_eval:
        p = _draw(rng, rng.choice(levels))
        held_out.setdefault(p.question, p)
    train: list[Problem] = []
    while len(train) < n_train:
        p = _draw(rng, rng.choice(levels))
        if p.question not in held_out:
            train.append(p)
    return train, list(held_out.values())


def ideal_trace(problem: Problem) -> str:
    """R1-format completion with correct step-by-step arithmetic, e.g.
    ``<think>12*3=36 36+7=43</think><answer>43</answer>``."""
    answer, steps = evaluate_steps(problem.operands, problem.operators)
    return f"<think>{' '.join(steps)}</think><answer>{answer}</answer>"


def to_sft_records(problems: Iterable[Problem], style: str = "r1") -> list[dict]:
    """SFT rows ``{"prompt": question, "completion": ...}``; completion ``<answer>68</answer>``
    (answer_only) or ``ideal_trace`` (r1)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {list(STYLES)} (got {style!r})")
    render = ideal_trace if style == "r1" else (lambda p: f"<answer>{p.answer}</answer>")
    return [{"prompt": p.question, "completion": render(p)} for p in problems]


def to_prompt_records(problems: Iterable[Problem]) -> list[dict]:
    """RL prompt rows ``{"prompt": question, "answer": "68", "level": 1}`` (answer as a string)."""
    return [{"prompt": p.question, "answer": p.answer_text, "level": p.level} for p in problems]


# The seeded held-out set every stage reports on (alignkit.evaluation scores it); training prompts never
# use its questions.
EVAL_LEVELS = (1, 2, 3)
EVAL_SEED = 1000
EVAL_SIZE = 200


def eval_size(levels=EVAL_LEVELS) -> int:
    """Held-out questions for ``levels``: EVAL_SIZE, or half the question space where that is smaller
    (level 1 alone has 100 questions: 50 held out)."""
    return min(EVAL_SIZE, question_space(list(levels)) // 2)


def arithmetic_eval_set(levels=EVAL_LEVELS, n: int | None = None, seed: int = EVAL_SEED):
    """The seeded held-out arithmetic problems (distinct questions); ``n`` defaults to ``eval_size(levels)``."""
    return make_split(0, eval_size(levels) if n is None else n, level=list(levels), seed=seed)[1]


def arithmetic_train_problems(n: int, levels=EVAL_LEVELS, *, seed: int = EVAL_SEED):
    """``n`` training problems that never use a held-out question of ``arithmetic_eval_set(levels, seed=seed)``."""
    return make_split(n, eval_size(levels), level=list(levels), seed=seed)[0]
