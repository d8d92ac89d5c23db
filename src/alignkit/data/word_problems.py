"""Multi-step arithmetic word problems with exact answers: a task with room to reason, held out by seed.

Each problem is a short story with two or three operations in words, e.g.

    Tom has 12 apples. He buys 3 bags of 4 apples each and gives away 5 apples. How many apples does Tom have now?
    -> <think>3*4=12 12+12=24 24-5=19</think><answer>19</answer>

Answers are computed with Python ints on the drawn numbers (never by evaluating text); every intermediate
value is a non-negative integer (divisions are exact), so each step of ``ideal_trace`` checks out under
``alignkit.rewards.steps.check_steps`` -- and is *grounded*: its operands are numbers of the question or
results of earlier steps. Numbers are written in digits, so a step verifier can ground them.

Held out by seed: ``word_problem_split(n_train, n_eval, seed=...)`` draws ``n_eval`` distinct questions
first and then training problems that never repeat one of them; ``word_problem_eval_set`` and
``word_problem_train_problems`` are the two halves with the pipeline's fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ben", "Nora", "Ivan", "Zoe", "Ravi", "Emma")
WORD_EVAL_SEED = 2000


@dataclass(frozen=True)
class WordProblem:
    question: str
    answer: int
    steps: tuple[str, ...]  # "3*4=12", in the order they are computed
    template: str
    level: int  # number of operations

    @property
    def answer_text(self) -> str:
        return str(self.answer)


def _step(a: int, op: str, b: int) -> tuple[int, str]:
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    if op == "/":
        assert a % b == 0, (a, b)
    return value, f"{a}{op}{b}={value}"


def _apples(rng: random.Random) -> WordProblem:
    name, item = rng.choice(NAMES), rng.choice(("apples", "stickers", "marbles", "cards"))
    a, b, c = rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 12)
    x, s1 = _step(b, "*", c)
    y, s2 = _step(a, "+", x)
    d = rng.randint(1, y - 1)
    z, s3 = _step(y, "-", d)
    q = (f"{name} has {a} {item}. {name} buys {b} bags of {c} {item} each and gives away {d} {item}. "
         f"How many {item} does {name} have now?")
    return WordProblem(q, z, (s1, s2, s3), "buy_bags_give_away", 3)


def _shelves(rng: random.Random) -> WordProblem:
    a, b = rng.randint(2, 9), rng.randint(5, 30)
    x, s1 = _step(a, "*", b)
    c = rng.randint(1, x // 2)
    y, s2 = _step(x, "-", c)
    d = rng.randint(1, max(1, y - 1))
    z, s3 = _step(y, "-", d)
    q = (f"A shop has {a} shelves with {b} books on each shelf. It sells {c} books on Monday and {d} books on "
         f"Tuesday. How many books are left?")
    return WordProblem(q, z, (s1, s2, s3), "shelves_sold", 3)


def _wages(rng: random.Random) -> WordProblem:
    name = rng.choice(NAMES)
    a, b = rng.randint(5, 25), rng.randint(2, 9)
    x, s1 = _step(a, "*", b)
    c = rng.randint(1, x - 1)
    y, s2 = _step(x, "-", c)
    q = (f"{name} earns {a} dollars a day for {b} days and then spends {c} dollars. "
         f"How many dollars does {name} have left?")
    return WordProblem(q, y, (s1, s2), "wages_spent", 2)


def _pages(rng: random.Random) -> WordProblem:
    name = rng.choice(NAMES)
    a, b, c, d = rng.randint(5, 30), rng.randint(2, 7), rng.randint(5, 30), rng.randint(2, 7)
    x, s1 = _step(a, "*", b)
    y, s2 = _step(c, "*", d)
    z, s3 = _step(x, "+", y)
    q = (f"{name} reads {a} pages a day for {b} days, then {c} pages a day for {d} days. "
         f"How many pages does {name} read in all?")
    return WordProblem(q, z, (s1, s2, s3), "pages_two_rates", 3)


def _jars(rng: random.Random) -> WordProblem:
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
    x, s1 = _step(a, "+", b)
    y, s2 = _step(x, "*", c)
    q = f"Each of {c} jars holds {a} red marbles and {b} blue marbles. How many marbles are in the jars in all?"
    return WordProblem(q, y, (s1, s2), "jars_two_colours", 2)


def _share(rng: random.Random) -> WordProblem:
    name = rng.choice(NAMES)
    d = rng.randint(2, 6)
    a, b = rng.randint(2, 8), rng.randint(3, 12)
    x, s1 = _step(a, "*", b)
    c = rng.randint(1, 3 * d)
    c += (-(x + c)) % d  # the total is a multiple of d: the share is exact
    y, s2 = _step(x, "+", c)
    z, s3 = _step(y, "/", d)
    q = (f"{name} buys {a} boxes of {b} pencils and {c} loose pencils, then shares all the pencils equally among "
         f"{d} friends. How many pencils does each friend get?")
    return WordProblem(q, z, (s1, s2, s3), "share_equally", 3)


TEMPLATES: dict[str, Callable[[random.Random], WordProblem]] = {
    "buy_bags_give_away": _apples, "shelves_sold": _shelves, "wages_spent": _wages,
    "pages_two_rates": _pages, "jars_two_colours": _jars, "share_equally": _share,
}


def make_word_problems(n: int, *, seed: int = 0, templates: list[str] | None = None) -> list[WordProblem]:
    """``n`` i.i.d. problems (repeats possible) of the given templates (default: all), seeded."""
    names = templates or list(TEMPLATES)
    unknown = [t for t in names if t not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown word-problem template(s) {unknown}; known: {', '.join(TEMPLATES)}")
    rng = random.Random(seed)
    return [TEMPLATES[rng.choice(names)](rng) for _ in range(n)]


def word_problem_split(n_train: int, n_eval: int, *, seed: int = WORD_EVAL_SEED,
                       templates: list[str] | None = None) -> tuple[list[WordProblem], list[WordProblem]]:
    """(train, eval): ``n_eval`` distinct held-out questions, then ``n_train`` training problems that never
    repeat a held-out question (the question space is in the millions: no size limit is needed)."""
    names = templates or list(TEMPLATES)
    rng = random.Random(seed)
    held: dict[str, WordProblem] = {}
    while len(held) < n_eval:
        p = TEMPLATES[rng.choice(names)](rng)
        held.setdefault(p.question, p)
    train: list[WordProblem] = []
    while len(train) < n_train:
        p = TEMPLATES[rng.choice(names)](rng)
        if p.question not in held:
            train.append(p)
    return train, list(held.values())


WORD_EVAL_SIZE = 200  # the held-out set's size: training draws exclude all of it, whatever n is evaluated


def word_problem_eval_set(n: int = WORD_EVAL_SIZE, *, seed: int = WORD_EVAL_SEED) -> list[WordProblem]:
    """The first ``n`` (<= 200) of the seeded held-out word problems."""
    if n > WORD_EVAL_SIZE:
        raise ValueError(f"the held-out word-problem set has {WORD_EVAL_SIZE} questions (asked for {n})")
    return word_problem_split(0, WORD_EVAL_SIZE, seed=seed)[1][:n]


def word_problem_train_problems(n: int, *, seed: int = WORD_EVAL_SEED) -> list[WordProblem]:
    """``n`` training problems, none of them a question of ``word_problem_eval_set(seed=seed)``."""
    return word_problem_split(n, WORD_EVAL_SIZE, seed=seed)[0]


def word_ideal_trace(problem: WordProblem) -> str:
    """R1-format completion with one verified step per operation:
    ``<think>3*4=12 12+12=24 24-5=19</think><answer>19</answer>``."""
    return f"<think>{' '.join(problem.steps)}</think><answer>{problem.answer}</answer>"
