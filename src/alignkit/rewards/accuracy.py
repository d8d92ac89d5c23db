"""Accuracy reward: the final answer, extracted from the completion, compared with the ground truth.

An answer is a *value*, not an expression to evaluate. Model text is never evaluated, and an answer that
would have to be computed to equal the truth ("74-26", "40+8", "96/2", "\\frac{96}{2}") is wrong. Comparison,
first match wins:

1. value: the prediction is a plain value (``parse_value``: an integer, a decimal, a fraction in lowest terms,
   optionally with ``$``, thousands separators -- commas or spaces in groups of three --, a trailing ``%``)
   and the truth parses as a number (``parse_number``) -> exact rationals (``fractions.Fraction``), so
   "42" == "42.0", "1/2" == "0.5", "$0.05" == "0.05", "-3" == "-3.0", "1,000" == "1000"; "10%" matches both
   10 and 0.1;
2. normalized text equality (the truth's own spelling is always accepted);
3. symbolic, only when the truth itself is symbolic (does not parse as a number) and ``symbolic=True``:
   math-verify's LaTeX parser (``math_verify.parse`` with ``LatexExtractionConfig`` only; its plain-expression
   extractor calls ``sympy.parse_expr``, which uses ``eval``, and is not used) and ``math_verify.verify``,
   e.g. "\\sqrt{2}/2" == "\\frac{1}{\\sqrt{2}}", "2(x+1)" == "2x+2", "\\{1,2\\}" == "\\{2,1\\}". Without
   math-verify, ``sympy.parsing.latex.parse_latex`` if its antlr runtime is present; else no symbolic step
   (logged once). Answers over 400 characters skip it. Timeouts: math-verify's (SIGALRM, 1 s) in the main
   thread; elsewhere none (documented limit). An answer found verbatim in the question (``question=`` or
   ``prompt=``, spaces ignored) is not given the symbolic step: copying the question is not an answer.

Decisions: normalization strips ``$`` (currency and math delimiters), a ``\\boxed{}`` around the whole answer,
``\\left``/``\\right``, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\frac{a}{b}`` of two integers -> a/b, a
trailing period, and a single variable assignment: "x = 5" matches "5" (the right-hand side is the answer).
A comma is a thousands separator only in groups of three ("1,000"); "1,2" is a list. Units in words do not
match ("5 cents" != "$0.05", as in the lecture's bat-and-ball example). A fraction is a value only in lowest
terms with a denominator above 1: "1/2" and "\\frac{1}{2}" are values (0.5), "96/2", "\\frac{96}{2}", "2/4"
and "48/1" are divisions the model has not carried out, so they do not match 48 or 0.5 (they still match a
truth spelled the same way). Scientific notation ("4.8e1") is not a plain value.

Threat model: what a policy may try and what this reward does

- copy the question as the answer (``<answer>74-26</answer>`` for 48; "40+8", "6*8", "(50-2)", "48.0+0",
  "x=74-26", "\\frac{96}{2}"): refused -- a numeric truth is compared by value with a plain value only,
  never symbolically; for a symbolic truth a verbatim copy of the question gets no symbolic step.
- hedge with several answers (``<answer>47, 48, 49</answer>``, "47 or 48", two ``<answer>`` blocks, two
  ``\\boxed{}``): one candidate per completion -- the last ``<answer>`` block, else the last whole
  ``\\boxed{}``, else (lenient only) the last number after ``</think>``; a list is not a value.
- put the answer only in the reasoning: numbers inside ``<think>`` never count.
- limits (not refused): for a symbolic truth an equivalent rewriting of the question ("(1+x)^2" for
  "x^2+2x+1") passes the symbolic check -- ask for a canonical form and pass ``symbolic=False`` where that
  matters; ``strict=False`` reads an untagged final number (format is the format reward's job).
  ``digit_match_reward`` pays for any right digit, including one copied from an operand ("8" for 70+8 is
  half right): weight it below accuracy; task success comes from accuracy only.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from fractions import Fraction

from alignkit.rewards.errors import RewardError

logger = logging.getLogger(__name__)

_LAST_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d+(?:\.\d+)?(?:/\d+)?")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(/\d+)?$")
_VALUE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+|(?P<num>\d+)/(?P<den>\d+))$")
_THOUSANDS = re.compile(r"(?<![\d,])\d{1,3}(,\d{3})+(?![\d,])|(?<![\d ])\d{1,3}( \d{3})+(?![\d ])")
_LOOSE_SPACE = re.compile(r"^([+-])\s+|\s*(/)\s*")
_ASSIGN = re.compile(r"^[A-Za-z]\s*=\s*(?P<rhs>[^=<>]+)$")
_INT_FRAC = re.compile(r"^(-?)\\frac\s*(?:\{\s*(-?\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))$")
_PERCENT = re.compile(r"\s*\\?%$")
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


def _plain(text: str) -> str:
    """Currency signs and thousands separators (commas or spaces in groups of three) removed; a space is
    allowed after a sign and around "/", nowhere else ("4 8" is not 48)."""
    s = text.strip().replace("\\$", "").replace("$", "").strip()
    s = _LOOSE_SPACE.sub(lambda m: m.group(1) or m.group(2), s)
    return _THOUSANDS.sub(lambda m: m.group(0).replace(",", "").replace(" ", ""), s)


def parse_number(text: str) -> Fraction | None:
    """Exact rational value of a plain number: '42', '-3.50', '1/2', '$1,000' ; None if not a number.
    Used for the ground truth (any fraction is read as its value); a prediction must pass ``parse_value``.

    >>> parse_number("$1,000.50") == Fraction(200100, 200)
    True
    >>> parse_number("x+1") is None, parse_number("1,2") is None
    (True, True)
    """
    s = _plain(text)
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def parse_value(text: str) -> Fraction | None:
    """Exact value of a prediction that is a plain value: like ``parse_number``, but a fraction counts only
    in lowest terms with a denominator above 1 ("1/2"); "96/2", "2/4", "48/1" are divisions, not values.

    >>> parse_value("1/2"), parse_value("-0.50"), parse_value("$1,000")
    (Fraction(1, 2), Fraction(-1, 2), Fraction(1000, 1))
    >>> parse_value("96/2") is None, parse_value("74-26") is None, parse_value("48.0+0") is None
    (True, True, True)
    """
    s = _plain(text)
    m = _VALUE.match(s)
    if not m:
        return None
    if m.group("den") is not None:
        num, den = int(m.group("num")), int(m.group("den"))
        if den <= 1 or math.gcd(num, den) != 1:
            return None
    return Fraction(s)


def normalize_answer(text: str) -> str:
    """The answer with presentation removed (see the module docstring for the list).

    >>> normalize_answer(" $x = \\\\dfrac{3}{4}$. "), normalize_answer("\\\\boxed{\\\\left(1, 2\\\\right)}")
    ('3/4', '(1, 2)')
    """
    s = str(text).strip().replace("\\$", "").replace("$", "").strip().rstrip(".").strip()
    boxed = _last_boxed(s)
    if boxed is not None and s == "\\boxed{" + boxed + "}":  # only a box around the whole answer
        s = boxed.strip()
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\!", "").strip().rstrip(".").strip()
    m = _ASSIGN.match(s)
    if m:
        s = m.group("rhs").strip()
    m = _INT_FRAC.match(s)
    if m:
        s = f"{m.group(1)}{m.group(2) or m.group(3)}/{m.group(4) or m.group(5)}"
    return s


def _values(text: str, parse) -> set[Fraction]:
    """The values ``text`` may denote: {v}, or {v, v/100} for "v%"."""
    body = _PERCENT.sub("", text)
    v = parse(body)
    if v is None:
        return set()
    return {v, v / 100} if body != text else {v}


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


def _text_of(prompt: object) -> str:
    """Plain text of a prompt: a string, or the contents of a list of chat messages."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


def answers_match(predicted: str, truth: str, *, symbolic: bool = True, question: object = None) -> bool:
    """Value equality (a plain-value prediction against a numeric truth), else normalized text, else -- only
    for a symbolic truth, with ``symbolic`` -- symbolic equivalence; an expression is never evaluated into a
    number. ``question`` (text or chat messages): a prediction found in it verbatim gets no symbolic step.

    >>> answers_match("42.0", "42"), answers_match("0.5", "1/2"), answers_match("41", "42")
    (True, True, False)
    >>> answers_match("x = 5", "5"), answers_match("\\\\frac{1}{2}", "0.5"), answers_match("5 cents", "$0.05")
    (True, True, False)
    >>> answers_match("74-26", "48"), answers_match("96/2", "48"), answers_match("2(x+1)", "2x+2")
    (False, False, True)
    """
    p, t = normalize_answer(predicted), normalize_answer(str(truth))
    truth_values = _values(t, parse_number)
    if truth_values:  # a numeric truth: only a plain value (or the truth's own spelling) matches
        return bool(_values(p, parse_value) & truth_values) or p == t
    if p == t:
        return True
    if not (symbolic and p and t):
        return False
    squeeze = "".join(p.split())
    if squeeze and squeeze in "".join(_text_of(question).split()):
        return False  # copied from the question: not an answer, whatever it simplifies to
    return _symbolic_equal(p, t)


def accuracy_reward(completion: str, *, answer: str | int | float, strict: bool = False, symbolic: bool = True,
                    prompt: object = None, question: object = None, **_: object) -> float:
    """1.0 if the completion's final answer equals ``answer``, else 0.0 (``strict``: tagged answers only;
    ``symbolic=False``: no symbolic step even for a symbolic truth). ``prompt``/``question`` (passed by the
    scorer / the example): an answer copied from them verbatim gets no symbolic credit.

    >>> accuracy_reward("<think>12*3=36</think><answer>36</answer>", answer=36)
    1.0
    >>> accuracy_reward("<answer>35</answer>", answer="36"), accuracy_reward("12*3=36", answer=36, strict=True)
    (0.0, 0.0)
    >>> accuracy_reward("<answer>74-26</answer>", answer=48)  # the question copied: not a value
    0.0
    """
    predicted = extract_answer(completion, strict=strict)
    context = _text_of(question) + "\n" + _text_of(prompt)
    return 1.0 if predicted is not None and answers_match(predicted, str(answer), symbolic=symbolic,
                                                          question=context) else 0.0


def digit_match_reward(completion: str, *, answer: str | int, strict: bool = False, **_: object) -> float:
    """Partial credit for an integer answer: the share of digit positions (right-aligned, the sign a position
    of its own) where the completion's final answer agrees with ``answer``; 0.0 for no answer or a prediction
    that is not a plain integer value (so "96/2" or "74-26" get nothing, as for accuracy).

        r = #{i : pred_i == truth_i} / max(len(pred), len(truth))     over the right-aligned strings

    A dense companion to ``accuracy_reward`` for arithmetic (1.0 exactly when the integer is right): with a
    binary reward a small model that rarely gets a hard sum right gets almost no learning signal, while each
    right digit here is signal (the GRPO learning config weights accuracy + digits). Extra digits lower the
    score (the denominator is the longer length), so padding a number cannot raise it.

    >>> digit_match_reward("<answer>118</answer>", answer=115), digit_match_reward("115", answer="115")
    (0.6666666666666666, 1.0)
    >>> digit_match_reward("15", answer=115), digit_match_reward("-5", answer=5), digit_match_reward("none", answer=3)
    (0.6666666666666666, 0.5, 0.0)
    """
    predicted = extract_answer(completion, strict=strict)
    value = parse_value(normalize_answer(predicted)) if predicted is not None else None
    truth = parse_number(normalize_answer(str(answer)))
    if truth is None or truth.denominator != 1:
        raise RewardError(f"digit_match_reward needs an integer answer, got {answer!r}")
    if value is None or value.denominator != 1:
        return 0.0
    p, t = str(int(value)), str(int(truth))
    width = max(len(p), len(t))
    return sum(a == b for a, b in zip(p.rjust(width), t.rjust(width))) / width
