"""A run whose rewards fail for most samples stops with a clear error and a non-zero exit, and summary.json
records the failed samples (a reward raising on every sample used to give exit 0 and a model equal to the
base). Held-out evaluation with data.eval_file reports every reward component; without one it says so."""

import json
import subprocess
import sys

import pytest

from alignkit.config import build_config
from alignkit.recipes import grpo, ppo
from alignkit.rewards import RewardFailureError

SMALL = {"rollout": {"prompts_per_step": 4, "group_size": 2, "max_new_tokens": 8},
         "data": {"n_train": 32, "n_eval": 4}, "train": {"steps": 6, "eval_every": 1000},
         "output": {"tensorboard": False}}


def always_raises(completion, **_):
    raise RuntimeError("verifier offline")


def batched_length(prompts, completions, completion_ids, **_):
    """TRL's batched form: one value per completion (None where it does not apply)."""
    return [float(len(ids)) if ids else None for ids in completion_ids]


def cfg_for(tmp_path, name, **sections):
    data = json.loads(json.dumps(SMALL))
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    data["output"].update(dir=str(tmp_path), name=name)
    return build_config(grpo.GRPOConfig, data)


def test_grpo_stops_when_most_rewards_fail_and_records_them(tmp_path):
    cfg = cfg_for(tmp_path, "failing", reward={"weights": {"tests.integration.test_reward_failures:always_raises": 1.0},
                                               "failure_window": 16})
    with pytest.raises(RewardFailureError, match="verifier offline"):
        grpo.run(cfg)
    summary = json.loads((tmp_path / "failing" / "summary.json").read_text())
    assert summary["reward_failures"]["failed_samples"] >= 16
    assert "stopped" in summary
    assert not (tmp_path / "failing" / "final").exists()


def test_the_cli_exits_non_zero_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "alignkit.cli", "grpo", "rollout.prompts_per_step=4", "rollout.group_size=2",
         "rollout.max_new_tokens=4", "data.n_train=16", "data.n_eval=2", "train.steps=3",
         "reward.weights={tests.integration.test_reward_failures:always_raises: 1.0}", "reward.failure_window=8",
         f"output.dir={tmp_path}", "output.name=cli", "output.tensorboard=false"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("alignkit grpo: error:") and "verifier offline" in last


def test_ppo_stops_too(tmp_path):
    cfg = build_config(ppo.PPOConfig, {
        "rollout": {"prompts_per_step": 8, "max_new_tokens": 6}, "data": {"n_train": 16, "n_eval": 2},
        "reward": {"weights": {"tests.integration.test_reward_failures:always_raises": 1.0}, "failure_window": 8},
        "loss": {"epochs": 1}, "train": {"steps": 3, "eval_every": 1000},
        "output": {"dir": str(tmp_path), "name": "ppo", "tensorboard": False}})
    with pytest.raises(RewardFailureError):
        ppo.run(cfg)
    assert json.loads((tmp_path / "ppo" / "summary.json").read_text())["reward_failures"]["failed_samples"] >= 8


def _prompt_file(path, n, seed):
    from alignkit.data.arithmetic import make_problems

    rows = [{"prompt": p.question, "answer": p.answer_text} for p in make_problems(n, level=1, seed=seed)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_file_reports_every_reward_component(tmp_path):
    train, held = _prompt_file(tmp_path / "t.jsonl", 16, 1), _prompt_file(tmp_path / "e.jsonl", 4, 2)
    batched = "tests.integration.test_reward_failures:batched_length"
    summary = grpo.run(cfg_for(tmp_path, "eval", data={"train_file": str(train), "eval_file": str(held)},
                               reward={"weights": {"accuracy": 1.0, "format": 0.5, batched: 0.0}},
                               train={"steps": 1}))
    for key in ("eval/accuracy", "eval/reward/accuracy", "eval/reward/format", f"eval/reward/{batched}",
                "eval/reward/total"):
        assert key in summary["end"], key
    assert summary["reward_failures"]["failed_samples"] == 0


def test_without_eval_file_the_summary_says_no_evaluation_ran(tmp_path, caplog):
    train = _prompt_file(tmp_path / "t.jsonl", 16, 1)
    summary = grpo.run(cfg_for(tmp_path, "noeval", data={"train_file": str(train)}, train={"steps": 1}))
    assert summary["eval_note"].startswith("no held-out evaluation ran")
    assert "no held-out evaluation will run" in caplog.text
