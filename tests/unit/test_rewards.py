"""Reward functions, table-driven, plus the scorer's failure handling (docs/design.md, rewards are an
attack surface: a verifier or sandbox failure is counted and left out of the loss, never a reward of 0)."""

from __future__ import annotations

import math
import sys
import threading
import time

import pytest

import alignkit.rewards.code as code_module
from alignkit.rewards import (
    RewardError,
    SandboxError,
    SandboxResult,
    accuracy_reward,
    answers_match,
    build_rewards,
    code_reward,
    digit_match_reward,
    extract_answer,
    extract_code,
    format_reward,
    format_reward_soft,
    language_consistency_reward,
    length_penalty,
    resolve_reward,
    reward_metrics,
    score,
    score_batch,
)

# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "predicted, truth, expected",
    [
        ("42", "42", True),
        ("42.0", "42", True),
        ("1/2", "0.5", True),
        ("$0.05", "0.05", True),  # lecture bat-and-ball ground truth
        ("\\$0.05", "$0.05", True),
        ("5 cents", "$0.05", False),  # units in words do not match (lecture GRPO-11 is strict too)
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{3}{4}", "0.75", True),
        ("-\\frac{1}{2}", "-0.5", True),
        ("x = 5", "5", True),  # decided: a single variable assignment's right-hand side is the answer
        ("5", "x=5", True),
        ("-3", "-3.0", True),
        ("-3", "3", False),
        ("1,000", "1000", True),  # thousands separator
        ("1,000.50", "1000.5", True),
        ("41", "42", False),
        ("0.333", "1/3", False),  # exact rationals: no tolerance
        ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", True),  # symbolic (math-verify)
        ("2(x+1)", "2x+2", True),
        ("\\{1, 2\\}", "\\{2, 1\\}", True),
        ("\\pi", "3.14", False),
        ("", "5", False),
    ],
)
def test_answers_match(predicted, truth, expected):
    assert answers_match(predicted, truth) is expected


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<think>12*3=36</think><answer>36</answer>", 36, 1.0),
        ("<think>12*3=36</think><answer> 36.0 </answer>", "36", 1.0),
        ("<think>..</think><answer>35</answer>", 36, 0.0),
        ("The answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),  # nested braces in \boxed
        ("<answer>\\boxed{7}</answer>", 7, 1.0),
        ("<answer>1</answer> then <answer>2</answer>", 2, 1.0),  # the last answer counts
        ("<answer>5", 5, 1.0),  # broken tag: lenient extraction falls back to the last number
        ("plain text ending in 5", 5, 1.0),
        ("plain text ending in 6", 5, 0.0),
        ("no number at all", 5, 0.0),
        ("<think>5</think> so it is 4", 5, 0.0),  # numbers inside the reasoning do not count
        ("<think>x</think><answer>$0.05</answer>", "$0.05", 1.0),
    ],
)
def test_accuracy_reward(completion, answer, expected):
    assert accuracy_reward(completion, answer=answer) == expected


@pytest.mark.parametrize("completion, expected", [("<answer>5", 0.0), ("23+45=5", 0.0), ("<answer>5</answer>", 1.0),
                                                  ("\\boxed{5}", 1.0)])
def test_accuracy_reward_strict_needs_tags(completion, expected):
    assert accuracy_reward(completion, answer=5, strict=True) == expected


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<answer>115</answer>", 115, 1.0),
        ("<answer>118</answer>", 115, 2 / 3),  # hundreds and tens right
        ("15", "115", 2 / 3),  # a missing leading digit is one wrong position
        ("1150", 115, 0.25),  # right-aligned " 115" vs "1150": only the second position agrees
        ("<answer>-12</answer>", -13, 2 / 3),  # the sign is a position of its own
        ("-5", 5, 0.5),
        ("<answer>7.5</answer>", 7, 0.0),  # not an integer
        ("no number", 3, 0.0),
        ("<think>115</think><answer>x</answer>", 115, 0.0),  # the tagged answer counts, not the reasoning
    ],
)
def test_digit_match_reward(completion, answer, expected):
    assert digit_match_reward(completion, answer=answer) == pytest.approx(expected)
    # exactly 1.0 where, and only where, the accuracy reward is 1
    assert (digit_match_reward(completion, answer=answer) == 1.0) == (accuracy_reward(completion, answer=answer) == 1.0)


def test_digit_match_reward_needs_an_integer_answer():
    with pytest.raises(RewardError, match="integer answer"):
        digit_match_reward("<answer>1</answer>", answer="1/2")


def test_extract_answer_prefers_answer_tags_over_boxed():
    assert extract_answer("\\boxed{1} <answer>2</answer>") == "2"
    assert extract_answer("\\boxed{unclosed") is None


def test_symbolic_check_works_off_the_main_thread():
    # math-verify's SIGALRM timeout raises outside the main thread; the reward must not
    out = []
    t = threading.Thread(target=lambda: out.append(answers_match("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}")))
    t.start()
    t.join(30)
    assert out == [True]


def test_without_math_verify_numeric_answers_still_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import fails
    assert answers_match("1/2", "0.5") and answers_match("x=5", "5") and not answers_match("4", "5")
    answers_match("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}")  # no error, whatever the sympy fallback can do


def test_pathological_exponent_tower_is_bounded():
    start = time.monotonic()
    assert not answers_match("9^{9^{9^{9}}}", "1")
    assert time.monotonic() - start < 10  # math-verify's 1 s timeouts in the main thread


# ---------------------------------------------------------------- format


@pytest.mark.parametrize(
    "completion, strict, soft",
    [
        ("<think>20% of 50 is 10</think><answer>10</answer>", 1.0, 1.0),
        ("  <think>a</think>\n<answer>1</answer>\n", 1.0, 1.0),
        ("<answer>10</answer>", 0.0, 0.0),
        ("<think>a</think>", 0.0, 0.0),
        ("<think>a</think><answer></answer>", 0.0, 0.0),  # empty answer (soft: 1.0 before the audit)
        ("<think>a</think><answer>1</answer> extra", 0.0, 1.0),
        ("Sure! <think>a</think><answer>1</answer>", 0.0, 1.0),
        ("<think>a<think>b</think><answer>1</answer>", 0.0, 0.0),  # nested think (soft: 1.0 before the audit)
        ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0, 0.0),  # two answers: a hedge
        ("<answer>1</answer><think>a</think>", 0.0, 0.0),  # wrong order
        ("<think>a</think><answer>1", 0.0, 0.0),  # unclosed
    ],
)
def test_format_rewards(completion, strict, soft):
    assert (format_reward(completion), format_reward_soft(completion)) == (strict, soft)


# ---------------------------------------------------------------- language consistency


@pytest.mark.parametrize(
    "completion, language, expected",
    [
        ("<think>First compute the sum.</think><answer>3</answer>", "en", 1.0),
        ("<think>首先计算总和</think><answer>3</answer>", "zh", 1.0),
        ("<think>首先计算总和</think><answer>3</answer>", "en", 0.0),
        # 4 Han characters (one word each) + 2 Latin words ("the", "sum") -> zh 4/6, en 2/6
        ("<think>首先计算 the sum</think>", "zh", 4 / 6),
        ("<think>首先计算 the sum</think>", "en", 2 / 6),
        # only the reasoning counts: the English answer block is ignored
        ("<think>我们得到答案</think><answer>The answer is five</answer>", "zh", 1.0),
        # no think block: the whole completion; single letters (variables) and LaTeX commands are not words
        ("设 x = \\frac{1}{2}，所以 2x = 1", "zh", 1.0),
        ("Let x = 2, so y = 4", "en", 1.0),  # 'Let', 'so' only; 'x', 'y' skipped
        ("2 + 2 = 4", "en", 1.0),  # nothing script-bearing: nothing inconsistent
        ("<think>Привет мир hello</think>", "ru", 2 / 3),
        ("<think>こんにちは 世界</think>", "ja", 1.0),  # kana + Han both count for ja
        ("<think>unclosed reasoning 中文", "en", 2 / 4),  # unclosed think runs to the end
    ],
)
def test_language_consistency(completion, language, expected):
    assert language_consistency_reward(completion, language=language) == pytest.approx(expected)


def test_language_unknown_is_an_error():
    with pytest.raises(ValueError, match="unknown language"):
        language_consistency_reward("hi", language="klingon")


# ---------------------------------------------------------------- length penalty


@pytest.mark.parametrize(
    "n, expected",
    # max_length=100, target=80: (80 - n) / (100 - 80) inside (80, 100], 0 below, -1 above
    [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (95, -0.75), (100, -1.0), (101, -1.0), (1000, -1.0)],
)
def test_length_penalty_hand_numbers(n, expected):
    assert length_penalty("a" * n, max_length=100, target=80) == pytest.approx(expected)
    assert length_penalty("ignored", max_length=100, target=80, num_tokens=n) == pytest.approx(expected)


def test_length_penalty_default_target_and_errors():
    # target defaults to 0.8 * 20480 = 16384 (DAPO: L_max 20480, L_cache 4096); 18432 is half-way -> -0.5
    assert length_penalty("", max_length=20480, num_tokens=18432) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        length_penalty("x", max_length=0)
    with pytest.raises(ValueError):
        length_penalty("x", max_length=10, target=10)


# ---------------------------------------------------------------- code execution

FACTORIAL_TESTS = ["assert factorial(0) == 1", "assert factorial(5) == 120"]
# Lecture GRPO-6 responses (vectors.json: R3 does not compile, R4's n*n gives 0 and 25)
R1 = "def factorial(n):\n    if n == 0: return 1\n    return n * factorial(n-1)\n"
R2 = "def factorial(n):\n    result = 1\n    for i in range(1, n+1):\n        result *= i\n    return result\n"
R3 = "def factorial(n)\n    return n * factorial(n-1)\n"
R4 = "def factorial(n):\n    return n * n\n"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (R1, 1.0),
        (R2, 1.0),  # erratum: the iterative version does handle n = 0 (range(1, 1) is empty)
        (R3, 0.0),  # syntax error
        (R4, 0.0),  # 0 != 1 and 25 != 120
        ("Here you go:\n```python\n" + R2 + "```\nHope it helps.", 1.0),
        ("def factorial(n):\n    return 1", 0.5),  # passes factorial(0) only
        ("raise RuntimeError('boom')\n" + R1, 0.0),  # crashes at import
        ("import sys\nsys.exit(0)\n", 0.0),  # exiting early passes nothing
        ("import os\nos._exit(0)\n", 0.0),
        ("print('PASS 0'); print('PASS 1')\n" + R4, 0.0),  # printing fake results passes nothing
        (R1 + "if __name__ == '__main__':\n    input()\n", 1.0),  # a main-guarded demo does not run
    ],
)
def test_code_reward(completion, expected):
    assert code_reward(completion, tests=FACTORIAL_TESTS) == expected


def test_code_that_hangs_keeps_the_tests_passed_before_the_hang():
    tests = ["assert f(1) == 1", "f(-1)", "assert f(2) == 2"]
    code = "def f(n):\n    while n < 0:\n        pass\n    return n\n"
    start = time.monotonic()
    assert code_reward(code, tests=tests, timeout_s=1) == pytest.approx(1 / 3)
    assert time.monotonic() - start < 4


def test_extract_code_takes_the_last_python_block():
    text = "```python\nold = 1\n```\n```bash\nrm -rf /\n```\n```py\nnew = 2\n```"
    assert extract_code(text) == "new = 2\n"
    assert extract_code("plain code") == "plain code"


def test_sandbox_failure_is_an_error_not_a_zero(monkeypatch):
    broken = SandboxResult("sandbox_failure", None, "", "", 0.0, detail="exec: no interpreter")
    monkeypatch.setattr(code_module, "run_in_sandbox", lambda *a, **k: broken)
    with pytest.raises(SandboxError, match="no interpreter"):
        code_reward(R1, tests=FACTORIAL_TESTS)
    sample = score(R1, {"tests": FACTORIAL_TESTS}, build_rewards({"code": 1.0}), success_key="code")
    assert (sample.total, sample.failed, sample.success) == (None, "code", None)
    assert "SandboxError" in sample.error


def test_code_reward_needs_tests():
    with pytest.raises(RewardError):
        code_reward(R1, tests=[])


# ---------------------------------------------------------------- registry


def test_resolve_builtin_and_module_function(tmp_path, monkeypatch):
    assert resolve_reward("accuracy") is accuracy_reward
    assert resolve_reward("alignkit.rewards.length:length_penalty") is length_penalty
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(completion, **_):\n    return 1.0 / (1 + len(completion))\n"
        "class Box:\n    @staticmethod\n    def inner(completion, **_):\n        return 0.5\n"
        "CONSTANT = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_reward("my_rewards:brevity")("abc") == 0.25
    assert resolve_reward("my_rewards:Box.inner")("x") == 0.5


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nonsense", "unknown reward 'nonsense'"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("alignkit.rewards.accuracy:no_such_fn", "has no attribute 'no_such_fn'"),
        ("math:pi", "'pi' is a float, not a function"),
        (":fn", "unknown reward"),
        ("math:", "unknown reward"),
    ],
)
def test_resolve_reward_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward(spec)


def test_build_rewards_binds_options_and_rejects_stray_ones():
    rewards = build_rewards({"language": 0.1}, {"language": {"language": "zh"}})
    fn, weight = rewards["language"]
    assert weight == 0.1 and fn("<think>中文</think>") == 1.0
    assert fn("<think>中文</think>", language="en") == 0.0  # a field of the example wins
    with pytest.raises(ValueError, match="without a weight"):
        build_rewards({"accuracy": 1.0}, {"format": {}})


# ---------------------------------------------------------------- scoring and failures


def _raises(completion, **_):
    raise RuntimeError("verifier crashed")


@pytest.mark.parametrize(
    "bad_fn, error",
    [
        (_raises, "RuntimeError: verifier crashed"),
        (lambda completion, **_: math.nan, "non-finite"),
        (lambda completion, **_: math.inf, "non-finite"),
        (lambda completion, **_: "1.0", "not a float"),
        (lambda completion, **_: 1e300, "float32"),  # would overflow the float32 loss
        (lambda completion, **_: -10**400, "float range"),
        (lambda completion, **_: [1.0], "not a float"),
        (lambda completion: 1.0, "TypeError"),  # does not accept the example's fields
    ],
)
def test_failing_reward_is_a_counted_failure_not_zero(bad_fn, error):
    rewards = {"accuracy": (accuracy_reward, 1.0), "bad": (bad_fn, 0.5)}
    sample = score("<answer>4</answer>", {"answer": "4"}, rewards, index=7)
    assert sample.total is None and not sample.ok
    assert sample.failed == "bad" and error in sample.error
    assert sample.components == {"accuracy": 1.0} and sample.success is None
    metrics = reward_metrics([sample, score("<answer>4</answer>", {"answer": "4"}, {"accuracy": (accuracy_reward, 1.0)})])
    assert metrics["reward/failed"] == 1.0 and metrics["reward/failed/bad"] == 1.0
    assert metrics["reward/total"] == 1.0  # the failed sample is not averaged in as a 0


def test_success_is_kept_apart_from_the_shaped_reward():
    rewards = build_rewards({"accuracy": 1.0, "format": 1.0, "length": 1.0}, {"length": {"max_length": 60}})  # target 48 chars
    right_but_long = "<think>" + "x" * 50 + "</think><answer>9</answer>"  # 83 chars > 60
    wrong_but_tidy = "<think>15% of 60</think><answer>8</answer>"  # 42 chars <= 48
    a, b = (score(c, {"answer": "9"}, rewards) for c in (right_but_long, wrong_but_tidy))
    assert (a.total, a.success) == (1.0, True)  # 1 + 1 - 1
    assert (b.total, b.success) == (1.0, False)  # 0 + 1 + 0
    assert a.components == {"accuracy": 1.0, "format": 1.0, "length": -1.0}
    assert score(wrong_but_tidy, {"answer": "9"}, build_rewards({"format": 1.0})).success is None


def test_score_batch_with_threads_equals_sequential():
    rewards = build_rewards({"code": 1.0, "format_soft": 0.5})
    completions = [R1, R2, R3, R4, "<think>t</think><answer>```python\n" + R1 + "```</answer>"]
    examples = [{"tests": FACTORIAL_TESTS}] * len(completions)
    sequential = score_batch(completions, examples, rewards, success_key="code", workers=1)
    threaded = score_batch(completions, examples, rewards, success_key="code", workers=4)
    assert sequential == threaded
    assert [s.total for s in threaded] == [1.0, 1.0, 0.0, 0.0, 1.5]
    assert [s.success for s in threaded] == [True, True, False, False, True]
    with pytest.raises(ValueError):
        score_batch(["a"], [], rewards)
