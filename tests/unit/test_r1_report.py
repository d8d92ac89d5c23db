"""The R1 report's uncertainty (Wilson intervals, paired differences against the stage's input) and the data
the pipeline builds for its preference reward model and mixed final RL, checked by hand."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.pipelines import r1
from alignkit.pipelines.report import paired_difference, rl_verdicts, table, wilson_interval


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(30, 100)  # p .3: centre .3 + 1.96^2/200, half 1.96 sqrt(.0021 + 1.96^2/40000)
    z2 = 1.96 ** 2
    centre, half = 0.3 + z2 / 200, 1.96 * math.sqrt(0.3 * 0.7 / 100 + z2 / 40000)
    assert (lo, hi) == pytest.approx(((centre - half) / (1 + z2 / 100), (centre + half) / (1 + z2 / 100)))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_paired_difference_by_hand():
    after, before = [1, 1, 1, 0, 0, 1], [0, 1, 0, 0, 0, 1]  # d = 1,0,1,0,0,0: mean 1/3, sd sqrt(4/15)
    mean, lo, hi = paired_difference(after, before)
    half = 1.96 * math.sqrt(4 / 15) / math.sqrt(6)
    assert (mean, lo, hi) == pytest.approx((1 / 3, 1 / 3 - half, 1 / 3 + half))
    assert paired_difference([1, 0], [1, 0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal"):
        paired_difference([1], [1, 0])


def _rows():
    base = {"stage": "base", "accuracy": 0.1, "correct": [1] + [0] * 9}
    zero = {"stage": "r1_zero", "accuracy": 0.6, "correct": [1] * 6 + [0] * 4, "vs": "base"}
    cold = {"stage": "cold_start_sft", "accuracy": 0.5, "correct": [1] * 5 + [0] * 5, "vs": "base"}
    rl = {"stage": "reasoning_rl", "accuracy": 0.5, "correct": [0] + [1] * 5 + [0] * 4, "vs": "cold_start_sft"}
    return [base, zero, cold, rl]


def test_table_shows_intervals_and_the_change_against_the_input():
    text = table(_rows())
    assert "accuracy 95% CI" in text.splitlines()[0]
    zero_line = next(line for line in text.splitlines() if line.startswith("| r1_zero"))
    mean, lo, hi = paired_difference([1] * 6 + [0] * 4, [1] + [0] * 9)
    assert f"{100 * mean:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f}) vs base" in zero_line
    assert "+50.0" in zero_line


def test_rl_verdicts_name_significant_and_not_significant_changes():
    lines = rl_verdicts(_rows()).splitlines()
    assert len(lines) == 2  # the RL stages only
    assert lines[0].startswith("- r1_zero") and "raises accuracy" in lines[0]
    assert lines[1].startswith("- reasoning_rl") and "spans 0" in lines[1]  # d = -1, 0, ..., +1: mean 0


def test_preference_pairs_prefer_the_reference_reply():
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    pairs = r1.preference_pairs(rows)
    assert len(pairs) == 12 and all(p["chosen"] == f"a{int(p['prompt'][1])}" for p in pairs)
    assert [p["rejected"] for p in pairs[:3]] == ["a2", "<think>q0</think><answer>a0</answer>", r1.UNHELPFUL[0]]
    assert all(p["chosen"] != p["rejected"] for p in pairs)


def test_final_rl_rows_mix_general_prompts_at_the_share():
    cfg = r1.R1Config(task="word_problems", task_train_prompts=30, final_rl_general_share=0.25, preference_rm={})
    rows = r1.final_rl_rows(cfg)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("task") == 30 and kinds.count("general") == 10
    assert all("answer" in r for r in rows if r["kind"] == "task")
    assert all("answer" not in r for r in rows if r["kind"] == "general")


def test_second_language_needs_word_problems():
    with pytest.raises(ValueError, match="needs task=word_problems"):
        r1.R1Config(second_language={"language": "zh"})
    with pytest.raises(ValueError, match="written in"):
        r1.R1Config(task="word_problems", second_language={"language": "xx"})


def test_second_language_problems_carry_their_language_and_template():
    cfg = r1.R1Config(task="word_problems", second_language={"language": "zh", "share": 0.5,
                                                             "prompt_template": "ZH {question}"},
                      prompt_template="EN {question}")
    problems = r1.eval_problems(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"n": 8})}))
    assert [p.language for p in problems] == ["en", "zh"] * 4
    assert all(p.question.startswith("ZH ") == (p.language == "zh") for p in problems)
    assert all(p.fields["language"] == p.language for p in problems)
    # a problem's language does not depend on how many are drawn (absolute index)
    later = r1.train_problems(cfg, 2, offset=3)
    assert [p.language for p in later] == [p.language for p in r1.train_problems(cfg, 5)[3:]]


def test_few_shot_exemplars_match_the_question_kind():
    cfg = r1.R1Config(task="word_problems", second_language={"language": "zh", "share": 0.5})
    shots = r1.train_problems(cfg, 60)
    question = r1.train_problems(cfg, 1, offset=61)[0]
    pool = r1.few_shot_pool(question, shots, 2)
    assert len(pool) >= 2 and all(e.template == question.template and e.language == question.language for e in pool)
    assert question.template is not None and "template" not in question.record()  # not a column of the data
    # too few of the same language: the same template in any language; too few of either: every shot
    same_template = [e for e in shots if e.template == question.template]
    one_language = [e for e in same_template if e.language != question.language]
    assert r1.few_shot_pool(question, one_language, 2) == one_language
    assert r1.few_shot_pool(question, one_language[:1], 2) == one_language[:1]
    others = [e for e in shots if e.template != question.template]
    assert r1.few_shot_pool(question, others, 2) == others
    # the arithmetic task has no templates: exemplars of the same level
    arith = r1.R1Config()
    a_shots = r1.train_problems(arith, 40)
    a_question = r1.train_problems(arith, 1, offset=41)[0]
    assert all(e.level == a_question.level for e in r1.few_shot_pool(a_question, a_shots, 2))


def test_second_sft_data_can_hold_the_cold_start_data(tmp_path):
    import json

    sampled, cold = tmp_path / "rs.jsonl", tmp_path / "cold.jsonl"
    sampled.write_text("".join(json.dumps({"prompt": f"s{i}", "completion": "c"}) + "\n" for i in range(2)))
    cold.write_text("".join(json.dumps({"prompt": f"k{i}", "completion": "c", "source": "ideal"}) + "\n"
                            for i in range(6)))
    cfg = r1.R1Config(general_share=0.2)
    without = r1.mixed_sft_data(cfg, str(sampled), tmp_path / "a")  # 2 curated -> round(2 * 0.25) = 0 general
    assert without["counts"] == {"curated": 2, "general": 0}
    (tmp_path / "b").mkdir()
    out = r1.mixed_sft_data(cfg, str(sampled), tmp_path / "b", str(cold))
    assert out["counts"] == {"curated": 2, "cold_start": 6, "general": 2}  # 8 reasoning rows -> 2 general (20%)
    rows = [json.loads(x) for x in (tmp_path / "b" / "mixed.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows if r["source"] == "cold_start") == [f"k{i}" for i in range(6)]
    assert sum(r["source"] == "curated" for r in rows) == 2
    # the stage consumes the cold-start data: a change there redoes the second SFT's data
    plan = {s.name: s for s in r1.stages(r1.R1Config(sft_with_cold_start=True), tmp_path / "run")}
    assert "cold_start_data" in plan["sft_data"].deps
    assert "cold_start_data" not in {s.name: s for s in r1.stages(cfg, tmp_path / "run")}["sft_data"].deps


def test_trace_share_gives_some_second_language_problems_english_traces(tmp_path):
    cfg = r1.R1Config(task="word_problems", second_language={"language": "zh", "share": 0.25, "trace_share": 0.5})
    problems = r1.train_problems(cfg, 80)
    zh = [p for p in problems if p.language == "zh"]
    english = [p for p in zh if p.ideal.startswith("<think>First,")]
    assert len(zh) == 20 and len(english) == 10  # half of the 20 Chinese problems think in English
    assert all(p.ideal.startswith("<think>首先，") for p in zh if p not in english)
    assert all(p.ideal.startswith("<think>First,") for p in problems if p.language == "en")
    # the same problem gets the same trace however many are drawn, and the answer/steps do not change
    assert [p.ideal for p in r1.train_problems(cfg, 30, offset=50)] == [p.ideal for p in problems[50:]]
    full = r1.train_problems(cfg.model_copy(update={"second_language": cfg.second_language.model_copy(
        update={"trace_share": 1.0})}), 80)
    assert [p.question for p in full] == [p.question for p in problems]
    assert all(a.ideal.split("<answer>")[1] == b.ideal.split("<answer>")[1] for a, b in zip(full, problems))
    # and it is part of the cold-start data's settings: changing it redoes that stage
    plan = {s.name: s for s in r1.stages(cfg, tmp_path)}
    assert plan["cold_start_data"].settings["second"]["trace_share"] == 0.5


def test_sft_min_language_drops_mixed_language_reasoning_rows(tmp_path):
    """R1 filtered chain-of-thought with mixed languages out of its second SFT's data: a Chinese problem whose
    trace thinks in English goes, from the rejection-sampled rows (their language column) and the cold-start
    rows (the language read from the prompt's script) alike; general rows are not reasoning and stay."""
    zh_prompt = "小丽有3个苹果，又买了4个。一共有几个？\n请在 <think> </think> 中用中文思考。"
    sampled = tmp_path / "rs.jsonl"
    sampled.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": zh_prompt, "completion": "<think>首先，3+4=7。</think><answer>7</answer>", "language": "zh"},
        {"prompt": zh_prompt, "completion": "<think>First, 3+4=7.</think><answer>7</answer>", "language": "zh"},
        {"prompt": "Tom has 3 apples and buys 4. How many?", "completion": "<think>First, 3+4=7.</think><answer>7</answer>",
         "language": "en"}]))
    cold = tmp_path / "cold.jsonl"
    cold.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": zh_prompt, "completion": "<think>First, 3+4=7. Finally, 7.</think><answer>7</answer>", "source": "ideal"},
        {"prompt": zh_prompt, "completion": "<think>首先，3+4=7。最后，7。</think><answer>7</answer>", "source": "ideal"},
        {"prompt": "Ann has 2 pens.", "completion": "<think>First, 2*1=2.</think><answer>2</answer>", "source": "ideal"}]))
    second = {"language": "zh", "share": 0.25}
    cfg = r1.R1Config(task="word_problems", general_share=0.2, general_source="chat", second_language=second,
                      sft_min_language=1.0)
    out = r1.mixed_sft_data(cfg, str(sampled), tmp_path, str(cold))
    assert out["language_dropped"] == {"curated": 1, "cold_start": 1}
    assert out["counts"] == {"curated": 2, "cold_start": 2, "general": 1}
    rows = [json.loads(x) for x in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    assert not any(r["prompt"] == zh_prompt and r["completion"].startswith("<think>First") for r in rows)
    assert sum(r["source"] == "general" for r in rows) == 1
    unfiltered = r1.mixed_sft_data(cfg.model_copy(update={"sft_min_language": None}), str(sampled), tmp_path, str(cold))
    assert unfiltered["counts"] == {"curated": 3, "cold_start": 3, "general": 2} and "language_dropped" not in unfiltered
    plan = {s.name: s for s in r1.stages(cfg, tmp_path / "run")}
    assert plan["sft_data"].settings["min_language"] == 1.0  # part of the stage's settings: a change redoes it
