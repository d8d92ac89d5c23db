"""GRPO writes each step's trained samples to completions.jsonl (with their advantage) through the lifecycle,
and the monitor's text metrics land in metrics.jsonl."""

import json

import pytest

from alignkit.config import load_config
from alignkit.recipes import grpo
from tests.helpers import rows


def test_grpo_completions_and_text_metrics(tmp_path):
    grpo.run(load_config(grpo.GRPOConfig, None, [
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6", "data.n_train=16",
        "data.n_eval=2", "train.steps=2", "train.eval_every=1000", "output.tensorboard=false",
        f"output.dir={tmp_path}", "output.name=g"]))
    samples = [json.loads(x) for x in (tmp_path / "g" / "completions.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    assert {"accuracy", "format", "total", "advantage"} <= set(samples[0])
    assert sum(s["advantage"] for s in samples[:2]) == pytest.approx(0.0, abs=1e-6)  # one group's advantages
    assert all("text/distinct_2" in r for r in rows(tmp_path / "g")[1:])
