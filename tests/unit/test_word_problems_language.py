"""Word problems in a second language (Chinese): English unchanged, same problems in zh, worded ideal traces
that verify and are language-consistent."""

import doctest
import hashlib
import json
import re

import pytest

from alignkit.data import word_problems
from alignkit.data.word_problems import (
    NAMES,
    TEMPLATES,
    ZH_NAMES,
    WordProblem,
    make_word_problems,
    second_language_indices,
    word_ideal_trace,
    word_problem_eval_set,
    word_problem_in,
    word_problem_train_problems,
)
from alignkit.rewards import format_reward
from alignkit.rewards.language import language_consistency_reward
from alignkit.rewards.steps import check_steps


def _digest(problems):
    rows = [[p.question, p.answer, list(p.steps), p.template, p.level] for p in problems]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_english_is_byte_for_byte_what_it_was():
    # recorded from the code before problems could be asked in Chinese
    assert _digest(word_problem_eval_set()) == "c8d4ac2cd4ce4f817b4240f7cd106f04bf59f009c32bac6ef4313096bf59e871"
    assert _digest(word_problem_train_problems(500)) == \
        "0ee7cc77ce78ee4a81393587b97019e6f584ff91561e2722bffc066e810b22b5"
    assert _digest(make_word_problems(600, seed=3)) == "681b420f7128aed1393a1ea1e07652bf7bc557d2cce7202b4a1b9471068dbf12"
    first = word_problem_eval_set(2)
    assert first[0] == WordProblem(
        "Tom reads 29 pages a day for 5 days, then 29 pages a day for 4 days. How many pages does Tom read in all?",
        261, ("29*5=145", "29*4=116", "145+116=261"), "pages_two_rates", 3)
    assert first[1].question == ("Li buys 7 boxes of 5 pencils and 13 loose pencils, then shares all the pencils "
                                 "equally among 6 friends. How many pencils does each friend get?")
    assert make_word_problems(1, seed=11, templates=["jars_two_colours"])[0].question == \
        "Each of 9 jars holds 19 red marbles and 16 blue marbles. How many marbles are in the jars in all?"
    assert all(p.language == "en" for p in word_problem_eval_set())


def test_chinese_is_the_same_problem_without_latin_letters():
    assert len(ZH_NAMES) == len(NAMES) == len(set(ZH_NAMES))
    en = make_word_problems(300, seed=5)
    zh = make_word_problems(300, seed=5, language="zh")
    assert {p.template for p in zh} == set(TEMPLATES)
    for e, z in zip(en, zh):
        assert z == word_problem_in(e, "zh") and word_problem_in(z, "en") == e
        assert (z.answer, z.steps, z.template, z.level, z.language) == (e.answer, e.steps, e.template, e.level, "zh")
        assert not re.search(r"[A-Za-z]", z.question), z.question
        assert re.findall(r"\d+", z.question) and sorted(re.findall(r"\d+", z.question)) == \
            sorted(re.findall(r"\d+", e.question))  # the same numbers, in digits
        assert z.question.endswith("？")
    assert word_problem_in(en[0], "en") is en[0]
    p = next(p for p in en if p.template == "buy_bags_give_away")
    name, a, item = re.match(r"(\w+) has (\d+) (\w+)\.", p.question).groups()
    zh_item = {"apples": "苹果", "stickers": "贴纸", "marbles": "弹珠", "cards": "卡片"}[item]
    assert word_problem_in(p, "zh").question.startswith(f"{ZH_NAMES[NAMES.index(name)]}有{a}")
    assert zh_item in word_problem_in(p, "zh").question


def test_unknown_language_or_foreign_question_is_refused():
    p = make_word_problems(1, seed=0)[0]
    with pytest.raises(ValueError, match="unknown word-problem language 'fr'; known: en, zh"):
        word_problem_in(p, "fr")
    with pytest.raises(ValueError, match="known: en, zh"):
        make_word_problems(1, language="de")
    with pytest.raises(ValueError, match="known: en, zh"):
        WordProblem("q", 1, ("1+0=1",), "wages_spent", 1, language="ja")
    with pytest.raises(ValueError, match="not a 'en' question of the word-problem template"):
        word_problem_in(WordProblem("What is 2+2?", 4, ("2+2=4",), p.template, 1), "zh")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_worded_ideal_trace_verifies_and_is_language_consistent(language):
    problems = make_word_problems(200, seed=9, language=language)
    other = "zh" if language == "en" else "en"
    for p in problems:
        trace = word_ideal_trace(p)
        assert check_steps(trace, question=p.question, answer=p.answer).ok, (p, trace)
        assert format_reward(trace) == 1.0
        assert language_consistency_reward(trace, language=language) == 1.0
        assert language_consistency_reward(trace, language=other) == 0.0
        # words, not digits only: the language reward has something to judge
        assert re.search(r"[A-Za-z]{2,}" if language == "en" else r"[\u4e00-\u9fff]", trace.split("</think>")[0])
    for p in word_problem_eval_set(50):
        zh = word_problem_in(p, "zh")
        assert check_steps(word_ideal_trace(zh), question=zh.question, answer=zh.answer).ok


def test_ideal_trace_words():
    p = WordProblem("Tom has 12 apples. Tom buys 3 bags of 4 apples each and gives away 5 apples. How many apples "
                    "does Tom have now?", 19, ("3*4=12", "12+12=24", "24-5=19"), "buy_bags_give_away", 3)
    assert word_ideal_trace(p) == "<think>First, 3*4=12. Then, 12+12=24. Finally, 24-5=19.</think><answer>19</answer>"
    zh = word_problem_in(p, "zh")
    assert zh.question == "小明有12个苹果。小明买了3袋苹果，每袋4个，又送出了5个苹果。小明现在有多少个苹果？"
    assert word_ideal_trace(zh) == "<think>首先，3*4=12。然后，12+12=24。最后，24-5=19。</think><answer>19</answer>"
    two = WordProblem("q 19 9 131", 40, ("19*9=171", "171-131=40"), "wages_spent", 2)
    assert word_ideal_trace(two) == "<think>First, 19*9=171. Finally, 171-131=40.</think><answer>40</answer>"


def test_a_mixed_think_block_scores_below_one_in_both_languages():
    for p in make_word_problems(30, seed=2, language="zh"):
        first, *rest = p.steps
        mixed = f"<think>First, {first}. " + "".join(f"然后，{s}。" for s in rest) + f"</think><answer>{p.answer}</answer>"
        assert check_steps(mixed, question=p.question, answer=p.answer).ok  # right steps, mixed words
        assert 0.0 < language_consistency_reward(mixed, language="zh") < 1.0
        assert 0.0 < language_consistency_reward(mixed, language="en") < 1.0


@pytest.mark.parametrize("n, share, count", [
    (10, 0.0, 0), (10, 1.0, 10), (10, 0.5, 5), (10, 0.3, 3), (7, 0.5, 3), (100, 0.57, 57), (3, 0.99, 2), (0, 0.5, 0),
    (1000, 0.1, 100), (1000, 0.7, 700),
])
def test_second_language_indices_count(n, share, count):
    mask = second_language_indices(n, share)
    assert len(mask) == n and sum(mask) == count
    assert mask == second_language_indices(n, share)  # deterministic
    assert second_language_indices(n + 5, share)[:n] == mask  # a prefix of a longer run: stable as n grows


def test_second_language_indices_spread_and_bounds():
    assert second_language_indices(6, 0.5) == [False, True, False, True, False, True]
    assert second_language_indices(4, 0.25) == [False, False, False, True]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        second_language_indices(3, 1.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        second_language_indices(3, -0.1)


def test_module_doctests():
    assert doctest.testmod(word_problems).failed == 0
