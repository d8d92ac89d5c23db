"""Synthetic arithmetic: seeded, exactly right, level constraints hold, splits disjoint, traces correct."""

import ast
import operator
import re

import pytest

from alignkit.data import (
    LEVELS,
    Problem,
    ideal_trace,
    load_records,
    make_problems,
    make_split,
    parse_prompt,
    parse_sft,
    question_space,
    to_prompt_records,
    to_sft_records,
    write_jsonl,
)
from alignkit.rewards import accuracy_reward, format_reward

TOKEN = re.compile(r"\d+|[+\-*]")
TRACE = re.compile(r"^<think>(.*)</think><answer>(-?\d+)</answer>$")
STEP = re.compile(r"^(-?\d+)([+\-*])(-?\d+)=(-?\d+)$")
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
SYMBOLS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def reference_value(question: str) -> int:
    """Independent evaluator: Python's own parser builds the tree (precedence included); only int
    constants and + - * are accepted."""
    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise AssertionError(f"unexpected node {ast.dump(node)}")
    return walk(ast.parse(question, mode="eval").body)


def test_deterministic_per_seed():
    assert make_problems(50, level=[1, 2, 3, 4, 5], seed=7) == make_problems(50, level=[1, 2, 3, 4, 5], seed=7)
    assert make_problems(50, level=3, seed=7) != make_problems(50, level=3, seed=8)
    assert make_split(40, 10, level=2, seed=1) == make_split(40, 10, level=2, seed=1)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_answers_and_level_constraints(level):
    spec = LEVELS[level]
    for p in make_problems(300, level=level, seed=level):
        tokens = TOKEN.findall(p.question)
        assert "".join(tokens) == p.question
        operands, ops = [int(t) for t in tokens[::2]], tokens[1::2]
        assert (tuple(operands), tuple(ops), p.level) == (p.operands, p.operators, level)
        assert p.answer == reference_value(p.question) and p.answer_text == str(p.answer)
        assert len(operands) == spec.n_operands and set(ops) <= set(spec.operators)
        lo, hi = spec.operand_range
        assert lo <= operands[0] <= hi
        for op, x in zip(ops, operands[1:]):
            lo, hi = spec.mul_range if op == "*" else spec.operand_range
            assert lo <= x <= hi, (p.question, op, x)
        if spec.non_negative:
            assert p.answer >= 0


def test_level_table_matches_docstring():
    """Digit counts per level, as documented: 1-digit sums, then 2-digit, then 3-digit at level 5."""
    digits = lambda x: len(str(x))  # noqa: E731
    for level, (n_ops, op_digits) in {1: (1, {1}), 2: (1, {2}), 3: (1, {1, 2}), 4: (2, {1, 2}),
                                      5: (2, {2, 3})}.items():
        problems = make_problems(200, level=level, seed=0)
        assert {len(p.operators) for p in problems} == {n_ops}
        assert {digits(x) for p in problems for x in p.operands} == op_digits
    assert {op for p in make_problems(100, level=1) for op in p.operators} == {"+"}
    assert {op for p in make_problems(200, level=2) for op in p.operators} == {"+", "-"}
    assert {op for p in make_problems(200, level=4) for op in p.operators} == {"+", "-", "*"}


def test_mixed_levels():
    problems = make_problems(200, level=[1, 3], seed=0)
    assert {p.level for p in problems} == {1, 3}
    with pytest.raises(ValueError, match="unknown arithmetic level"):
        make_problems(1, level=9)


def test_split_is_disjoint():
    train, held = make_split(500, 40, level=1, seed=0)
    assert len(train) == 500 and len(held) == 40
    held_q = {p.question for p in held}
    assert len(held_q) == 40  # eval questions are distinct
    assert not held_q & {p.question for p in train}
    train, held = make_split(200, 50, level=[2, 4], seed=3)
    assert not {p.question for p in held} & {p.question for p in train}
    assert question_space(1) == 100
    with pytest.raises(ValueError, match="n_eval=51 is too large: level\\(s\\) \\[1\\] have 100 distinct questions"):
        make_split(10, 51, level=1)


def test_question_space_counts_distinct_questions():
    seen = {p.question for p in make_problems(5000, level=1, seed=0)}
    assert len(seen) == question_space(1) == 100  # every a+b with a, b in 0..9
    a_ge_b = 90 * 91 // 2
    assert question_space(2) == 90 * 90 + a_ge_b
    assert question_space(3) == 90 * 90 + a_ge_b + 90 * 8


@pytest.mark.parametrize("problem, trace", [
    (Problem("23+45", 68, 2, (23, 45), ("+",)), "<think>23+45=68</think><answer>68</answer>"),
    (Problem("12*3+7", 43, 4, (12, 3, 7), ("*", "+")), "<think>12*3=36 36+7=43</think><answer>43</answer>"),
    (Problem("7+12*3", 43, 4, (7, 12, 3), ("+", "*")), "<think>12*3=36 7+36=43</think><answer>43</answer>"),
    (Problem("15-40+3", -22, 4, (15, 40, 3), ("-", "+")), "<think>15-40=-25 -25+3=-22</think><answer>-22</answer>"),
])
def test_ideal_trace_examples(problem, trace):
    assert ideal_trace(problem) == trace


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_ideal_traces_are_arithmetically_correct(level):
    for p in make_problems(200, level=level, seed=11):
        trace = ideal_trace(p)
        m = TRACE.match(trace)
        assert m, trace
        steps = m.group(1).split(" ")
        assert len(steps) == len(p.operators)
        for step in steps:
            a, op, b, result = STEP.match(step).groups()
            assert SYMBOLS[op](int(a), int(b)) == int(result), step
        assert int(STEP.match(steps[-1]).group(4)) == int(m.group(2)) == p.answer
        assert format_reward(trace) == 1.0 and accuracy_reward(trace, answer=p.answer) == 1.0


def test_records_pass_schemas_and_round_trip(tmp_path):
    problems = make_problems(20, level=[1, 4], seed=0)
    for style, expected in [("r1", ideal_trace(problems[0])), ("answer_only", f"<answer>{problems[0].answer}</answer>")]:
        rows = to_sft_records(problems, style=style)
        assert rows[0] == {"prompt": problems[0].question, "completion": expected}
        assert all(parse_sft(r).form == "prompt_completion" for r in rows)
    with pytest.raises(ValueError, match="style"):
        to_sft_records(problems, style="cot")
    prompt_rows = to_prompt_records(problems)
    assert prompt_rows[0] == {"prompt": problems[0].question, "answer": str(problems[0].answer), "level": problems[0].level}
    assert parse_prompt(prompt_rows[0]).extra == {"answer": str(problems[0].answer), "level": problems[0].level}
    loaded = load_records(write_jsonl(prompt_rows, tmp_path / "rl" / "arith.jsonl"), "prompt")
    assert [r.to_dict() for r in loaded] == prompt_rows


def test_held_out_set_fits_small_levels_and_train_never_uses_it():
    from alignkit.evaluation import EVAL_SIZE, arithmetic_eval_set, arithmetic_train_problems, eval_size

    assert eval_size() == EVAL_SIZE == len(arithmetic_eval_set())  # levels 1-3: the fixed 200 questions
    assert eval_size([1]) == 50  # level 1 alone has 100 questions: half are held out, not an error
    held = {p.question for p in arithmetic_eval_set([1])}
    train = arithmetic_train_problems(500, [1])
    assert len(held) == 50 and not held & {p.question for p in train}


def test_score_completions_reports_accuracy_per_level():
    from alignkit.evaluation import score_completions

    scores = score_completions(["<answer>3</answer>", "5", "7"], [3, 5, 8], levels=[1, 2, 2])
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["accuracy/level_1"] == 1.0 and scores["accuracy/level_2"] == 0.5
    assert "accuracy/level_1" not in score_completions(["3"], [3], levels=[1])  # one level: no breakdown
