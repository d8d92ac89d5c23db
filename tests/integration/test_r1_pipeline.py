"""The R1 pipeline end to end with small budgets: artifacts, manifests, report; resume without redoing a
finished stage; distillation lifts the student; the full-budget run (slow) meets the issue's bars."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from alignkit.config import load_config
from alignkit.pipelines import r1

SMALL = ["eval.n=30", "r1_zero.train.steps=2", "reasoning_rl.train.steps=2", "final_rl.train.steps=2",
         "cold_start_sft.train.steps=6", "sft.train.steps=6", "distill.train.steps=6", "cold_start.n_ideal=60",
         "cold_start.n_zero_prompts=16", "cold_start.n_few_shot=8", "rejection_sampling.prompts.n_prompts=40",
         "distill.prompts.n_prompts=40"]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pipelines" / "r1_tiny.yaml"
MODEL_STAGES = ["r1_zero", "cold_start_sft", "reasoning_rl", "sft", "final_rl", "distill"]


def test_pipeline_runs_end_to_end_and_resumes_without_redoing_stages(tmp_path):
    cfg = load_config(r1.R1Config, CONFIG, SMALL + [f"output_dir={tmp_path}"])
    r1.run(cfg, only=["r1_zero", "cold_start_data"])  # "interrupted" after the second stage
    root = tmp_path / "r1-tiny"
    first = json.loads((root / "r1_zero" / "manifest.json").read_text())
    assert first["finished"] and not (root / "cold_start_sft").exists()

    out = r1.run(cfg)  # re-run: skips the finished stages, runs the rest
    again = json.loads((root / "r1_zero" / "manifest.json").read_text())
    assert again["started"] == first["started"]  # not redone
    for stage in MODEL_STAGES:
        manifest = json.loads((root / stage / "manifest.json").read_text())
        assert manifest["finished"] and manifest["input"] and manifest["code"].startswith("alignkit")
        assert set(manifest["eval"]) >= {"accuracy", "format", "language", "length"}
        AutoModelForCausalLM.from_pretrained(root / stage / "final")  # plain transformers loads every model
    data = (root / "cold_start_data" / "data.jsonl").read_text().splitlines()
    assert len(data) >= 60 and all(json.loads(x)["completion"] for x in data)
    stats = json.loads((root / "rejection_sampling" / "run" / "stats.json").read_text())
    assert stats["samples"] == 40 * 4
    assert [r["stage"] for r in out["rows"]] == ["base", *MODEL_STAGES]
    report = (root / "report.md").read_text()
    assert all(s in report for s in MODEL_STAGES) and (root / "report.png").is_file()


@pytest.mark.slow
def test_distillation_lifts_the_student(tmp_path):
    from alignkit.config import build_config
    from alignkit.data import ideal_trace, write_jsonl
    from alignkit.evaluation import arithmetic_eval_set, arithmetic_train_problems, evaluate_model
    from alignkit.models import load_causal_lm, load_tokenizer, resolve_model_path
    from alignkit.recipes import distill, sft

    # a teacher that writes R1-format answers: the base model fine-tuned on ideal traces
    write_jsonl([{"prompt": p.question, "completion": ideal_trace(p)} for p in arithmetic_train_problems(3000)],
                tmp_path / "ideal.jsonl")
    sft.run(build_config(sft.SFTConfig, {"data": {"train_file": str(tmp_path / "ideal.jsonl")},
                                         "train": {"steps": 800, "eval_generate": 0, "eval_every": 1000},
                                         "output": {"dir": str(tmp_path), "name": "teacher", "tensorboard": False}}))
    held_out = arithmetic_eval_set(n=100)
    student = resolve_model_path("bundled-student")
    before = evaluate_model(load_causal_lm(student), load_tokenizer(student), held_out)
    summary = distill.run(build_config(distill.DistillConfig, {
        "teacher": {"path": str(tmp_path / "teacher" / "final")}, "prompts": {"n_prompts": 2000},
        "optim": {"lr": 3e-3}, "train": {"steps": 1500, "eval_every": 5000},
        "output": {"dir": str(tmp_path), "name": "d", "tensorboard": False}}))
    after = evaluate_model(load_causal_lm(tmp_path / "d" / "student" / "final"), load_tokenizer(student), held_out)
    assert summary["teacher_data"]["kept"] > 100
    assert after["accuracy"] >= before["accuracy"] + 0.05 and after["format"] > 0.9


@pytest.mark.slow
def test_full_budget_pipeline_meets_the_bars(tmp_path):
    out = r1.run(load_config(r1.R1Config, CONFIG, [f"output_dir={tmp_path}"]))
    rows = {r["stage"]: r for r in out["rows"]}
    base, teacher, student = rows["base"], rows["final_rl"], rows["distill"]
    assert teacher["accuracy"] >= base["accuracy"] + 0.30
    assert teacher["format"] >= 0.90
    assert student["accuracy"] - base["accuracy"] >= 0.5 * (teacher["accuracy"] - base["accuracy"])


def test_logit_distillation_lowers_the_kl_to_the_teacher(tmp_path):
    from alignkit.config import build_config
    from alignkit.infra import read_metrics
    from alignkit.recipes import distill

    summary = distill.run(build_config(distill.DistillConfig, {
        "mode": "logits", "teacher": {"path": "bundled"}, "prompts": {"n_prompts": 40},
        "reward": {"weights": {"accuracy": 1.0}}, "train": {"steps": 60, "batch_size": 8},
        "output": {"dir": str(tmp_path), "name": "logits", "tensorboard": False}}))
    kl = [r["train/kl"] for r in read_metrics(tmp_path / "logits" / "student" / "metrics.jsonl")]
    assert summary["teacher_data"]["kept"] > 0
    assert sum(kl[-5:]) / 5 < 0.85 * sum(kl[:5]) / 5
    AutoModelForCausalLM.from_pretrained(tmp_path / "logits" / "student" / "final")
