"""On-policy distillation (``alignkit distill mode=on_policy``, GKD): the fields in --help, a 2-step run whose
final student loads, both kinds of step under lmbda < 1, SIGTERM + resume gives the same run, a student with
another tokenizer is refused, and a learning check: the KL to the teacher falls on the student's own samples."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignkit.config import ModelSection, build_config
from alignkit.infra import read_metrics
from alignkit.recipes import distill, distill_on_policy
from tests.integration.test_sft import StopAfter


def cfg_for(tmp_path, name, *, on_policy=None, train=None, student=None, prompts=None, **output):
    return build_config(distill.DistillConfig, {
        "mode": "on_policy", "teacher": {"path": "bundled"}, "prompts": {"n_prompts": 16, **(prompts or {})},
        **({"student": {"path": student}} if student else {}),
        "on_policy": {"prompts_per_step": 4, "max_new_tokens": 16, **(on_policy or {})},
        "train": {"steps": 2, **(train or {})},
        "output": {"dir": str(tmp_path), "name": name, "tensorboard": False, **output}})


def test_on_policy_fields_are_in_the_help(capsys):
    from alignkit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for key in ("on_policy.beta", "on_policy.lmbda", "on_policy.prompts_per_step", "on_policy.max_new_tokens",
                "on_policy.temperature"):
        assert key in out
    with pytest.raises(ValueError):
        build_config(distill.DistillConfig, {"mode": "on_policy", "on_policy": {"beta": 1.5}})


def test_two_steps_run_and_the_final_student_loads(tmp_path):
    summary = distill.run(cfg_for(tmp_path, "op"))
    student = tmp_path / "op" / "student"
    rows = [r for r in read_metrics(student / "metrics.jsonl") if "train/kl" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["train/on_policy"] == 1 for r in rows)
    assert all(r["train/kl"] > 0 and r["train/jsd"] > 0 and r["completion/length"] > 0 for r in rows)
    assert summary["mode"] == "on_policy" and summary["teacher_data"] is None  # lmbda = 1: no teacher data
    assert not (tmp_path / "op" / "teacher_data").exists() and "student_eval" in summary
    AutoModelForCausalLM.from_pretrained(student / "final")


def test_lmbda_mixes_student_samples_and_teacher_data(tmp_path):
    summary = distill.run(build_config(distill.DistillConfig, {
        **cfg_for(tmp_path, "mix", on_policy={"lmbda": 0.5}, train={"steps": 6}).model_dump(),
        "reward": {"weights": {"accuracy": 1.0}}, "select": {"threshold": 0.0},
        "sampling": {"num_samples": 2, "max_new_tokens": 16}}))
    kinds = [r["train/on_policy"] for r in read_metrics(tmp_path / "mix" / "student" / "metrics.jsonl")
             if "train/kl" in r]
    assert summary["teacher_data"]["kept"] > 0 and set(kinds) == {0, 1}


def test_sigterm_then_resume_gives_the_same_run(tmp_path, monkeypatch):
    distill.run(cfg_for(tmp_path, "straight", train={"steps": 3}))
    monkeypatch.setattr(distill_on_policy, "GracefulStop", StopAfter(2))
    cut = distill.run(cfg_for(tmp_path, "resumed", train={"steps": 3}))
    student = tmp_path / "resumed" / "student"
    assert cut["interrupted"] and (student / "checkpoints" / "step-2").is_dir() and not (student / "final").exists()
    monkeypatch.setattr(distill_on_policy, "GracefulStop", StopAfter(10**9))
    distill.run(cfg_for(tmp_path, "resumed", train={"steps": 3}, resume=True))
    a, b = ([r for r in read_metrics(tmp_path / n / "student" / "metrics.jsonl") if "train/kl" in r]
            for n in ("straight", "resumed"))
    assert [r["step"] for r in b] == [1, 2, 3] and [r["train/kl"] for r in a] == [r["train/kl"] for r in b]
    wa, wb = (load_file(tmp_path / n / "student" / "final" / "model.safetensors") for n in ("straight", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_student_with_another_tokenizer_is_refused():
    from alignkit.models import load_policy

    teacher, tok = load_policy(ModelSection(path="bundled"))
    student, tok_s = load_policy(ModelSection(path="bundled-student"))
    distill_on_policy.check_same_tokenizer(teacher, tok, student, tok_s)  # the shipped pair shares one
    other = copy.deepcopy(tok_s)
    other.add_tokens(["<not-in-the-teacher>"])
    with pytest.raises(ValueError, match=rf"teacher's vocabulary has {len(tok)} tokens.*student's {len(tok) + 1}"):
        distill_on_policy.check_same_tokenizer(teacher, tok, student, other)


def test_on_policy_distillation_lowers_the_kl_to_the_teacher(tmp_path):
    """A student with the teacher's tokenizer, freshly initialized (the shipped student's architecture), so the
    gap is large: forward KL(teacher || student) on its own samples, last 5 of 40 steps vs the first 5."""
    from alignkit.models import load_policy

    torch.manual_seed(0)
    shipped, tok = load_policy(ModelSection(path="bundled-student"))
    fresh = AutoModelForCausalLM.from_config(shipped.config)
    fresh.save_pretrained(tmp_path / "fresh")
    tok.save_pretrained(tmp_path / "fresh")
    distill.run(cfg_for(tmp_path, "learn", student=str(tmp_path / "fresh"), prompts={"n_prompts": 40},
                        on_policy={"prompts_per_step": 8}, train={"steps": 40}))
    rows = [r for r in read_metrics(tmp_path / "learn" / "student" / "metrics.jsonl") if "train/kl" in r]
    kl, jsd = [r["train/kl"] for r in rows], [r["train/jsd"] for r in rows]
    assert len(kl) == 40
    assert sum(kl[-5:]) / 5 < 0.85 * sum(kl[:5]) / 5  # seed 0: 4.25 -> 2.46
    assert sum(jsd[-5:]) < sum(jsd[:5])
