"""The cheats each built-in reward must refuse (docs/design.md, rewards are an attack surface; issue 16).

Each block follows the "Threat model" section of its module's docstring: what a policy may try, and the
score it must get. Legitimate spellings of a right answer are tested alongside, so that refusing a cheat
does not refuse the answer.
"""

from __future__ import annotations

import pytest

from alignkit.evaluation import score_completions, strict_accuracy
from alignkit.rewards import (
    accuracy_reward,
    answers_match,
    digit_match_reward,
    format_reward,
    format_reward_soft,
    language_consistency_reward,
    length_penalty,
)
from alignkit.rewards.accuracy import parse_value
from alignkit.rewards.errors import RewardError

# ---------------------------------------------------------------- accuracy: an answer is a value

# The question was "74-26" (truth 48); a policy trained with GRPO learned to copy it into the answer.
COPIED_OR_COMPUTED = ["74-26", "40+8", "96/2", "6*8", "(50-2)", "48.0+0", "2*24", "\\frac{96}{2}", "x=74-26",
                      "x = 74 - 26", "\\dfrac{96}{2}", "48/1", "\\frac{48}{1}", "$74-26$", "\\boxed{74-26}",
                      "96 \\div 2", "6 \\times 8", "\\sqrt{2304}", "48+0i"]
HEDGES = ["47, 48, 49", "47 or 48", "47 48", "\\{47, 48\\}", "\\boxed{47}\\boxed{48}", "48, 49", "4 8"]
LEGIT = ["48", "48.0", "48.00", "$48", "\\$48", "+48", "48.", "\\boxed{48}", "$\\boxed{48}$", "x = 48", "x=48",
         "$48$", " 48 "]


@pytest.mark.parametrize("answer", COPIED_OR_COMPUTED)
@pytest.mark.parametrize("strict", [False, True])
def test_an_expression_that_equals_the_truth_is_not_an_answer(answer, strict):
    assert accuracy_reward(f"<think>74-26</think><answer>{answer}</answer>", answer=48, strict=strict) == 0.0
    assert accuracy_reward(f"<answer>{answer}</answer>", answer="48", prompt="What is 74-26?") == 0.0
    assert not answers_match(answer, "48")
    assert strict_accuracy(f"<answer>{answer}</answer>", 48) == 0.0


@pytest.mark.parametrize("answer", HEDGES)
def test_hedging_between_answers_scores_zero(answer):
    assert accuracy_reward(f"<answer>{answer}</answer>", answer=48) == 0.0


def test_only_the_last_answer_counts_so_listing_answers_gains_nothing():
    assert accuracy_reward("<answer>48</answer><answer>47</answer>", answer=48) == 0.0
    assert accuracy_reward("\\boxed{48} or maybe \\boxed{47}", answer=48) == 0.0
    assert accuracy_reward("<think>it is 48</think><answer>47</answer>", answer=48) == 0.0  # reasoning never counts


@pytest.mark.parametrize("answer", LEGIT)
def test_legitimate_spellings_of_the_value_are_accepted(answer):
    assert accuracy_reward(f"<think>74-26=48</think><answer>{answer}</answer>", answer=48) == 1.0
    assert strict_accuracy(f"<answer>{answer}</answer>", 48, require_format=True) == 1.0


@pytest.mark.parametrize(
    "predicted, truth, expected",
    [
        ("1,000", "1000", True),
        ("1/2", "0.5", True),  # a fraction in lowest terms is a value: accepted
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac12", "0.5", True),
        ("-\\frac{1}{2}", "-0.5", True),
        ("2/4", "0.5", False),  # decided: an unreduced fraction is a division not carried out
        ("\\frac{2}{4}", "1/2", False),
        ("2/4", "2/4", True),  # ... unless the truth is spelled that way
        ("0.5", "2/4", True),  # a truth is read as its value whatever its spelling
        ("10%", "0.1", True),
        ("10%", "10", True),
        ("48", "x = 48", True),
        ("4.8e1", "48", False),  # scientific notation is not a plain value
    ],
)
def test_value_rules(predicted, truth, expected):
    assert answers_match(predicted, truth) is expected


def test_parse_value_refuses_divisions_and_expressions():
    assert parse_value("1/2") == parse_value("0.5") and parse_value("-3/4") is not None
    assert [parse_value(s) for s in ("96/2", "2/4", "48/1", "1/0", "0/5", "74-26", "")] == [None] * 7


def test_symbolic_truths_still_get_the_symbolic_check_but_not_a_copy_of_the_question():
    assert accuracy_reward("<answer>\\frac{1}{\\sqrt{2}}</answer>", answer="\\sqrt{2}/2") == 1.0
    question = "Expand 2(x + 1)."
    assert accuracy_reward("<answer>2x+2</answer>", answer="2x+2", prompt=question) == 1.0
    assert accuracy_reward("<answer>2x + 2</answer>", answer="2x+2", question=question) == 1.0
    # the question copied verbatim (spaces ignored), in a plain or a chat prompt: no symbolic credit
    assert accuracy_reward("<answer>2(x+1)</answer>", answer="2x+2", prompt=question) == 0.0
    chat = [{"role": "system", "content": "Answer in tags."}, {"role": "user", "content": question}]
    assert accuracy_reward("<answer>2 (x+1)</answer>", answer="2x+2", prompt=chat) == 0.0
    # symbolic=False: a symbolic truth is matched by its own spelling only
    assert accuracy_reward("<answer>2(x+1)</answer>", answer="2x+2", symbolic=False) == 0.0
    assert accuracy_reward("<answer>2x+2</answer>", answer="2x+2", symbolic=False) == 1.0


def test_held_out_scorer_is_strict():
    completions = ["<answer>74-26</answer>", "<answer>48</answer>", "48", "<answer>2(x+1)</answer>"]
    answers = [48, 48, 48, "2x+2"]
    assert [strict_accuracy(c, a) for c, a in zip(completions, answers)] == [0.0, 1.0, 1.0, 0.0]
    assert score_completions(completions, answers)["accuracy"] == 0.5
    assert score_completions(completions, answers, require_format=True)["accuracy"] == 0.25


# ---------------------------------------------------------------- digits: partial credit


@pytest.mark.parametrize("answer", ["96/2", "\\frac{96}{2}", "74-26", "6*8", "48/1", "47, 48", "4848", "48484848"])
def test_digit_credit_is_not_paid_for_expressions_or_padding(answer):
    score = digit_match_reward(f"<answer>{answer}</answer>", answer=48)
    # expressions get nothing; a longer number only dilutes the right digits (denominator = longer length)
    assert score == (0.0 if not answer.isdigit() else 2 / len(answer))
    assert score < 1.0


def test_digit_credit_keeps_its_contract_with_accuracy():
    for answer in ["48", "48.0", "$48", "\\boxed{48}", "x = 48", "0048"]:
        assert digit_match_reward(f"<answer>{answer}</answer>", answer=48) == 1.0
        assert accuracy_reward(f"<answer>{answer}</answer>", answer=48) == 1.0
    with pytest.raises(RewardError):
        digit_match_reward("<answer>1</answer>", answer="96/2x")


# ---------------------------------------------------------------- format


@pytest.mark.parametrize(
    "completion",
    [
        "<think></think><answer>48</answer>",  # empty reasoning
        "<think>   </think><answer>48</answer>",
        "<think> ... </think><answer>48</answer>",  # punctuation only
        "<think>a</think><answer> </answer>",  # empty answer
        "<think>a<think>b</think></think><answer>48</answer>",  # nested think
        "<think>a</think><answer>47</answer><answer>48</answer>",  # two answers: a hedge
        "<think>a <answer>47</answer></think><answer>48</answer>",  # an answer hidden in the reasoning
        "<think>a</think><think>b</think><answer>48</answer>",  # two think blocks
        "<think>a</think><answer><answer>48</answer></answer>",
        "<think>a</think> <answer>48</answer> <think>more</think>",
    ],
)
def test_format_cheats_score_zero_in_both_variants(completion):
    assert format_reward(completion) == 0.0
    assert format_reward_soft(completion) == 0.0


def test_format_accepts_the_layout_with_any_script():
    assert format_reward("<think>先算 74-26</think><answer>48</answer>") == 1.0
    assert format_reward_soft("Sure. <think>7</think>\n<answer>48</answer> Done.") == 1.0


# ---------------------------------------------------------------- language consistency


@pytest.mark.parametrize(
    "completion",
    ["", "   ", "<think></think><answer>48</answer>", "<answer>The answer is 48</answer>", "<think>...</think>",
     "<think> ?! </think><answer>x</answer>"],
)
def test_no_reasoning_is_not_consistent_reasoning(completion):
    assert language_consistency_reward(completion, language="en") == 0.0
    assert language_consistency_reward(completion, language="zh") == 0.0


def test_off_language_text_outside_the_think_block_still_counts():
    # 1 Latin word ("ok") in the think block, 4 Han characters outside it: en 1/5
    completion = "<think>ok</think>我们计算<answer>48</answer>"
    assert language_consistency_reward(completion, language="en") == pytest.approx(1 / 5)


def test_tags_are_not_words_and_numeric_traces_are_consistent():
    assert language_consistency_reward("<think>74-26=48</think><answer>48</answer>", language="zh") == 1.0
    assert language_consistency_reward("<think>计算</think><answer>48</answer>", language="zh") == 1.0


# ---------------------------------------------------------------- length


def test_length_cannot_be_raised_above_zero_and_counts_what_the_completion_holds():
    assert max(length_penalty("x" * n, max_length=10) for n in range(30)) == 0.0
    assert length_penalty("short text", max_length=100, target=80, completion_ids=list(range(95))) == -0.75
    assert length_penalty("x" * 95, max_length=100, target=80, num_tokens=10) == 0.0  # explicit count wins
    with pytest.raises(RewardError, match="negative length"):
        length_penalty("x", max_length=10, num_tokens=-5)
