"""The R1 pipeline on the real model (configs/pipelines/r1_smollm2.yaml) with a reduced budget: every stage
runs on SmolLM2-135M-Instruct, the derived student is half the teacher's depth, the report has every column.
The selection thresholds are opened (0) so that a barely trained model still hands data on; the full command
keeps them at 1.0 with verified steps. Minutes on 2 CPU cores (`make test-real`, slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from alignkit.config import load_config
from alignkit.pipelines import r1

pytestmark = [pytest.mark.real, pytest.mark.slow]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pipelines" / "r1_smollm2.yaml"
REDUCED = [
    "eval.n=8", "eval.max_new_tokens=48", "eval.general_n=3", "eval.general_max_new_tokens=16", "task_train_prompts=64",
    "cold_start.n_ideal=32", "cold_start.n_zero_prompts=4", "cold_start.n_few_shot=4",
    "cold_start.zero_sampling.num_samples=2", "cold_start.zero_sampling.max_new_tokens=48",
    "cold_start.few_shot_sampling.num_samples=2", "cold_start.few_shot_sampling.max_new_tokens=48",
    *[f"{s}.{k}" for s in ("r1_zero", "reasoning_rl", "final_rl") for k in (
        "train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=32",
        "data.n_eval=2")],
    "cold_start_sft.train.steps=2", "cold_start_sft.train.batch_size=4", "sft.train.steps=2", "sft.train.batch_size=4",
    "rejection_sampling.prompts.n_prompts=4", "rejection_sampling.sampling.num_samples=2",
    "rejection_sampling.sampling.max_new_tokens=32", "rejection_sampling.select.threshold=0.0",
    "rejection_sampling.select.verify_steps=false", "preference_rm.train.steps=2", "preference_rm.train.batch_size=4",
    *[f"{s}.{k}" for s in ("distill", "distill_logits") for k in (
        "prompts.n_prompts=4", "sampling.num_samples=2", "sampling.max_new_tokens=32", "select.threshold=0.0",
        "select.verify_steps=false", "train.steps=2", "train.batch_size=4")],
]


def test_real_model_pipeline_reduced_budget(tmp_path, real_model_dir):
    cfg = load_config(r1.R1Config, CONFIG, REDUCED + [f"output_dir={tmp_path}", f"base_model={real_model_dir}"])
    out = r1.run(cfg)
    root = tmp_path / "r1-smollm2"
    rows = {r["stage"]: r for r in out["rows"]}
    assert list(rows) == ["base", "r1_zero", "cold_start_sft", "reasoning_rl", "sft", "final_rl", "distill",
                          "distill_logits"]
    assert {"accuracy", "format", "steps", "general", "params_m", "language_second", "correct"} <= set(rows["sft"])
    assert (root / "preference_rm" / "final" / "config.json").is_file()  # final RL's reward model for chat prompts
    result = json.loads((root / "sft_data" / "manifest.json").read_text())["result"]
    counts, dropped = result["counts"], result["language_dropped"]
    assert counts["cold_start"] + dropped["cold_start"] >= 32 and counts["general"] > 0  # sft_with_cold_start
    assert dropped["cold_start"] > 0  # sft_min_language: Chinese problems whose cold-start trace thinks in English
    assert json.loads((root / "distill_logits" / "manifest.json").read_text())["config"]["teacher_data_from"]
    assert rows["distill"]["params_m"] < 0.75 * rows["final_rl"]["params_m"]
    student = AutoModelForCausalLM.from_pretrained(root / "distill" / "final")
    assert student.config.num_hidden_layers == 15  # every other layer of 30, the last one kept
    zero = json.loads((root / "r1_zero" / "manifest.json").read_text())
    assert zero["config"]["reward"]["options"]["accuracy"]["strict"] is True
    assert "Students vs the teacher" in (root / "report.md").read_text()
    again = r1.run(cfg)  # resumable: nothing changed, nothing redone
    assert [r["wall_s"] for r in again["rows"]] == [r["wall_s"] for r in out["rows"]]
