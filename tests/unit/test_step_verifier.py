"""The step verifier (alignkit.rewards.steps) at hand-computed traces, including its threat model."""

from fractions import Fraction

import pytest

from alignkit.rewards import build_rewards
from alignkit.rewards.steps import check_steps, parse_steps, step_reward

Q = "Tom has 12 apples. Tom buys 3 bags of 4 apples each and gives away 5 apples. How many apples does Tom have now?"


def test_a_right_grounded_trace_verifies():
    c = check_steps("<think>3*4=12 12+12=24 24-5=19</think><answer>19</answer>", question=Q, answer="19")
    assert (c.n_steps, c.n_correct, c.share, c.all_correct, c.grounded, c.reaches_answer, c.ok) == \
        (3, 3, 1.0, True, True, True, True)



def test_steps_between_words_and_chinese_punctuation():
    zh_q = "小明有12个苹果。小明买了3袋苹果，每袋4个，又送出了5个苹果。小明现在有多少个苹果？"
    zh = "<think>首先，3*4=12。然后，12+12=24。最后，24-5=19。</think><answer>19</answer>"
    en = "<think>First, 3*4=12. Then, 12+12=24. Finally, 24-5=19.</think><answer>19</answer>"
    for trace, question in ((zh, zh_q), (en, Q)):
        c = check_steps(trace, question=question, answer=19)
        assert [s.text for s in c.steps] == ["3*4=12", "12+12=24", "24-5=19"] and c.ok
    # the sentence's full stop is not a decimal point: "12." is 12, and "12.5" stays one number
    assert [s.text for s in parse_steps("然后，10/4=2.5。最后，2.5*2=5。")] == ["10/4=2.5", "2.5*2=5"]
    assert not check_steps("<think>首先，3*4=13。</think><answer>13</answer>", question=zh_q, answer=13).ok

@pytest.mark.parametrize("text, share", [
    ("3*4=12 12+12=25 25-5=20", 2 / 3),  # 12+12 is 24
    ("3*4=13", 0.0),
    ("10/4=2.5", 1.0), ("10/3=3.33", 0.0),  # exact only
    ("7+12*3=43", 1.0), ("7+12*3=57", 0.0),  # * before +: 7+36
    ("20-3-5=12", 1.0),  # left to right
    ("8/0=0", 0.0),
    ("12 × 3 = 36 and 36 ÷ 4 = 9", 1.0),
    ("5-8=-3", 1.0),
])
def test_step_arithmetic_at_hand_computed_values(text, share):
    assert check_steps(f"<think>{text}</think><answer>1</answer>").share == pytest.approx(share)


def test_chained_equalities_are_two_steps():
    steps = parse_steps("3*4=12+12=24")
    assert [s.text for s in steps] == ["3*4=12", "12+12=24"] and all(s.correct for s in steps)
    assert steps[1].operands == (Fraction(12), Fraction(12))


def test_threat_model():
    # no steps at all: not verified, share 0
    assert not check_steps("<think>I just know it</think><answer>19</answer>", question=Q, answer=19).ok
    assert check_steps("<think></think><answer>19</answer>").share == 0.0
    # right answer after a wrong step
    assert not check_steps("<think>3*4=13 12+13=25 25-6=19</think><answer>19</answer>", question=Q, answer=19).ok
    # true but unrelated steps: not grounded, does not reach the answer
    c = check_steps("<think>1+1=2</think><answer>19</answer>", question=Q, answer=19)
    assert c.all_correct and c.grounded is False and c.reaches_answer is False and not c.ok
    # steps outside the think block are not read when there is one
    assert check_steps("3*4=12 <think>hmm</think><answer>12</answer>").n_steps == 0
    # huge numbers end the step as wrong, quickly
    assert check_steps("<think>" + "9" * 40 + "*2=1</think>").share == 0.0
    # no think block: the text before <answer> is read
    assert check_steps("3*4=12 <answer>12</answer>").all_correct


def test_step_reward_and_registry():
    good = "<think>3*4=12 12+12=24 24-5=19</think><answer>19</answer>"
    assert step_reward(good, question=Q, answer=19) == 1.0
    assert step_reward("<think>3*4=12 12+12=25</think><answer>25</answer>", question=Q, answer=25) == 0.25
    fn, weight = build_rewards({"steps": 1.0})["steps"]
    assert fn(good, prompt=Q, answer="19") == 1.0
