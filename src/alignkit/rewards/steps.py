"""Step verifier: is the arithmetic written in the reasoning right, step by step, and does it lead somewhere?

A *step* is an equation written in the think block, ``lhs = result``, where ``lhs`` is two or more numbers
joined by ``+ - * /`` (``×`` and ``÷`` too), e.g. ``3*4=12``, ``12 + 12 = 24``, ``12*3+7=43``. The left side
is computed exactly (``fractions.Fraction``, ``*`` and ``/`` before ``+`` and ``-``, left to right) from the
numbers parsed out of the text -- model text is never evaluated -- and compared with the written result
exactly (``10/4=2.5`` is right, ``10/3=3.33`` is not: no rounding is accepted). Chains share their middle
value: ``3*4=12+12=24`` is the two steps ``3*4=12`` and ``12+12=24``.

``check_steps(completion, question=..., answer=...)`` returns a :class:`StepCheck`: the steps, how many are
right, their share, and whether the trace is *verified*: at least one step, every step right, and

- ``grounded`` (when ``question`` is given): every operand is a number of the question or the result of an
  earlier step -- the steps work on this problem, not on another one;
- ``reaches_answer`` (when ``answer`` is given): the last step's result equals the answer.

``step_reward`` is the same as a reward function (1.0 for a verified trace, else the share of right steps
times 0.5), usable in ``reward.weights`` as ``alignkit.rewards.steps:step_reward``.

Threat model: what a policy may try and what this verifier does

- no steps at all (``<think>I know it</think><answer>19</answer>``, an empty think block): not verified,
  share 0 -- a trace without checkable arithmetic is not readable reasoning for this task.
- a right answer after wrong steps (``3*4=13 ... <answer>19</answer>``): not verified (R1-Zero's
  "readable" rows and rejection sampling with ``verify_steps`` drop it).
- true but unrelated steps (``1+1=2`` then the right answer): not grounded (operands not in the question)
  and does not reach the answer -> not verified.
- steps written outside the think block or in the answer block: only the think block is read (the whole
  completion before any ``<answer>`` when it has no think block).
- huge numbers to make the check slow: operands and results over 30 digits end the step as wrong.
- limits (not refused): numbers written in words ("three bags") are not operands, so a question that gives a
  number only in words cannot ground that operand (grounding is off without ``question``); thousands
  separators ("1,000") and percentages are not parsed as one number; a step may be right and grounded yet
  irrelevant (``12+5=17`` never used): only the last step is tied to the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

_NUM = r"\d+(?:\.\d+)?"
_OP = r"[+\-*/×÷]"
# a chain a op b (op c ...) = r; the result sits in a lookahead so that "3*4=12+12=24" yields both steps
_STEP = re.compile(rf"(?<!\d)(?<!\d\.)(?P<lhs>-?{_NUM}(?:\s*{_OP}\s*{_NUM})+)\s*=\s*(?=(?P<rhs>-?{_NUM})(?!\.?\d))")
_TOKEN = re.compile(rf"-?{_NUM}|{_OP}")
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_NUMBERS = re.compile(rf"(?<![\d.]){_NUM}")
_MAX_DIGITS = 30
_CANON = {"×": "*", "÷": "/"}


@dataclass(frozen=True)
class Step:
    text: str  # "3*4=12"
    operands: tuple[Fraction, ...]
    value: Fraction | None  # the left side computed; None when it cannot be (division by zero, too long)
    result: Fraction

    @property
    def correct(self) -> bool:
        return self.value is not None and self.value == self.result


@dataclass(frozen=True)
class StepCheck:
    steps: list[Step] = field(default_factory=list)
    grounded: bool | None = None  # None: no question given
    reaches_answer: bool | None = None  # None: no answer given

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def n_correct(self) -> int:
        return sum(s.correct for s in self.steps)

    @property
    def share(self) -> float:
        """Share of right steps (0.0 when there is none)."""
        return self.n_correct / self.n_steps if self.steps else 0.0

    @property
    def all_correct(self) -> bool:
        """At least one step and every step right."""
        return bool(self.steps) and self.n_correct == self.n_steps

    @property
    def ok(self) -> bool:
        """Verified: all steps right, grounded and reaching the answer (where those were asked for)."""
        return self.all_correct and self.grounded is not False and self.reaches_answer is not False


def _fraction(text: str) -> Fraction | None:
    digits = text.lstrip("-").replace(".", "")
    return None if len(digits) > _MAX_DIGITS else Fraction(text)


def _evaluate(tokens: list[str]) -> Fraction | None:
    """``*``/``/`` first, then ``+``/``-``, left to right, on exact fractions; None on a division by zero."""
    values = [Fraction(t) for t in tokens[0::2]]
    ops = [_CANON.get(t, t) for t in tokens[1::2]]
    for group in ("*/", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] not in group:
                i += 1
                continue
            a, b = values[i], values[i + 1]
            if ops[i] == "/" and b == 0:
                return None
            values[i:i + 2] = [{"*": a * b, "/": a / b if b else a, "+": a + b, "-": a - b}[ops[i]]]
            del ops[i]
    return values[0]


def reasoning_of(completion: str) -> str:
    """The think block(s); without one, the text before the first ``<answer>``."""
    blocks = _THINK.findall(completion)
    return " ".join(blocks) if blocks else completion.split("<answer>", 1)[0]


def parse_steps(text: str) -> list[Step]:
    """The equations of ``text`` in order.

    >>> [s.text for s in parse_steps("3 bags of 4: 3*4=12, then 12 + 12 = 24 and 24-5=19.")]
    ['3*4=12', '12 + 12 = 24', '24-5=19']
    >>> [(s.text, s.correct) for s in parse_steps("12*3+7=43 3*4=12+1=13")]
    [('12*3+7=43', True), ('3*4=12', True), ('12+1=13', True)]
    """
    steps = []
    for m in _STEP.finditer(text):
        lhs, rhs = m.group("lhs"), m.group("rhs")
        tokens = _TOKEN.findall(lhs)
        # "5-3" after the first operand is an operator and a number, not a negative number
        fixed: list[str] = [tokens[0]]
        for t in tokens[1:]:
            if t.startswith("-") and len(t) > 1 and fixed[-1] not in "+-*/×÷":
                fixed += ["-", t[1:]]
            else:
                fixed.append(t)
        numbers = [_fraction(t) for t in fixed[0::2]]
        result = _fraction(rhs)
        if result is None or any(x is None for x in numbers) or len(fixed) % 2 == 0:
            steps.append(Step(text[m.start("lhs"):m.end("rhs")], tuple(x for x in numbers if x is not None), None, result or Fraction(0)))
            continue
        steps.append(Step(text[m.start("lhs"):m.end("rhs")], tuple(numbers), _evaluate(fixed), result))
    return steps


def _question_text(question: object) -> str:
    if isinstance(question, list):  # chat messages: the last user turn
        users = [m.get("content", "") for m in question if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return str(question)


def check_steps(completion: str, *, question: object = None, answer: object = None) -> StepCheck:
    """Parse and check the steps of ``completion``'s reasoning (see the module docstring).

    >>> c = check_steps("<think>3*4=12 12+12=24 24-5=19</think><answer>19</answer>",
    ...                 question="Tom has 12 apples, buys 3 bags of 4 and gives away 5.", answer="19")
    >>> c.n_steps, c.share, c.grounded, c.reaches_answer, c.ok
    (3, 1.0, True, True, True)
    >>> check_steps("<think>1+1=2</think><answer>19</answer>", question="12 apples, 3 bags of 4, 5 away", answer=19).ok
    False
    """
    steps = parse_steps(reasoning_of(completion))
    grounded = reaches = None
    if question is not None:
        known = {Fraction(x) for x in _NUMBERS.findall(_question_text(question)) if len(x) <= _MAX_DIGITS}
        grounded = True
        for s in steps:
            if not all(x in known or -x in known for x in s.operands):
                grounded = False
                break
            known.add(s.result)
        grounded = grounded and bool(steps)
    if answer is not None:
        try:
            truth = Fraction(str(answer).strip())
        except (ValueError, ZeroDivisionError):
            truth = None
        reaches = bool(steps) and truth is not None and steps[-1].result == truth
    return StepCheck(steps, grounded, reaches)


def step_reward(completion: str, *, question: object = None, prompt: object = None, answer: object = None,
                **_: object) -> float:
    """1.0 for a verified trace (``StepCheck.ok``), else half the share of right steps (0 without steps).

    >>> step_reward("<think>3*4=12 12+7=19</think><answer>19</answer>", question="3 bags of 4 and 7", answer=19)
    1.0
    >>> step_reward("<think>3*4=12 12+7=20</think><answer>20</answer>", question="3 bags of 4 and 7", answer=20)
    0.25
    """
    check = check_steps(completion, question=question if question is not None else prompt, answer=answer)
    return 1.0 if check.ok else 0.5 * check.share
