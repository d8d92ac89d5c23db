"""PPO on the shared lifecycle: completions.jsonl with every reward component, the monitor's text metrics,
callbacks, and train.time_limit_s ending the run with a final model and critic."""

import json

import pytest

from alignkit.config import load_config
from alignkit.recipes import ppo
from tests.helpers import rows

SMALL = ["rollout.prompts_per_step=4", "rollout.max_new_tokens=8", "data.n_train=32", "data.n_eval=2",
         "train.eval_every=1000", "output.tensorboard=false", "loss.minibatch_size=2", "loss.epochs=1"]


def test_completions_monitor_and_callbacks(tmp_path):
    seen = []
    ppo.run(load_config(ppo.PPOConfig, None, SMALL + ["train.steps=2", f"output.dir={tmp_path}", "output.name=c"]),
            callbacks=[lambda step, m: seen.append(step)])
    assert seen == [0, 1, 2]
    samples = [json.loads(x) for x in (tmp_path / "c" / "completions.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    assert {"prompt", "completion", "accuracy", "format", "total", "advantage"} <= set(samples[0])
    logged = rows(tmp_path / "c")[1:]
    assert all("text/distinct_2" in r and "warnings" in r for r in logged)
    assert logged[0]["reward/total"] == pytest.approx(sum(s["total"] for s in samples[:4]) / 4)


def test_time_limit_ends_the_run_with_a_final_model(tmp_path):
    s = ppo.run(load_config(ppo.PPOConfig, None, SMALL + ["train.steps=50", "train.time_limit_s=0.001",
                                                          f"output.dir={tmp_path}", "output.name=t"]))
    assert s["steps"] == 1 and s["time_limit_reached"] and not s["interrupted"]
    assert (tmp_path / "t" / "final").is_dir() and (tmp_path / "t" / "critic").is_dir()
