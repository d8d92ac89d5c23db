"""Accuracy reward: the final answer, extracted from the completion, compared with the ground truth.

Model text is never evaluated. Comparison, first match wins:

1. numeric (fast path): both sides parse as plain numbers -> exact rationals (``fractions.Fraction``), so
   "42" == "42.0", "1/2" == "0.5", "$0.05" == "0.05", "-3" == "-3.0", "1,000" == "1000";
2. normalized text equality;
3. symbolic, only when (1) could not parse a side: math-verify's LaTeX parser (``math_verify.parse`` with
   ``LatexExtractionConfig`` only; its plain-expression extractor calls ``sympy.parse_expr``, which uses
   ``eval``, and is not used) and ``math_verify.verify``, e.g. "\\sqrt{2}/2" == "\\frac{1}{\\sqrt{2}}",
   "2(x+1)" == "2x+2", "\\{1,2\\}" == "\\{2,1\\}". Without math-verify, ``sympy.parsing.latex.parse_latex`` if
   its antlr runtime is present; else no symbolic step (logged once). Answers over 400 characters skip it.
   Timeouts: math-verify's (SIGALRM, 1 s) in the main thread; elsewhere none (documented limit).

Decisions: normalization strips ``$`` (currency and math delimiters), ``\\boxed{}``, ``\\left``/``\\right``,
``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\frac{a}{b}`` of two integers -> a/b, a trailing period, and a single
variable assignment: "x = 5" matches "5" (the right-hand side is the answer). A comma is a thousands separator
only in groups of three ("1,000"); "1,2" is a list, left to the symbolic step. Units in words do not match
("5 cents" != "$0.05", as in the lecture's bat-and-ball example). Percent signs go to the symbolic step,
which accepts "10%" for both "10" and "0.1".
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

from alignkit.rewards.errors import RewardError

logger = logging.getLogger(__name__)

_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(/\d+)?$")
_THOUSANDS = re.compile(r"(?<![\d,])\d{1,3}(,\d{3})+(?![\d,])")
_ASSIGN = re.compile(r"^[A-Za-z]\s*=\s*(?P<rhs>[^=<>]+)$")
_INT_FRAC = re.compile(r"^(-?)\\frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}$")
_SYMBOLIC_MAX_CHARS = 400
_warned_no_symbolic = False


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces matched (so ``\\boxed{\\frac{1}{2}}`` works)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def extract_answer(completion: str, *, strict: bool = False) -> str | None:
    """The last ``<answer>...</answer>`` content, else the last ``\\boxed{...}``, else (unless ``strict``)
    the last number in the text after any ``</think>``; None if there is none.

    Accuracy measures whether the answer is right; whether it is in the R1 layout is the format reward's
    job, so a plain "23+45=68" counts as the answer 68. ``strict=True`` accepts tagged answers only.

    >>> extract_answer("<think>2+2=4</think><answer> 4 </answer>")
    '4'
    >>> extract_answer("so the result is \\\\boxed{\\\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> extract_answer("23+45=68"), extract_answer("23+45=68", strict=True)
    ('68', None)
    >>> extract_answer("no answer here") is None
    True
    """
    found = _ANSWER.findall(completion)
    answer = found[-1] if found else _last_boxed(completion)
    if answer is None and not strict:
        numbers = _LAST_NUMBER.findall(completion.rsplit("</think>", 1)[-1])
        answer = numbers[-1] if numbers else None
    return answer.strip() if answer is not None else None


def parse_number(text: str) -> Fraction | None:
    """Exact rational value of a plain number: '42', '-3.50', '1/2', '$1,000' ; None if not a number.

    >>> parse_number("$1,000.50") == Fraction(200100, 200)
    True
    >>> parse_number("x+1") is None, parse_number("1,2") is None
    (True, True)
    """
    s = text.strip().replace("\\$", "").replace("$", "").replace(" ", "")
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(text: str) -> str:
    """The answer with presentation removed (see the module docstring for the list).

    >>> normalize_answer(" $x = \\\\dfrac{3}{4}$. "), normalize_answer("\\\\boxed{\\\\left(1, 2\\\\right)}")
    ('3/4', '(1, 2)')
    """
    s = str(text).strip()
    boxed = _last_boxed(s)
    if boxed is not None and s.startswith("\\boxed{") and s.endswith("}"):
        s = boxed.strip()
    s = s.replace("\\$", "").replace("$", "").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\!", "").strip().rstrip(".").strip()
    m = _ASSIGN.match(s)
    if m:
        s = m.group("rhs").strip()
    m = _INT_FRAC.match(s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    return s


def _symbolic_equal(predicted: str, truth: str) -> bool:
    if max(len(predicted), len(truth)) > _SYMBOLIC_MAX_CHARS:
        return False
    in_main = threading.current_thread() is threading.main_thread()
    try:
        from math_verify import LatexExtractionConfig, parse, verify
    except ImportError:
        return _sympy_equal(predicted, truth, in_main)
    timeout = 1 if in_main else None
    config = [LatexExtractionConfig()]
    gold, pred = (parse("$" + s.replace("%", "\\%") + "$", extraction_config=config, parsing_timeout=timeout)
                  for s in (truth, predicted))
    return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))


def _sympy_equal(predicted: str, truth: str, in_main: bool) -> bool:
    """Fallback without math-verify: sympy's LaTeX parser (never ``sympify``), difference simplified to 0."""
    global _warned_no_symbolic
    try:
        import sympy
        from sympy.parsing.latex import parse_latex

        a, b = parse_latex(predicted), parse_latex(truth)
        return bool(sympy.simplify(a - b) == 0)
    except ImportError as e:
        if not _warned_no_symbolic:
            logger.warning("no symbolic answer check (install math-verify): %s", e)
            _warned_no_symbolic = True
    except Exception:  # unparsable LaTeX, or a difference sympy cannot form: not equal
        pass
    return False


def answers_match(predicted: str, truth: str) -> bool:
    """Numeric equality when both parse as numbers, else normalized text, else symbolic equivalence.

    >>> answers_match("42.0", "42"), answers_match("0.5", "1/2"), answers_match("41", "42")
    (True, True, False)
    >>> answers_match("x = 5", "5"), answers_match("\\\\frac{1}{2}", "0.5"), answers_match("5 cents", "$0.05")
    (True, True, False)
    """
    p, t = normalize_answer(predicted), normalize_answer(str(truth))
    pn, tn = parse_number(p), parse_number(t)
    if pn is not None and tn is not None:
        return pn == tn
    if p == t:
        return True
    return bool(p) and bool(t) and _symbolic_equal(p, t)


def accuracy_reward(completion: str, *, answer: str | int | float, strict: bool = False, **_: object) -> float:
    """1.0 if the completion's final answer equals ``answer``, else 0.0 (``strict``: tagged answers only).

    >>> accuracy_reward("<think>12*3=36</think><answer>36</answer>", answer=36)
    1.0
    >>> accuracy_reward("<answer>35</answer>", answer="36"), accuracy_reward("12*3=36", answer=36, strict=True)
    (0.0, 0.0)
    """
    predicted = extract_answer(completion, strict=strict)
    return 1.0 if predicted is not None and answers_match(predicted, str(answer)) else 0.0


def digit_match_reward(completion: str, *, answer: str | int, strict: bool = False, **_: object) -> float:
    """Partial credit for an integer answer: the share of digit positions (right-aligned, the sign a position
    of its own) where the completion's final answer agrees with ``answer``; 0.0 for no answer or a non-integer.

        r = #{i : pred_i == truth_i} / max(len(pred), len(truth))     over the right-aligned strings

    A dense companion to ``accuracy_reward`` for arithmetic (1.0 exactly when the integer is right): with a
    binary reward a small model that rarely gets a hard sum right gets almost no learning signal, while each
    right digit here is signal (the GRPO learning config weights accuracy + digits).

    >>> digit_match_reward("<answer>118</answer>", answer=115), digit_match_reward("115", answer="115")
    (0.6666666666666666, 1.0)
    >>> digit_match_reward("15", answer=115), digit_match_reward("-5", answer=5), digit_match_reward("none", answer=3)
    (0.6666666666666666, 0.5, 0.0)
    """
    predicted = extract_answer(completion, strict=strict)
    value = parse_number(normalize_answer(predicted)) if predicted is not None else None
    truth = parse_number(normalize_answer(str(answer)))
    if truth is None or truth.denominator != 1:
        raise RewardError(f"digit_match_reward needs an integer answer, got {answer!r}")
    if value is None or value.denominator != 1:
        return 0.0
    p, t = str(int(value)), str(int(truth))
    width = max(len(p), len(t))
    return sum(a == b for a, b in zip(p.rjust(width), t.rjust(width))) / width
