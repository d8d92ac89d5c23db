"""Logit distillation on the shared lifecycle: SIGTERM saves a checkpoint and no final model, and resuming
gives the same run as going straight through (same KL rows, same final weights); the teacher data of the
interrupted run is reused."""

import torch
from safetensors.torch import load_file

from alignkit.config import build_config
from alignkit.infra import read_metrics
from alignkit.recipes import distill
from tests.integration.test_sft import StopAfter


def cfg_for(tmp_path, name, **output):
    return build_config(distill.DistillConfig, {
        "mode": "logits", "teacher": {"path": "bundled"}, "prompts": {"n_prompts": 40},
        "reward": {"weights": {"accuracy": 1.0}}, "train": {"steps": 4, "batch_size": 4},
        "output": {"dir": str(tmp_path), "name": name, "tensorboard": False, **output}})


def test_logits_mode_resume_gives_the_same_run(tmp_path, monkeypatch):
    straight = distill.run(cfg_for(tmp_path, "straight"))
    assert not straight["interrupted"] and "student_eval" in straight
    monkeypatch.setattr(distill, "GracefulStop", StopAfter(2))
    cut = distill.run(cfg_for(tmp_path, "resumed"))
    student = tmp_path / "resumed" / "student"
    assert cut["interrupted"] and (student / "checkpoints" / "step-2").is_dir() and not (student / "final").exists()
    sampled = (tmp_path / "resumed" / "teacher_data" / "data.jsonl").stat().st_mtime_ns
    monkeypatch.setattr(distill, "GracefulStop", StopAfter(10**9))
    distill.run(cfg_for(tmp_path, "resumed", resume=True))
    assert (tmp_path / "resumed" / "teacher_data" / "data.jsonl").stat().st_mtime_ns == sampled  # reused
    a, b = (read_metrics(tmp_path / n / "student" / "metrics.jsonl") for n in ("straight", "resumed"))
    assert [r["step"] for r in a] == [1, 2, 3, 4] and [r["train/kl"] for r in a] == [r["train/kl"] for r in b]
    wa, wb = (load_file(tmp_path / n / "student" / "final" / "model.safetensors") for n in ("straight", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_teacher_data_from_reuses_another_runs_samples(tmp_path):
    """distill_logits of the R1 pipeline trains on distill's teacher samples instead of sampling them again;
    other sampling settings there are an error naming them."""
    import pytest

    first = build_config(distill.DistillConfig, {
        "mode": "sft", "teacher": {"path": "bundled"}, "prompts": {"n_prompts": 40},
        "reward": {"weights": {"accuracy": 1.0}}, "train": {"steps": 2, "batch_size": 4, "eval_fraction": 0},
        "output": {"dir": str(tmp_path), "name": "sft", "tensorboard": False}})
    done = distill.run(first)
    source = tmp_path / "sft" / "teacher_data"
    out = distill.run(cfg_for(tmp_path, "logits").model_copy(
        update={"teacher_data_from": str(source), "train": first.train.model_copy(update={"steps": 2})}))
    reused, sampled = out["teacher_data"], done["teacher_data"]
    assert (reused["data"], reused["kept"]) == (sampled["data"], sampled["kept"]) and not (tmp_path / "logits" / "teacher_data").exists()
    assert len(read_metrics(tmp_path / "logits" / "student" / "metrics.jsonl")) == 2
    base = cfg_for(tmp_path, "other")
    other = base.model_copy(update={"teacher_data_from": str(source),
                                    "sampling": base.sampling.model_copy(update={"temperature": 0.5})})
    with pytest.raises(ValueError, match="sampling"):
        distill.run(other)
    with pytest.raises(FileNotFoundError, match="no finished teacher data"):
        distill.run(cfg_for(tmp_path, "none").model_copy(update={"teacher_data_from": str(tmp_path / "missing")}))
