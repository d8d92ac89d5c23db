"""Every recipe a few steps on the real model (SmolLM2-135M-Instruct, ChatML template, 49k vocabulary, tied
embeddings): each output loads with plain transformers and answers through its own chat template. Sizes are
the smallest that exercise every phase; learning is checked in the `slow` tests, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.real.conftest import assert_answers_through_its_template, chat_prompts_file

from alignkit.config import build_config

pytestmark = pytest.mark.real


def out(tmp_path, name):
    return {"dir": str(tmp_path), "name": name, "tensorboard": False}


def summary_of(tmp_path, name):
    return json.loads((Path(tmp_path) / name / "summary.json").read_text())


def test_sft_on_chat_messages(tmp_path, real_model_dir):
    from alignkit.recipes import sft

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {a} plus {a}?"},
        {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."}]}) + "\n" for a in range(10, 22)))
    summary = sft.run(build_config(sft.SFTConfig, {
        "model": {"path": str(real_model_dir)}, "data": {"train_file": str(data), "max_length": 96},
        "optim": {"lr": 1e-5, "warmup_steps": 0}, "train": {"steps": 2, "batch_size": 4, "eval_every": 1000},
        "output": out(tmp_path, "sft")}))
    assert summary["steps"] == 2
    assert_answers_through_its_template(tmp_path / "sft" / "final")


def test_sft_from_the_gguf_file_writes_a_safetensors_model(tmp_path, real_gguf):
    from alignkit.recipes import sft

    sft.run(build_config(sft.SFTConfig, {
        "model": {"path": str(real_gguf.parent), "gguf_file": real_gguf.name},
        "data": {"n_train": 8, "n_eval": 2, "max_length": 96},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "train": {"steps": 1, "batch_size": 4, "eval_every": 1000, "eval_generate": 0},
        "output": out(tmp_path, "gguf")}))
    final = tmp_path / "gguf" / "final"
    assert (final / "model.safetensors").is_file()
    assert_answers_through_its_template(final)


def test_sft_with_lora_writes_a_peft_adapter(tmp_path, real_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignkit.recipes import sft

    sft.run(build_config(sft.SFTConfig, {
        "model": {"path": str(real_model_dir), "lora": {"enabled": True, "r": 4}},
        "data": {"n_train": 8, "n_eval": 2, "max_length": 96}, "optim": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"steps": 1, "batch_size": 4, "eval_every": 1000, "eval_generate": 0},
        "output": out(tmp_path, "lora")}))
    final = tmp_path / "lora" / "final"
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(real_model_dir), final / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 216, 33]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-4)
    assert_answers_through_its_template(final)


def test_reward_model(tmp_path, real_model_dir):
    from transformers import AutoModelForSequenceClassification

    from alignkit.recipes import reward_model

    reward_model.run(build_config(reward_model.RMConfig, {
        "model": {"path": str(real_model_dir)}, "data": {"n_train": 8, "n_eval": 4, "max_length": 96},
        "optim": {"lr": 1e-5, "warmup_steps": 0}, "train": {"steps": 2, "batch_size": 4, "eval_every": 1000},
        "output": out(tmp_path, "rm")}))
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "final")
    assert rm.config.num_labels == 1


@pytest.mark.parametrize("mode", ["copy", "precomputed", "adapter"])
def test_dpo_in_each_reference_mode(tmp_path, real_model_dir, mode):
    from alignkit.recipes import dpo

    model = {"path": str(real_model_dir)}
    if mode == "adapter":
        model["lora"] = {"enabled": True, "r": 4}
    summary = dpo.run(build_config(dpo.DPOConfig, {
        "model": model, "ref": {"mode": mode}, "data": {"n_train": 8, "n_eval": 4, "max_length": 96},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 1000, "eval_generate": 2, "eval_kl_prompts": 2,
                  "max_new_tokens": 8},
        "output": out(tmp_path, f"dpo-{mode}")}))
    assert summary["steps"] == 2
    final = tmp_path / f"dpo-{mode}" / "final"
    if mode == "adapter":
        assert (final / "adapter" / "adapter_config.json").is_file()
    assert_answers_through_its_template(final)


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_grpo_with_chat_prompts(tmp_path, real_model_dir, backend):
    from alignkit.recipes import grpo

    prompts = chat_prompts_file(tmp_path / "prompts.jsonl", 8)
    held_out = chat_prompts_file(tmp_path / "held_out.jsonl", 2, seed=1)
    summary = grpo.run(build_config(grpo.GRPOConfig, {
        "model": {"path": str(real_model_dir)},
        "data": {"train_file": str(prompts), "eval_file": str(held_out), "n_eval": 2, "max_prompt_length": 128},
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12, "backend": backend},
        "reward": {"weights": {"accuracy": 1.0}}, "loss": {"beta": 0.04}, "optim": {"lr": 1e-6},
        "train": {"steps": 1, "eval_every": 1000}, "output": out(tmp_path, f"grpo-{backend}")}))
    assert summary["steps"] == 1 and "eval/accuracy" in summary["end"]
    assert_answers_through_its_template(tmp_path / f"grpo-{backend}" / "final")


def test_ppo_with_chat_prompts(tmp_path, real_model_dir):
    from alignkit.recipes import ppo

    prompts = chat_prompts_file(tmp_path / "prompts.jsonl", 8)
    ppo.run(build_config(ppo.PPOConfig, {
        "model": {"path": str(real_model_dir)},
        "data": {"train_file": str(prompts), "n_eval": 2, "max_prompt_length": 128},
        "rollout": {"prompts_per_step": 2, "max_new_tokens": 10},
        "reward": {"weights": {"accuracy": 1.0}}, "loss": {"epochs": 1, "minibatch_size": 2},
        "optim": {"lr": 1e-6}, "critic": {"lr": 1e-5},
        "train": {"steps": 1, "eval_every": 1000}, "output": out(tmp_path, "ppo")}))
    assert_answers_through_its_template(tmp_path / "ppo" / "final")


def test_rejection_sampling_and_distillation(tmp_path, real_model_dir):
    from alignkit.recipes import distill, rejection_sampling

    prompts = chat_prompts_file(tmp_path / "prompts.jsonl", 4)
    summary = rejection_sampling.run(build_config(rejection_sampling.RejectionSamplingConfig, {
        "model": {"path": str(real_model_dir)}, "prompts": {"train_file": str(prompts), "n_prompts": 2,
                                                            "max_prompt_length": 128},
        "sampling": {"num_samples": 2, "max_new_tokens": 12}, "reward": {"weights": {"accuracy": 1.0}},
        "select": {"threshold": 0.0}, "output": {"dir": str(tmp_path), "name": "rs"}}))
    assert summary["kept"] >= 1
    rows = [json.loads(x) for x in (tmp_path / "rs" / "data.jsonl").read_text().splitlines()]
    assert rows and all(r["prompt"][0]["role"] == "user" for r in rows)

    distill.run(build_config(distill.DistillConfig, {
        "teacher": {"path": str(real_model_dir)}, "student": {"path": str(real_model_dir)},
        "prompts": {"train_file": str(prompts), "n_prompts": 2, "max_prompt_length": 128},
        "sampling": {"num_samples": 2, "max_new_tokens": 12}, "reward": {"weights": {"accuracy": 1.0}},
        "select": {"threshold": 0.0}, "optim": {"lr": 1e-5},
        "train": {"steps": 1, "batch_size": 2, "eval_every": 1000, "max_length": 128},
        "output": {"dir": str(tmp_path), "name": "distill", "tensorboard": False}}))
    assert_answers_through_its_template(tmp_path / "distill" / "student" / "final")


def test_eval_command(real_model_dir):
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "eval", "--model", str(real_model_dir), "-n", "2",
                           "--max-new-tokens", "8", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= scores["accuracy"] <= 1.0


def test_r1_pipeline_with_a_tiny_budget(tmp_path, real_model_dir):
    from alignkit.pipelines import r1

    grpo_stage = {"rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12},
                  "train": {"steps": 1, "eval_every": 1000}, "optim": {"lr": 1e-6},
                  "data": {"n_train": 16, "n_eval": 2, "max_prompt_length": 128}, "output": {"tensorboard": False}}
    sft_stage = {"data": {"max_length": 128}, "optim": {"lr": 1e-5, "warmup_steps": 0},
                 "train": {"steps": 1, "batch_size": 2, "eval_every": 1000, "eval_generate": 0},
                 "output": {"tensorboard": False}}
    sampling = {"num_samples": 2, "max_new_tokens": 12}
    out_ = r1.run(build_config(r1.R1Config, {
        "name": "r1-real", "output_dir": str(tmp_path), "base_model": str(real_model_dir),
        "student_model": str(real_model_dir), "eval": {"n": 2, "max_new_tokens": 12},
        "cold_start": {"n_ideal": 8, "n_zero_prompts": 2, "n_few_shot": 2},
        "r1_zero": grpo_stage, "cold_start_sft": sft_stage, "reasoning_rl": grpo_stage,
        "rejection_sampling": {"prompts": {"n_prompts": 2, "max_prompt_length": 128}, "sampling": sampling,
                               "select": {"threshold": 0.0}},
        "sft": sft_stage, "final_rl": grpo_stage,
        "distill": {"prompts": {"n_prompts": 2, "max_prompt_length": 128}, "sampling": sampling,
                    "select": {"threshold": 0.0}, "train": {"steps": 1, "batch_size": 2, "max_length": 128},
                    "optim": {"lr": 1e-5}, "output": {"tensorboard": False}}}))
    stages = [r["stage"] for r in out_["rows"]]
    assert stages[0] == "base" and stages[-1] == "distill"
    assert (tmp_path / "r1-real" / "report.md").is_file()
