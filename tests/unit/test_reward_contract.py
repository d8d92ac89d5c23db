"""The reward-function contract (issue 15): alignkit's per-sample form and TRL's batched form, None as
"not applicable", values that fail a sample, the failure monitor, module:function import errors, and
parallel scoring of sandboxed rewards."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from alignkit.rewards import (
    RewardFailureError,
    RewardFailureMonitor,
    ScoredSample,
    build_rewards,
    is_batched,
    resolve_reward,
    reward_metrics,
    score,
    score_batch,
    score_with_model,
)
from alignkit.rewards.registry import NO_APPLICABLE, _threads

COMPLETIONS = ["<think>t</think><answer>4</answer>", "<think>t</think><answer>5</answer>", "no answer"]
EXAMPLES = [{"answer": "4", "level": 1}, {"answer": "4", "level": 2}, {"answer": "4", "level": 1}]

# ---------------------------------------------------------------- the two forms


def trl_length(prompts, completions, **kwargs):
    """A TRL-style reward, as in trl's docs."""
    return [float(len(c)) for c in completions]


def test_the_signature_decides_the_form():
    assert is_batched(trl_length)
    assert is_batched(lambda prompts, completions, completion_ids, **kw: [])
    assert not is_batched(lambda completion, **kw: 0.0)
    assert not is_batched(lambda prompt, completion, **kw: 0.0)  # singular names: per-sample
    assert not is_batched(lambda completions, **kw: [])  # both plural names are needed
    assert not is_batched(len)


def test_batched_reward_gets_the_batch_and_columns_once():
    calls = []

    def spy(prompts, completions, completion_ids, answer, level, **kwargs):
        calls.append((prompts, completions, completion_ids, answer, level, kwargs))
        return [1.0 if "<answer>4</answer>" in c else 0.0 for c in completions]

    prompts = ["2+2?", "2+2?", "2+2?"]
    ids = [[1, 2], [3], [4, 5, 6]]
    scored = score_batch(COMPLETIONS, EXAMPLES, {"spy": (spy, 1.0)}, prompts=prompts, completion_ids=ids,
                         success_key="spy")
    assert len(calls) == 1
    assert calls[0] == (prompts, COMPLETIONS, ids, ["4", "4", "4"], [1, 2, 1], {})
    assert [s.total for s in scored] == [1.0, 0.0, 0.0] and [s.success for s in scored] == [True, False, False]


def test_batched_reward_without_kwargs_gets_only_what_it_names():
    def narrow(prompts, completions):
        return [0.5] * len(completions)

    assert [s.total for s in score_batch(COMPLETIONS, EXAMPLES, {"n": (narrow, 2.0)})] == [1.0, 1.0, 1.0]


def test_conversational_prompts_give_message_completions():
    seen = []

    def chat_reward(prompts, completions, **kwargs):
        seen.append(completions)
        return [1.0 if c[0]["content"].endswith("</answer>") else 0.0 for c in completions]

    prompts = [[{"role": "user", "content": "2+2?"}]] * 3
    scored = score_with_model(COMPLETIONS, EXAMPLES, prompts, {"chat": (chat_reward, 1.0)})
    assert seen[0][0] == [{"role": "assistant", "content": COMPLETIONS[0]}]
    assert [s.total for s in scored] == [1.0, 1.0, 0.0]


def test_per_sample_rewards_get_prompt_and_ids_when_they_accept_them():
    got = []

    def with_prompt(completion, *, prompt, answer, **_):
        got.append(prompt)
        return 1.0

    def without_prompt(completion, *, answer, level):  # no **kwargs: no prompt, no completion_ids
        return 0.5

    length = build_rewards({"length": 1.0}, {"length": {"max_length": 10, "target": 5}})["length"]
    rewards = {"a": (with_prompt, 1.0), "b": (without_prompt, 1.0), "len": length}
    scored = score_batch(COMPLETIONS, EXAMPLES, rewards, prompts=["p0", "p1", "p2"],
                         completion_ids=[[0] * 3, [0] * 10, [0] * 20])
    assert got == ["p0", "p1", "p2"]
    assert [s.components["len"] for s in scored] == [0.0, -1.0, -1.0]  # token counts, not characters
    assert [s.total for s in scored] == [1.5, 0.5, 0.5]
    # a per-sample reward that needs the prompt fails (counted) when the scorer has none
    assert score(COMPLETIONS[0], EXAMPLES[0], {"a": (with_prompt, 1.0)}).failed == "a"
    assert score(COMPLETIONS[0], EXAMPLES[0], {"a": (with_prompt, 1.0)}, prompt="p").total == 1.0


def test_builtin_accuracy_uses_the_prompt_against_copied_questions():
    rewards = build_rewards({"accuracy": 1.0})
    copied = score("<answer>2(x+1)</answer>", {"answer": "2x+2"}, rewards, prompt="Expand 2(x+1)")
    assert copied.total == 0.0
    assert score("<answer>2(x+1)</answer>", {"answer": "2x+2"}, rewards).total == 1.0


# ---------------------------------------------------------------- None: not applicable


def test_none_leaves_the_component_out_of_that_sample():
    def only_level_1(prompts, completions, level, **kwargs):
        return [1.0 if lv == 1 else None for lv in level]

    rewards = {"accuracy": (resolve_reward("accuracy"), 1.0), "lvl": (only_level_1, 10.0)}
    scored = score_batch(COMPLETIONS, EXAMPLES, rewards)
    assert [s.total for s in scored] == [11.0, 0.0, 10.0]
    assert all(s.ok for s in scored)
    assert scored[1].components == {"accuracy": 0.0, "lvl": None}
    metrics = reward_metrics(scored)
    assert metrics["reward/lvl"] == 1.0 and metrics["reward/lvl/std"] == 0.0  # mean over the two where it applied
    assert metrics["reward/skipped/lvl"] == 1.0 and metrics["reward/failed"] == 0.0


def test_every_component_none_fails_the_sample():
    rewards = {"a": (lambda completion, **_: None, 1.0), "b": (lambda prompts, completions, **_: [None] * 3, 1.0)}
    scored = score_batch(COMPLETIONS, EXAMPLES, rewards)
    assert all(s.total is None and s.failed == NO_APPLICABLE for s in scored)
    assert "not applicable" in scored[0].error
    assert reward_metrics(scored)[f"reward/failed/{NO_APPLICABLE}"] == 3.0


def test_none_success_component_gives_no_success_value():
    rewards = {"accuracy": (lambda completion, **_: None, 1.0), "format": (resolve_reward("format"), 1.0)}
    sample = score(COMPLETIONS[0], EXAMPLES[0], rewards)
    assert (sample.total, sample.success) == (1.0, None)


class _ConstantModel:
    def score_batch(self, prompts, completions):
        return [0.25] * len(completions)


def test_reward_model_scores_samples_no_rule_applies_to():
    rewards = {"a": (lambda completion, **_: None, 1.0)}
    scored = score_with_model(COMPLETIONS, EXAMPLES, ["p"] * 3, rewards, _ConstantModel(), model_weight=2.0)
    assert [s.total for s in scored] == [0.5, 0.5, 0.5]
    assert scored[0].components == {"a": None, "model": 0.25}


# ---------------------------------------------------------------- values that fail a sample


@pytest.mark.parametrize(
    "values, ok, error",
    [
        ([1.0, 0.0, 1.0], [True, True, True], None),
        ([True, False, np.float32(0.5)], [True, True, True], None),  # decided: bool is 0/1, numpy scalars fine
        (np.array([1.0, 2.0, 3.0]), [True, True, True], None),
        ([1e300, 1.0, -1e39], [False, True, False], "float32"),
        ([float("nan"), 1.0, float("inf")], [False, True, False], "non-finite"),
        (["1", 1.0, None], [False, True, False], "not a float"),  # the None: 'b' is the only component
        ([1.0, 1.0], [False, False, False], "expected a list of 3"),
        (1.0, [False, False, False], "expected a list of 3"),
        ("abc", [False, False, False], "expected a list of 3"),
    ],
)
def test_batched_return_values(values, ok, error):
    rewards = {"b": (lambda prompts, completions, **kw: values, 1.0)}
    scored = score_batch(COMPLETIONS, EXAMPLES, rewards)
    assert [s.ok for s in scored] == ok
    for s in scored:
        if not s.ok:
            assert s.failed in ("b", NO_APPLICABLE) and (error in s.error or s.failed == NO_APPLICABLE)
    assert scored[1].total is None or isinstance(scored[1].total, float)


def test_bool_reward_is_zero_or_one_and_weighted_overflow_fails():
    assert score("x", {}, {"b": (lambda completion, **_: True, 2.0)}).total == 2.0
    big = score("x", {}, {"b": (lambda completion, **_: 3e38, 10.0)})
    assert (big.total, big.failed) == (None, "total") and "float32" in big.error


def test_a_raising_batched_reward_fails_the_whole_batch():
    def broken(prompts, completions, **kwargs):
        raise KeyError("answer")

    scored = score_batch(COMPLETIONS, EXAMPLES, {"broken": (broken, 1.0)})
    assert all(s.failed == "broken" and "KeyError" in s.error for s in scored)


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError, match="2 prompts"):
        score_batch(COMPLETIONS, EXAMPLES, {}, prompts=["a", "b"])
    with pytest.raises(ValueError, match="1 completion_ids"):
        score_batch(COMPLETIONS, EXAMPLES, {}, completion_ids=[[1]])


# ---------------------------------------------------------------- the failure monitor


def _failed(name="accuracy", error="KeyError: 'answer'"):
    return ScoredSample(None, {}, None, name, error)


def test_monitor_stops_a_run_when_most_samples_fail():
    m = RewardFailureMonitor(max_share=0.5, window=8)
    m.update([ScoredSample(1.0, {"accuracy": 1.0, "lvl": None})] * 4 + [_failed()] * 3)  # window not full
    m.update([_failed("code", "SandboxError: no interpreter")])  # 4 of 8: not above half
    assert m.counters() == {"samples": 8, "failed_samples": 4, "failed_by_component": {"accuracy": 3, "code": 1},
                            "skipped_by_component": {"lvl": 4}}
    with pytest.raises(RewardFailureError) as info:
        m.update([_failed()])  # the window slides: 5 of the last 8
    message = str(info.value)
    assert "5 of the last 8 samples (62%, limit 50%)" in message
    assert "accuracy 4, code 1" in message
    assert "Last error (accuracy): KeyError: 'answer'" in message
    assert "Check:" in message


def test_monitor_recovers_as_the_window_slides_and_checks_short_runs_at_close():
    m = RewardFailureMonitor(max_share=0.5, window=4)
    m.update([_failed(), _failed(), ScoredSample(1.0)])
    m.update([ScoredSample(1.0)] * 10)  # the early failures leave the window
    assert m.counters()["failed_samples"] == 2
    short = RewardFailureMonitor(max_share=0.25, window=64)
    short.update([_failed(), ScoredSample(1.0)])
    with pytest.raises(RewardFailureError, match="1 of the last 2"):
        short.close()
    RewardFailureMonitor().close()  # nothing seen: nothing to say


def test_monitor_state_round_trips_and_validates():
    m = RewardFailureMonitor(max_share=0.5, window=4)
    m.update([_failed(), ScoredSample(1.0)])
    again = RewardFailureMonitor(max_share=0.5, window=4)
    again.load_state_dict(m.state_dict())
    assert again.counters() == m.counters()
    with pytest.raises(RewardFailureError):
        again.update([_failed(), _failed()])
    with pytest.raises(ValueError):
        RewardFailureMonitor(max_share=1.5)
    with pytest.raises(ValueError):
        RewardFailureMonitor(window=0)
    never = RewardFailureMonitor(max_share=1.0, window=2)  # 1.0: counts every failure, never stops
    never.update([_failed(), _failed(), _failed()])
    never.close()
    assert never.counters()["failed_samples"] == 3


# ---------------------------------------------------------------- module:function import errors


def test_missing_module_names_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        resolve_reward("no_such_reward_module_xyz:fn")
    message = str(info.value)
    assert "cannot import module 'no_such_reward_module_xyz'" in message
    assert "current working directory" in message and str(tmp_path) in message and "PYTHONPATH" in message


def test_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    import sys

    (tmp_path / "cwd_reward_mod.py").write_text("def r(completion, **_):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    assert resolve_reward("cwd_reward_mod:r")("x") == 0.5


def test_module_that_fails_on_import_says_why(tmp_path, monkeypatch):
    (tmp_path / "broken_reward_mod.py").write_text("import not_installed_dep_xyz\n")
    (tmp_path / "syntax_reward_mod.py").write_text("def r(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="it imports 'not_installed_dep_xyz', which is not installed"):
        resolve_reward("broken_reward_mod:r")
    with pytest.raises(ValueError, match="SyntaxError"):
        resolve_reward("syntax_reward_mod:r")


# ---------------------------------------------------------------- parallel sandboxed scoring


def test_default_workers_rule():
    cpus = os.cpu_count() or 1
    assert _threads(None, 0) == 1 and _threads(None, 1) == 1
    assert _threads(None, 2) == 2  # several jobs: at least 2 threads, even on one CPU
    assert _threads(None, 100) == max(min(8, cpus), 2)
    assert _threads(1, 100) == 1 and _threads(16, 3) == 3


def _slow_sandboxed(completion, **_):
    time.sleep(0.2)  # waits, as on a sandbox subprocess
    return float(len(completion) % 3)


_slow_sandboxed.sandboxed = True


def test_sandboxed_rewards_run_in_parallel_by_default_with_identical_results():
    completions = [f"<answer>{i}</answer>" + "x" * i for i in range(8)]
    examples = [{"answer": str(i)} for i in range(8)]
    rewards = {"slow": (_slow_sandboxed, 1.0), "accuracy": (resolve_reward("accuracy"), 1.0)}
    start = time.monotonic()
    default = score_batch(completions, examples, rewards)
    elapsed = time.monotonic() - start
    assert default == score_batch(completions, examples, rewards, workers=1)
    assert default == score_batch(completions, examples, rewards, workers=3)
    assert elapsed < 8 * 0.2 * 0.75  # at least 2 threads: well under the serial 1.6 s


# ---------------------------------------------------------------- the docs page runs


def test_docs_examples_run():
    import doctest
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"
    result = doctest.testfile(str(page), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0
