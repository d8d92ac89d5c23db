"""reward.when: in a prompt set that mixes kinds of rows, each reward component applies only to the rows whose
columns equal the given values; elsewhere it is None ("not applicable") and is not computed at all (the
reward model forwards only its rows). Hand-checkable: 4 rows, kind in {task, general}."""

from __future__ import annotations

import pytest
import torch

from alignkit.config import ConfigError, RewardSection, RLRewardSection, load_config
from alignkit.rewards import (
    OnlyWhen,
    accuracy_reward,
    apply_when,
    build_rewards,
    is_batched,
    reward_metrics,
    score_batch,
    score_with_model,
)
from alignkit.rewards.registry import NO_APPLICABLE, matches

COMPLETIONS = ["<answer>4</answer>", "Hello there!", "<answer>7</answer>", "Sure, here you go."]
EXAMPLES = [{"kind": "task", "answer": "4"}, {"kind": "general"}, {"kind": "task", "answer": "6"}, {"kind": "general"}]
PROMPTS = ["2+2?", "Say hi", "3+3?", "Help me"]
TASK, GENERAL = {"kind": "task"}, {"kind": "general"}


class Counted:
    """accuracy_reward, counting the rows it is called on (it would fail on a row without 'answer')."""

    def __init__(self):
        self.calls = []

    def __call__(self, completion, **fields):
        self.calls.append(completion)
        return accuracy_reward(completion, **fields)


class FakeChatScore:
    """A batched (TRL-style) 'model-like' component: 0.1 per word; records the batches it is given."""

    def __init__(self):
        self.batches = []

    def __call__(self, prompts, completions, kind, **kwargs):
        self.batches.append((list(prompts), list(completions), list(kind)))
        return [0.1 * len(c.split()) for c in completions]


class StubRewardModel:
    """ModelReward's interface: score_batch(prompts, completions) -> [float]; records its calls."""

    def __init__(self, *args, **kwargs):
        self.calls = []

    def score_batch(self, prompts, completions):
        self.calls.append((list(prompts), list(completions)))
        return [float(len(c)) for c in completions]


def mixed_table():
    acc, chat = Counted(), FakeChatScore()
    table = apply_when({"accuracy": (acc, 1.0), "chat": (chat, 0.5)}, {"accuracy": TASK, "chat": GENERAL})
    return table, acc, chat


def test_each_component_applies_only_to_its_rows_and_is_not_called_elsewhere():
    table, acc, chat = mixed_table()
    scored = score_batch(COMPLETIONS, EXAMPLES, table, prompts=PROMPTS)
    assert [s.components for s in scored] == [
        {"accuracy": 1.0, "chat": None},
        {"accuracy": None, "chat": pytest.approx(0.2)},   # "Hello there!": 2 words
        {"accuracy": 0.0, "chat": None},
        {"accuracy": None, "chat": pytest.approx(0.4)},   # "Sure, here you go.": 4 words
    ]
    assert [s.total for s in scored] == pytest.approx([1.0, 0.5 * 0.2, 0.0, 0.5 * 0.4])
    assert all(s.ok for s in scored)
    assert [s.success for s in scored] == [True, None, False, None]  # success_key=accuracy: None where n/a
    assert acc.calls == [COMPLETIONS[0], COMPLETIONS[2]]              # per-sample: task rows only
    assert chat.batches == [(["Say hi", "Help me"], [COMPLETIONS[1], COMPLETIONS[3]], ["general", "general"])]
    m = reward_metrics(scored)
    assert m["reward/accuracy"] == 0.5 and m["reward/skipped/accuracy"] == 2.0   # mean over the 2 task rows
    assert m["reward/chat"] == pytest.approx(0.3) and m["reward/skipped/chat"] == 2.0
    assert m["reward/success_rate"] == 0.5 and m["reward/failed"] == 0.0
    assert m["reward/total"] == pytest.approx((1.0 + 0.1 + 0.0 + 0.2) / 4)


def test_without_the_condition_the_same_functions_see_every_row():
    acc, chat = Counted(), FakeChatScore()
    scored = score_batch(COMPLETIONS, EXAMPLES, {"accuracy": (acc, 1.0), "chat": (chat, 0.5)}, prompts=PROMPTS)
    assert len(acc.calls) == 4 and len(chat.batches[0][0]) == 4
    assert [s.failed for s in scored] == [None, "accuracy", None, "accuracy"]  # no 'answer' on general rows


def test_a_batched_component_matching_no_row_is_not_called():
    table, acc, chat = mixed_table()
    scored = score_batch([COMPLETIONS[0], COMPLETIONS[2]], [EXAMPLES[0], EXAMPLES[2]], table, prompts=PROMPTS[::2])
    assert chat.batches == [] and [s.total for s in scored] == [1.0, 0.0]


def test_a_row_no_component_applies_to_fails_as_no_applicable_reward():
    table, acc, chat = mixed_table()
    scored = score_batch(["x", "y"], [{"kind": "other"}, {}], table, prompts=["p", "q"])  # {}: lacks the column
    assert [s.failed for s in scored] == [NO_APPLICABLE] * 2 and acc.calls == [] and chat.batches == []


def test_reward_model_scores_only_its_rows_in_one_forward():
    table, acc, chat = mixed_table()
    rules = {"accuracy": table["accuracy"]}
    rm = StubRewardModel()
    scored = score_with_model(COMPLETIONS, EXAMPLES, PROMPTS, rules, rm, model_weight=0.5, model_when=GENERAL)
    assert rm.calls == [(["Say hi", "Help me"], [COMPLETIONS[1], COMPLETIONS[3]])]
    assert [s.components for s in scored] == [{"accuracy": 1.0, "model": None}, {"accuracy": None, "model": 12.0},
                                              {"accuracy": 0.0, "model": None}, {"accuracy": None, "model": 18.0}]
    assert [s.total for s in scored] == [1.0, 6.0, 0.0, 9.0]
    assert [s.success for s in scored] == [True, None, False, None]
    m = reward_metrics(scored)
    assert m["reward/model"] == 15.0 and m["reward/skipped/model"] == 2.0 and m["reward/accuracy"] == 0.5
    # a row neither applies to fails; with no rule reward at all, too (not a silent 0)
    other = score_with_model(["z"], [{"kind": "other"}], ["p"], rules, rm, model_when=GENERAL)
    assert other[0].failed == NO_APPLICABLE and other[0].total is None
    alone = score_with_model(["z", "hi"], [{"kind": "task"}, GENERAL], ["p", "q"], {}, rm, model_when=GENERAL)
    assert [s.failed for s in alone] == [NO_APPLICABLE, None] and alone[1].total == 2.0
    assert len(rm.calls) == 2  # the call for 'other' forwarded nothing: no row matched


def test_reward_model_without_condition_scores_every_row_as_before():
    rm = StubRewardModel()
    scored = score_with_model(COMPLETIONS[:1], EXAMPLES[:1], PROMPTS[:1], build_rewards({"accuracy": 1.0}), rm)
    assert rm.calls == [(PROMPTS[:1], COMPLETIONS[:1])] and scored[0].total == 1.0 + len(COMPLETIONS[0])


def test_matching_is_exact_equality_and_needs_the_column():
    assert matches({"kind": "task", "level": 1}, {"kind": "task", "level": 1})
    assert not matches({"kind": "task"}, {"kind": "task", "level": 1})   # lacks 'level'
    assert not matches({"level": "1"}, {"level": 1}) and not matches({"level": 1}, {"level": "1"})
    assert matches({"x": None}, {"x": None}) and not matches({}, {"x": None})
    assert not matches({"ids": torch.tensor([1, 2])}, {"ids": [1, 2]})    # cannot be compared: no match


def test_only_when_keeps_the_function_form_and_sandboxing():
    chat = FakeChatScore()
    wrapped = OnlyWhen(chat, GENERAL)
    assert is_batched(wrapped) and not is_batched(OnlyWhen(accuracy_reward, TASK))
    calls = []

    def slow(completion, **_):
        calls.append(completion)
        return 1.0

    slow.sandboxed = True  # run in threads
    scored = score_batch(COMPLETIONS, EXAMPLES, apply_when({"slow": (slow, 1.0)}, {"slow": TASK}), workers=2)
    assert sorted(calls) == sorted([COMPLETIONS[0], COMPLETIONS[2]])
    assert [s.components["slow"] for s in scored] == [1.0, None, 1.0, None]


def test_build_rewards_when_and_its_errors():
    table = build_rewards({"accuracy": 1.0, "format": 0.5}, when={"accuracy": TASK})
    assert isinstance(table["accuracy"][0], OnlyWhen) and not isinstance(table["format"][0], OnlyWhen)
    assert table["accuracy"][1] == 1.0
    assert build_rewards({"accuracy": 1.0}, when={"model": GENERAL}, reward_model=True).keys() == {"accuracy"}
    with pytest.raises(ValueError, match=r"reward.when.acc: 'acc' is not a reward component; the components are: "
                                         r"accuracy, format"):
        build_rewards({"accuracy": 1.0, "format": 0.5}, when={"acc": TASK})
    with pytest.raises(ValueError, match=r"reward.when.model: .*set reward.model.*components are: accuracy$"):
        build_rewards({"accuracy": 1.0}, when={"model": GENERAL})
    with pytest.raises(ValueError, match=r"reward.when.accuracy must be a mapping \{column: value\}.*got str 'task'"):
        build_rewards({"accuracy": 1.0}, when={"accuracy": "task"})
    with pytest.raises(ValueError, match="reward.when.model is set but there is no reward model"):
        score_with_model(["x"], [{}], ["p"], {}, None, model_when=GENERAL)


# ---------------------------------------------------------------- config and the RL scorer

def grpo_config(*overrides):
    from alignkit.recipes.grpo import GRPOConfig

    return load_config(GRPOConfig, None, list(overrides))


def test_config_syntax_and_errors():
    cfg = grpo_config("reward.when={accuracy: {kind: task}, model: {kind: general}}", "reward.model=runs/rm/final")
    assert cfg.reward.when == {"accuracy": TASK, "model": GENERAL}
    assert grpo_config("reward.when.accuracy.kind=task").reward.when == {"accuracy": TASK}   # dotted form
    assert grpo_config().reward.when == {}
    with pytest.raises(ConfigError, match=r"'reward': .*reward.when.acc: 'acc' is not a reward component; "
                                          r"the components are: accuracy, format"):
        grpo_config("reward.when={acc: {kind: task}}")
    with pytest.raises(ConfigError, match=r"reward.when.model: .*set reward.model"):
        grpo_config("reward.when={model: {kind: general}}")
    with pytest.raises(ConfigError, match=r"'reward.when': .*reward.when.accuracy must be a mapping.*got str 'task'"):
        grpo_config("reward.when={accuracy: task}")
    with pytest.raises(ConfigError, match=r"reward.when.accuracy is empty"):
        grpo_config("reward.when={accuracy: {}}")
    with pytest.raises(ValueError, match="this recipe has no trained reward model"):
        RewardSection(when={"model": GENERAL})  # rejection sampling / distill: rules only


def test_help_describes_when(capsys):
    from alignkit.cli import main

    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    out = capsys.readouterr().out
    assert "reward.when" in out and "not applicable" in out


def test_scorer_applies_when_to_rules_and_reward_model(monkeypatch):
    import alignkit.models.reward_fn as reward_fn
    from alignkit.rollout.scoring import Scorer

    monkeypatch.setattr(reward_fn, "ModelReward", StubRewardModel)
    cfg = RLRewardSection(weights={"accuracy": 1.0}, model="runs/rm/final", model_weight=0.5,
                          when={"accuracy": TASK, "model": GENERAL})
    scorer = Scorer(cfg, device="cpu")
    ids, mask = torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.long)
    scored = scorer(COMPLETIONS, ids, mask, EXAMPLES, PROMPTS)
    assert scorer.model.calls == [(["Say hi", "Help me"], [COMPLETIONS[1], COMPLETIONS[3]])]
    assert [s.total for s in scored] == [1.0, 6.0, 0.0, 9.0] and scorer.monitor.counters()["failed_samples"] == 0
    # the held-out evaluation scores with scorer.rewards: the rule condition travels with the table
    held_out = score_batch(COMPLETIONS, EXAMPLES, scorer.rewards, prompts=PROMPTS)
    assert [s.components["accuracy"] for s in held_out] == [1.0, None, 0.0, None]


def test_scorer_without_when_is_unchanged():
    from alignkit.rollout.scoring import Scorer

    scorer = Scorer(RLRewardSection(weights={"accuracy": 1.0, "format": 0.5}), device="cpu")
    assert scorer.model_when is None
    assert {k: v for k, v in scorer.rewards.items()} == build_rewards({"accuracy": 1.0, "format": 0.5})


def test_scorer_reward_funcs_take_when_by_their_names():
    from alignkit.rollout.scoring import Scorer

    acc, chat = Counted(), FakeChatScore()
    cfg = RLRewardSection(weights={"accuracy": 1.0, "chat": 0.5}, when={"accuracy": TASK, "chat": GENERAL})
    scorer = Scorer(cfg, device="cpu", reward_funcs={"accuracy": (acc, 1.0), "chat": (chat, 0.5)})
    scored = scorer(COMPLETIONS, torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.long), EXAMPLES,
                    PROMPTS)
    assert [s.total for s in scored] == pytest.approx([1.0, 0.1, 0.0, 0.2]) and len(acc.calls) == 2
    with pytest.raises(ValueError, match="'chat' is not a reward component; the components are: accuracy"):
        Scorer(cfg, device="cpu", reward_funcs={"accuracy": acc})


def test_grpo_run_on_a_mixed_prompt_set_with_a_trained_reward_model(tmp_path, monkeypatch):
    """End to end: math rows scored by accuracy, chat rows by a (tiny, untrained) reward model; nothing fails
    in training."""
    from alignkit import rewards
    from alignkit.config import ModelSection
    from alignkit.models.reward import build_reward_model
    from alignkit.recipes import grpo
    from tests.helpers import rows

    rm, tok = build_reward_model(ModelSection(path="bundled"), seed=1)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    data = tmp_path / "mixed.jsonl"
    data.write_text('{"prompt": "2+2", "answer": "4", "kind": "task"}\n{"prompt": "Say hi", "kind": "general"}\n' * 4)
    seen = []
    real = rewards.score_with_model

    def spy(completions, examples, *args, **kw):
        out = real(completions, examples, *args, **kw)
        seen.extend(zip(examples, out))
        return out

    monkeypatch.setattr(rewards, "score_with_model", spy)
    grpo.run(grpo_config("rollout.prompts_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=8",
                         "train.steps=1", "output.tensorboard=false", f"output.dir={tmp_path}", "output.name=mixed",
                         f"data.train_file={data}", f"data.eval_file={data}", "data.n_eval=4",
                         "reward.weights={accuracy: 1.0}", f"reward.model={tmp_path / 'rm'}",
                         "reward.when={accuracy: {kind: task}, model: {kind: general}}"))
    assert {e["kind"] for e, _ in seen} == {"task", "general"}
    for example, s in seen:
        assert s.ok
        task = example["kind"] == "task"
        assert (s.components["accuracy"] is None) != task and (s.components["model"] is None) == task
    start, step = rows(tmp_path / "mixed")[:2]
    assert step["reward/failed"] == 0.0 and step["reward/skipped/model"] > 0 and step["reward/skipped/accuracy"] > 0
    # held-out evaluation scores the rule rewards only (the reward model takes no part in it): accuracy on the
    # 2 task rows, never called on the 2 general rows, which have no applicable rule reward there
    assert "eval/reward/accuracy" in start and "eval/reward/failed/accuracy" not in start
    assert start["eval/reward/failed"] == start["eval/reward/failed/no_applicable_reward"] == 2.0
