"""Multi-step arithmetic word problems with exact answers, in English or Chinese: a task with room to reason,
held out by seed.

Each problem is a short story with two or three operations in words, e.g.

    Tom has 12 apples. Tom buys 3 bags of 4 apples each and gives away 5 apples. How many apples does Tom have now?
    -> <think>First, 3*4=12. Then, 12+12=24. Finally, 24-5=19.</think><answer>19</answer>

or the same problem asked in Chinese (``word_problem_in(problem, "zh")``: same numbers, steps and answer)

    小明有12个苹果。小明买了3袋苹果，每袋4个，又送出了5个苹果。小明现在有多少个苹果？
    -> <think>首先，3*4=12。然后，12+12=24。最后，24-5=19。</think><answer>19</answer>

Answers are computed with Python ints on the drawn numbers (never by evaluating text); every intermediate
value is a non-negative integer (divisions are exact), so each step of ``word_ideal_trace`` checks out under
``alignkit.rewards.steps.check_steps`` -- and is *grounded*: its operands are numbers of the question or
results of earlier steps. Numbers are written in Arabic digits in both languages, so a step verifier can
ground them. The ideal trace puts words of the problem's language around each step ("First, ... Then, ...
Finally, ..." / "首先，……然后，……最后，……"), so that a language-consistency reward
(``alignkit.rewards.language``) has words to judge.

Each template draws its numbers first (rng -> values) and renders them in a language second, so a problem can
be asked in another language without a new draw; English is the language of every draw (the questions of a
seed are the same whatever the languages are), ``word_problem_in`` re-asks a problem in ``zh`` (or back), and
``second_language_indices(n, share)`` decides which of ``n`` problems are asked in the second language.

Held out by seed: ``word_problem_split(n_train, n_eval, seed=...)`` draws ``n_eval`` distinct questions
first and then training problems that never repeat one of them; ``word_problem_eval_set`` and
``word_problem_train_problems`` are the two halves with the pipeline's fixed seed (held out by the English
question: a problem and its translation are the same problem).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction

NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Maya", "Ben", "Nora", "Ivan", "Zoe", "Ravi", "Emma")
ZH_NAMES = ("小明", "小红", "李华", "小丽", "王强", "小芳", "张伟", "小雪", "刘洋", "小美", "陈杰", "小英")  # NAMES[i] -> ZH_NAMES[i]
LANGUAGES = ("en", "zh")
SECOND_LANGUAGE = "zh"
WORD_EVAL_SEED = 2000

_ITEMS = ("apples", "stickers", "marbles", "cards")
_ZH_ITEMS = {"apples": "苹果", "stickers": "贴纸", "marbles": "弹珠", "cards": "卡片"}
_ZH_UNITS = {"apples": "个", "stickers": "张", "marbles": "颗", "cards": "张"}  # measure words
# words around the steps of the ideal trace: (first, middle, last) connective and how a step is written
_TRACE_WORDS = {"en": (("First", "Then", "Finally"), "{word}, {step}.", " "),
                "zh": (("首先", "然后", "最后"), "{word}，{step}。", "")}


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"unknown word-problem language {language!r}; known: {', '.join(LANGUAGES)}")


@dataclass(frozen=True)
class WordProblem:
    question: str
    answer: int
    steps: tuple[str, ...]  # "3*4=12", in the order they are computed
    template: str
    level: int  # number of operations
    language: str = "en"  # the language the question is asked in: "en" or "zh"

    def __post_init__(self) -> None:
        _check_language(self.language)

    @property
    def answer_text(self) -> str:
        return str(self.answer)


def _step(a: int, op: str, b: int) -> tuple[int, str]:
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    if op == "/":
        assert a % b == 0, (a, b)
    return value, f"{a}{op}{b}={value}"


Draw = tuple[dict, int, tuple[str, ...]]  # (values: name/item in English and the numbers, answer, steps)


def _apples(rng: random.Random) -> Draw:
    name, item = rng.choice(NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 12)
    x, s1 = _step(b, "*", c)
    y, s2 = _step(a, "+", x)
    d = rng.randint(1, y - 1)
    z, s3 = _step(y, "-", d)
    return {"name": name, "item": item, "a": a, "b": b, "c": c, "d": d}, z, (s1, s2, s3)


def _shelves(rng: random.Random) -> Draw:
    a, b = rng.randint(2, 9), rng.randint(5, 30)
    x, s1 = _step(a, "*", b)
    c = rng.randint(1, x // 2)
    y, s2 = _step(x, "-", c)
    d = rng.randint(1, max(1, y - 1))
    z, s3 = _step(y, "-", d)
    return {"a": a, "b": b, "c": c, "d": d}, z, (s1, s2, s3)


def _wages(rng: random.Random) -> Draw:
    name = rng.choice(NAMES)
    a, b = rng.randint(5, 25), rng.randint(2, 9)
    x, s1 = _step(a, "*", b)
    c = rng.randint(1, x - 1)
    y, s2 = _step(x, "-", c)
    return {"name": name, "a": a, "b": b, "c": c}, y, (s1, s2)


def _pages(rng: random.Random) -> Draw:
    name = rng.choice(NAMES)
    a, b, c, d = rng.randint(5, 30), rng.randint(2, 7), rng.randint(5, 30), rng.randint(2, 7)
    x, s1 = _step(a, "*", b)
    y, s2 = _step(c, "*", d)
    z, s3 = _step(x, "+", y)
    return {"name": name, "a": a, "b": b, "c": c, "d": d}, z, (s1, s2, s3)


def _jars(rng: random.Random) -> Draw:
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
    x, s1 = _step(a, "+", b)
    y, s2 = _step(x, "*", c)
    return {"a": a, "b": b, "c": c}, y, (s1, s2)


def _share(rng: random.Random) -> Draw:
    name = rng.choice(NAMES)
    d = rng.randint(2, 6)
    a, b = rng.randint(2, 8), rng.randint(3, 12)
    x, s1 = _step(a, "*", b)
    c = rng.randint(1, 3 * d)
    c += (-(x + c)) % d  # the total is a multiple of d: the share is exact
    y, s2 = _step(x, "+", c)
    z, s3 = _step(y, "/", d)
    return {"name": name, "a": a, "b": b, "c": c, "d": d}, z, (s1, s2, s3)


# the words of a question: "name", "item" (and Chinese "unit", the item's measure word) in each language
_WORDS = {
    "en": {"name": dict(zip(NAMES, NAMES)), "item": dict(zip(_ITEMS, _ITEMS))},
    "zh": {"name": dict(zip(NAMES, ZH_NAMES)), "item": _ZH_ITEMS, "unit": _ZH_UNITS},
}
_FIELD_OF = {"unit": "item"}  # a word rendered from another value


@dataclass(frozen=True)
class _Template:
    """A template: ``draw`` (rng -> values, answer, steps) and the question's text in each language (a format
    string over the values; "name", "item" and "unit" are rendered in the language, numbers as digits)."""

    name: str
    level: int
    draw: Callable[[random.Random], Draw]
    texts: dict[str, str]

    def __call__(self, rng: random.Random, language: str = "en") -> WordProblem:
        """One problem drawn from ``rng`` and asked in ``language`` (the draws do not depend on it)."""
        _check_language(language)
        values, answer, steps = self.draw(rng)
        return WordProblem(self.render(values, language), answer, steps, self.name, self.level, language)

    def render(self, values: dict, language: str) -> str:
        words = _WORDS[language]
        fields = {f: words[f][values[_FIELD_OF.get(f, f)]] if f in words else values[f]
                  for _, f, _, _ in string.Formatter().parse(self.texts[language]) if f is not None}
        return self.texts[language].format(**fields)

    def parse(self, question: str, language: str) -> dict:
        """The values ``render`` wrote ``question`` from (ValueError when it did not)."""
        m = _question_pattern(self.name, language).fullmatch(question)
        values: dict = {}
        for f, text in (m.groupdict() if m else {}).items():
            words = _WORDS[language].get(f)
            if words is None:
                values[f] = int(text)
            elif f not in _FIELD_OF:
                values[f] = next(k for k, v in words.items() if v == text)
        if m is None or self.render(values, language) != question:
            raise ValueError(f"not a {language!r} question of the word-problem template {self.name!r}: {question!r}")
        return values


TEMPLATES: dict[str, _Template] = {t.name: t for t in (
    _Template("buy_bags_give_away", 3, _apples, {
        "en": "{name} has {a} {item}. {name} buys {b} bags of {c} {item} each and gives away {d} {item}. "
              "How many {item} does {name} have now?",
        "zh": "{name}有{a}{unit}{item}。{name}买了{b}袋{item}，每袋{c}{unit}，又送出了{d}{unit}{item}。"
              "{name}现在有多少{unit}{item}？"}),
    _Template("shelves_sold", 3, _shelves, {
        "en": "A shop has {a} shelves with {b} books on each shelf. It sells {c} books on Monday and {d} books on "
              "Tuesday. How many books are left?",
        "zh": "一家商店有{a}个书架，每个书架上有{b}本书。商店星期一卖出了{c}本书，星期二卖出了{d}本书。"
              "还剩多少本书？"}),
    _Template("wages_spent", 2, _wages, {
        "en": "{name} earns {a} dollars a day for {b} days and then spends {c} dollars. "
              "How many dollars does {name} have left?",
        "zh": "{name}每天挣{a}元，挣了{b}天，然后花掉了{c}元。{name}还剩多少元？"}),
    _Template("pages_two_rates", 3, _pages, {
        "en": "{name} reads {a} pages a day for {b} days, then {c} pages a day for {d} days. "
              "How many pages does {name} read in all?",
        "zh": "{name}每天读{a}页书，读了{b}天，然后每天读{c}页书，又读了{d}天。{name}一共读了多少页书？"}),
    _Template("jars_two_colours", 2, _jars, {
        "en": "Each of {c} jars holds {a} red marbles and {b} blue marbles. How many marbles are in the jars in all?",
        "zh": "有{c}个罐子，每个罐子里装着{a}颗红弹珠和{b}颗蓝弹珠。这些罐子里一共有多少颗弹珠？"}),
    _Template("share_equally", 3, _share, {
        "en": "{name} buys {a} boxes of {b} pencils and {c} loose pencils, then shares all the pencils equally among "
              "{d} friends. How many pencils does each friend get?",
        "zh": "{name}买了{a}盒铅笔，每盒{b}支，另外还有{c}支散装铅笔，然后把所有铅笔平均分给{d}个朋友。"
              "每个朋友分到多少支铅笔？"}),
)}

_PATTERNS: dict[tuple[str, str], re.Pattern] = {}


def _question_pattern(template: str, language: str) -> re.Pattern:
    """A template's text as a regex: words as the alternation of their renderings, numbers as digits, a value
    written twice as a back-reference."""
    key = (template, language)
    if key not in _PATTERNS:
        pattern, seen = "", set()
        for literal, f, _, _ in string.Formatter().parse(TEMPLATES[template].texts[language]):
            pattern += re.escape(literal)
            if f is None:
                continue
            if f in seen:
                pattern += f"(?P={f})"
                continue
            seen.add(f)
            words = _WORDS[language].get(f)
            choices = "|".join(re.escape(w) for w in sorted(set(words.values()), key=len, reverse=True)) \
                if words else r"\d+"
            pattern += f"(?P<{f}>{choices})"
        _PATTERNS[key] = re.compile(pattern)
    return _PATTERNS[key]


def word_problem_in(problem: WordProblem, language: str) -> WordProblem:
    """The same problem (numbers, steps, answer, template, level) asked in ``language`` ("en" or "zh").

    >>> p = make_word_problems(1, seed=11, templates=["wages_spent"])[0]
    >>> p.question
    'Ivan earns 19 dollars a day for 9 days and then spends 131 dollars. How many dollars does Ivan have left?'
    >>> zh = word_problem_in(p, "zh")
    >>> zh.question, zh.steps, zh.language
    ('刘洋每天挣19元，挣了9天，然后花掉了131元。刘洋还剩多少元？', ('19*9=171', '171-131=40'), 'zh')
    >>> word_problem_in(zh, "en") == p
    True
    """
    _check_language(language)
    if problem.template not in TEMPLATES:
        raise ValueError(f"unknown word-problem template {problem.template!r}; known: {', '.join(TEMPLATES)}")
    if problem.language == language:
        return problem
    template = TEMPLATES[problem.template]
    values = template.parse(problem.question, problem.language)
    return replace(problem, question=template.render(values, language), language=language)


def second_language_indices(n: int, share: float) -> list[bool]:
    """Which of ``n`` problems are asked in the second language: problem ``i`` is iff
    ``floor((i+1)*share) > floor(i*share)`` -- exactly ``floor(n*share)`` of them, spread evenly, the same for
    every call (``share`` is taken as the decimal it is written as: 0.57 of 100 is 57).

    >>> second_language_indices(6, 0.5), sum(second_language_indices(10, 0.3))
    ([False, True, False, True, False, True], 3)
    >>> any(second_language_indices(5, 0.0)), all(second_language_indices(5, 1.0))
    (False, True)
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the second-language share must be in [0, 1] (got {share})")
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    exact = Fraction(repr(float(share)))
    return [int((i + 1) * exact) > int(i * exact) for i in range(n)]


def make_word_problems(n: int, *, seed: int = 0, templates: list[str] | None = None,
                       language: str = "en") -> list[WordProblem]:
    """``n`` i.i.d. problems (repeats possible) of the given templates (default: all), seeded, asked in
    ``language`` (the same problems in every language)."""
    _check_language(language)
    names = templates or list(TEMPLATES)
    unknown = [t for t in names if t not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown word-problem template(s) {unknown}; known: {', '.join(TEMPLATES)}")
    rng = random.Random(seed)
    return [TEMPLATES[rng.choice(names)](rng, language) for _ in range(n)]


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
    """R1-format completion with one verified step per operation, in words of the problem's language:
    ``<think>First, 3*4=12. Then, 12+12=24. Finally, 24-5=19.</think><answer>19</answer>`` or
    ``<think>首先，3*4=12。然后，12+12=24。最后，24-5=19。</think><answer>19</answer>`` (two steps: first and
    finally; one step: first)."""
    (first, then, last), step, sep = _TRACE_WORDS[problem.language]
    n = len(problem.steps)
    words = [first] + [then] * (n - 2) + [last] if n > 1 else [first] * n
    think = sep.join(step.format(word=w, step=s) for w, s in zip(words, problem.steps))
    return f"<think>{think}</think><answer>{problem.answer}</answer>"
