"""Multi-step word problems: exact answers, verified ideal traces, held out by seed."""

from alignkit.data.word_problems import (
    TEMPLATES,
    make_word_problems,
    word_ideal_trace,
    word_problem_eval_set,
    word_problem_split,
    word_problem_train_problems,
)
from alignkit.rewards import accuracy_reward, format_reward
from alignkit.rewards.steps import check_steps


def test_every_ideal_trace_verifies_and_is_right():
    problems = make_word_problems(600, seed=3)
    assert {p.template for p in problems} == set(TEMPLATES)
    for p in problems:
        trace = word_ideal_trace(p)
        assert format_reward(trace) == 1.0 and accuracy_reward(trace, answer=p.answer_text, strict=True) == 1.0
        check = check_steps(trace, question=p.question, answer=p.answer)
        assert check.ok and check.n_steps == p.level >= 2, (p, trace)
        assert p.answer >= 0


def test_a_hand_computed_problem():
    p = next(p for p in make_word_problems(200, seed=0) if p.template == "buy_bags_give_away")
    a, b, c, d = (int(x) for x in __import__("re").findall(r"\d+", p.question))
    assert p.answer == a + b * c - d
    assert p.steps == (f"{b}*{c}={b * c}", f"{a}+{b * c}={a + b * c}", f"{a + b * c}-{d}={p.answer}")


def test_held_out_by_seed():
    held = {p.question for p in word_problem_eval_set()}
    assert len(held) == 200
    assert not held & {p.question for p in word_problem_train_problems(3000)}
    assert [p.question for p in word_problem_eval_set(20)] == [p.question for p in word_problem_eval_set()][:20]
    other_train, other_eval = word_problem_split(10, 10, seed=7)
    assert [p.question for p in other_eval] != [p.question for p in word_problem_eval_set(10)]
    assert make_word_problems(5, seed=1) == make_word_problems(5, seed=1)
