"""Synthetic preference pairs from the arithmetic task (reward modeling, DPO).

The chosen completion is always the correct R1-format trace (``ideal_trace``). The rejected one has a final
answer off by a small nonzero random amount, in one of two ways (``rejected=``):

    23+45  chosen                     <think>23+45=68</think><answer>68</answer>
           rejected, "wrong_answer"   <think>23+45=68</think><answer>66</answer>   (offset -2)
           rejected, "wrong_trace"    <think>23+45=66</think><answer>66</answer>   (offset -2)

"wrong_answer": the trace is right and the answer contradicts it, so comparing the answer with the trace's
last result tells the two apart; a freshly initialized tiny model learns that in ~100 steps.
"wrong_trace": the last step's result is wrong too, so the trace is self-consistent and only checking the
arithmetic tells the two apart; that needs a trunk that already knows arithmetic.

With ``max_offset <= 9`` the units digit always differs. Seeded: the same arguments give the same rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from alignkit.data.arithmetic import Problem, evaluate_steps

REJECTED = ("wrong_answer", "wrong_trace")


def wrong_completion(problem: Problem, offset: int, *, rejected: str = "wrong_answer") -> str:
    """R1-format completion with the answer ``answer + offset`` (offset != 0); with "wrong_trace" the last
    step's result is changed to match it.

    >>> from alignkit.data.arithmetic import Problem
    >>> p = Problem("12*3+7", 43, 4, (12, 3, 7), ("*", "+"))
    >>> wrong_completion(p, 2)
    '<think>12*3=36 36+7=43</think><answer>45</answer>'
    >>> wrong_completion(p, 2, rejected="wrong_trace")
    '<think>12*3=36 36+7=45</think><answer>45</answer>'
    """
    if offset == 0:
        raise ValueError("offset must be nonzero: a zero offset gives the correct answer")
    if rejected not in REJECTED:
        raise ValueError(f"rejected must be one of {list(REJECTED)} (got {rejected!r})")
    answer, steps = evaluate_steps(problem.operands, problem.operators)
    wrong = answer + offset
    if rejected == "wrong_trace":
        steps[-1] = f"{steps[-1].rsplit('=', 1)[0]}={wrong}"
    return f"<think>{' '.join(steps)}</think><answer>{wrong}</answer>"


def to_preference_records(problems: Iterable[Problem], *, seed: int = 0, max_offset: int = 5,
                          rejected: str = "wrong_answer") -> list[dict]:
    """Preference rows ``{"prompt", "chosen", "rejected", "answer"}``: chosen = ``ideal_trace``, rejected =
    ``wrong_completion`` with an offset drawn uniformly from [-max_offset, max_offset] minus {0}.

    >>> from alignkit.data.arithmetic import make_problems
    >>> to_preference_records(make_problems(1, level=1, seed=3), seed=0)
    [{'prompt': '5+9', 'chosen': '<think>5+9=14</think><answer>14</answer>', 'rejected': '<think>5+9=14</think><answer>16</answer>', 'answer': '14'}]
    """
    from alignkit.data.arithmetic import ideal_trace

    if max_offset < 1:
        raise ValueError(f"max_offset must be >= 1 (got {max_offset})")
    rng = random.Random(seed)
    offsets = [d for d in range(-max_offset, max_offset + 1) if d]
    return [{"prompt": p.question, "chosen": ideal_trace(p),
             "rejected": wrong_completion(p, rng.choice(offsets), rejected=rejected), "answer": p.answer_text}
            for p in problems]


# Used by DPO and KTO (and online DPO's held-out set): the rejected side may also be the right answer badly
# formatted.
REJECTED_KINDS = ("wrong_answer", "wrong_trace", "bad_format")
MIXED_KINDS = ("wrong_answer", "bad_format")  # wrong_trace needs a model that can check arithmetic: opt-in


def bad_format_completion(problem, variant: int) -> str:
    """The right answer in one of four wrong layouts (``variant`` mod 4): bare number, ``q=a``, an answer
    block without the think block, a think block without the answer tags.

    >>> from alignkit.data import Problem
    >>> p = Problem("23+45", 68, 2, (23, 45), ("+",))
    >>> [bad_format_completion(p, v) for v in range(4)]
    ['68', '23+45=68', '<answer>68</answer>', '<think>23+45=68</think>68']
    """
    from alignkit.data import evaluate_steps

    _, steps = evaluate_steps(problem.operands, problem.operators)
    layouts = (str(problem.answer), f"{problem.question}={problem.answer}", f"<answer>{problem.answer}</answer>",
               f"<think>{' '.join(steps)}</think>{problem.answer}")
    return layouts[variant % len(layouts)]


def arithmetic_preferences(problems, *, rejected: str = "mixed", max_offset: int = 5, seed: int = 0) -> list[dict]:
    """Preference rows ``{"prompt", "chosen", "rejected", "answer", "rejected_kind"}``: chosen = the correct
    R1 trace; rejected = a wrong answer (``alignkit.data.preferences.wrong_completion``) or the right answer
    badly formatted (:func:`bad_format_completion`), per ``rejected`` ('mixed': wrong_answer or bad_format,
    drawn per pair)."""
    from alignkit.data import ideal_trace

    if rejected != "mixed" and rejected not in REJECTED_KINDS:
        raise ValueError(f"rejected must be 'mixed' or one of {list(REJECTED_KINDS)} (got {rejected!r})")
    rng = random.Random(seed)
    offsets = [d for d in range(-max_offset, max_offset + 1) if d]
    rows = []
    for p in problems:
        kind = rng.choice(MIXED_KINDS) if rejected == "mixed" else rejected
        bad = (bad_format_completion(p, rng.randrange(4)) if kind == "bad_format"
               else wrong_completion(p, rng.choice(offsets), rejected=kind))
        rows.append({"prompt": p.question, "chosen": ideal_trace(p), "rejected": bad, "answer": p.answer_text,
                     "rejected_kind": kind})
    return rows
