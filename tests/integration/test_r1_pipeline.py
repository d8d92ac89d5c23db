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
    cfg = load_config(r1.R1Config, CONFIG, SMALL + [f"output_dir={tmp_path}", "cold_start_sft.output.save_every=3"])
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
        assert not list((root / stage).rglob("checkpoints"))  # a finished stage's checkpoints are deleted
    data = (root / "cold_start_data" / "data.jsonl").read_text().splitlines()
    assert len(data) >= 60 and all(json.loads(x)["completion"] for x in data)
    stats = json.loads((root / "rejection_sampling" / "run" / "stats.json").read_text())
    assert stats["samples"] == 40 * 4
    assert [r["stage"] for r in out["rows"]] == ["base", *MODEL_STAGES]
    report = (root / "report.md").read_text()
    assert all(s in report for s in MODEL_STAGES) and (root / "report.png").is_file()
    total = next(line for line in report.splitlines() if line.startswith("Total wall time"))
    assert "base evaluation" in total and "cold_start_data" in total and "rejection_sampling" in total
    seconds = [json.loads((root / s / "manifest.json").read_text())["wall_s"] for s in (p.name for p in r1.stages(cfg, root))]
    assert float(total.split()[3]) == pytest.approx(sum(seconds) + out["rows"][0]["wall_s"], abs=1)


def test_logit_distillation_reuses_the_sft_distillations_teacher_samples(tmp_path):
    """distill_logits with distill's prompts, sampling, reward and select trains on distill's teacher data
    (one sampling of the teacher, not two) and depends on that stage; other settings sample again."""
    base = load_config(r1.R1Config, CONFIG, [f"output_dir={tmp_path}"])
    same = {k: v for k, v in base.distill.items() if k in ("prompts", "sampling", "reward", "select")}
    cfg = base.model_copy(update={"distill_logits": {**same, "train": {"steps": 3}}})
    plan = {s.name: s for s in r1.stages(cfg, tmp_path)}
    logits = plan["distill_logits"]
    assert logits.config.mode == "logits" and "distill" in logits.deps
    assert logits.config.teacher_data_from == str(tmp_path / "distill" / "run" / "teacher_data")
    other = base.model_copy(update={"distill_logits": {**same, "sampling": {**same.get("sampling", {}), "temperature": 0.3}}})
    logits = {s.name: s for s in r1.stages(other, tmp_path)}["distill_logits"]
    assert logits.config.teacher_data_from is None and "distill" not in logits.deps


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


ONE_STEP = ["eval.n=10", "r1_zero.train.steps=1", "reasoning_rl.train.steps=1", "final_rl.train.steps=1",
            "r1_zero.rollout.prompts_per_step=4", "r1_zero.rollout.group_size=2", "reasoning_rl.rollout.prompts_per_step=4",
            "reasoning_rl.rollout.group_size=2", "final_rl.rollout.prompts_per_step=4", "final_rl.rollout.group_size=2",
            "cold_start_sft.train.steps=1", "sft.train.steps=1", "distill.train.steps=1", "cold_start.n_ideal=40",
            "cold_start.n_zero_prompts=4", "cold_start.n_few_shot=4", "cold_start.zero_sampling.num_samples=2",
            "cold_start.few_shot_sampling.num_samples=2", "rejection_sampling.prompts.n_prompts=16",
            "rejection_sampling.sampling.num_samples=2", "rejection_sampling.select.threshold=0.0",
            "distill.prompts.n_prompts=16", "distill.sampling.num_samples=2"]
FIRST_THREE = ["r1_zero", "cold_start_data", "cold_start_sft"]


def _started(root, stage):
    return json.loads((root / stage / "manifest.json").read_text())["started"]


def test_changed_settings_rerun_the_stage_and_the_later_ones(tmp_path, capsys):
    import time

    def cfg(*extra):
        return load_config(r1.R1Config, CONFIG, ONE_STEP + [f"output_dir={tmp_path}", *extra])

    root = tmp_path / "r1-tiny"
    r1.run(cfg(), only=FIRST_THREE)
    first = {s: _started(root, s) for s in FIRST_THREE}
    assert json.loads((root / "r1_zero" / "manifest.json").read_text())["config"]["reward"]["options"] == \
        {"accuracy": {"strict": True}}  # R1-Zero reads the answer only from <answer>
    time.sleep(1.1)
    capsys.readouterr()
    r1.run(cfg(), only=FIRST_THREE)  # nothing changed: all skipped
    assert {s: _started(root, s) for s in FIRST_THREE} == first
    assert capsys.readouterr().out.count("done earlier, skipped") == 3

    r1.run(cfg("cold_start_sft.optim.lr=1e-3"), only=FIRST_THREE)  # the third stage's settings changed
    out = capsys.readouterr().out
    assert "settings changed: rerunning cold_start_sft (and later stages)" in out
    assert _started(root, "r1_zero") == first["r1_zero"] and _started(root, "cold_start_data") == first["cold_start_data"]
    assert _started(root, "cold_start_sft") != first["cold_start_sft"]

    time.sleep(1.1)
    r1.run(cfg("cold_start_sft.optim.lr=1e-3", "r1_zero.optim.lr=1e-5"), only=FIRST_THREE)  # the first stage changed
    out = capsys.readouterr().out
    assert "settings changed: rerunning r1_zero (and later stages)" in out
    assert all(_started(root, s) != first[s] for s in FIRST_THREE)  # its consumers were redone too


def test_empty_outputs_fail_in_their_stage(tmp_path):
    cfg = load_config(r1.R1Config, CONFIG, ONE_STEP + [f"output_dir={tmp_path}", "rejection_sampling.select.threshold=2.0"])
    with pytest.raises(r1.StageError, match=r"stage rejection_sampling kept no completion \(threshold 2.0.*"
                                            r"lower rejection_sampling.select.threshold"):
        r1.run(cfg, only=["r1_zero", "cold_start_data", "cold_start_sft", "reasoning_rl", "rejection_sampling"])
    empty = load_config(r1.R1Config, CONFIG, ["cold_start.n_ideal=0", "cold_start.n_zero_prompts=0",
                                              "cold_start.n_few_shot=0"])
    (tmp_path / "cs").mkdir()
    with pytest.raises(r1.StageError, match="stage cold_start_data produced no row"):
        r1.cold_start_data(empty, "unused", tmp_path / "cs")


def test_word_problem_pipeline_with_a_derived_student_and_general_chat(tmp_path):
    cfg = load_config(r1.R1Config, CONFIG, ONE_STEP + [
        f"output_dir={tmp_path}", "task=word_problems", 'prompt_template="Q: {question}"', "general_source=chat",
        "student_model=derive:every_other_layer", "eval.general_n=3", "eval.max_new_tokens=8",
        "cold_start_sft.data.max_length=256", "sft.data.max_length=256", "sft.data.on_overflow=drop",
        "r1_zero.data.max_prompt_length=256", "reasoning_rl.data.max_prompt_length=256",
        "final_rl.data.max_prompt_length=256", "rejection_sampling.prompts.max_prompt_length=256",
        "distill.prompts.max_prompt_length=256", "rejection_sampling.select.verify_steps=false",
        "distill.select.threshold=0.0", "cold_start.few_shot_exemplars=1", "distill.train.max_length=256"])
    out = r1.run(cfg)
    root = tmp_path / "r1-tiny"
    rows = {r["stage"]: r for r in out["rows"]}
    assert rows["distill"]["params_m"] < rows["final_rl"]["params_m"]  # every other layer of the teacher
    assert {"steps", "general", "accuracy"} <= set(rows["sft"])
    task = [json.loads(x) for x in (root / "task" / "train.jsonl").read_text().splitlines()]
    assert task[0]["prompt"].startswith("Q: ") and task[0]["question"] in task[0]["prompt"]
    mixed = [json.loads(x) for x in (root / "sft_data" / "mixed.jsonl").read_text().splitlines()]
    assert any(r["source"] == "general" and "?" in r["prompt"] for r in mixed)
    assert "Students vs the teacher" in (root / "report.md").read_text()


def test_second_language_and_a_preference_reward_model_in_final_rl(tmp_path):
    """Issue 19: a quarter of the problems in Chinese (their language column reaches the language reward and the
    report), a Bradley-Terry RM trained on the shipped chat pairs, and final RL scoring general prompts with it
    while the task rewards score only the problems."""
    long = [f"{s}.{k}=512" for s in ("r1_zero", "reasoning_rl", "final_rl") for k in ("data.max_prompt_length",)]
    cfg = load_config(r1.R1Config, CONFIG, ONE_STEP + long + [
        f"output_dir={tmp_path}", "task=word_problems", "general_source=chat", "eval.general_n=2",
        "eval.max_new_tokens=8", "eval.n=8", "second_language.language=zh", "second_language.share=0.5",
        'second_language.prompt_template="中文: {question}"', "cold_start_sft.data.max_length=512",
        "sft.data.max_length=512", "sft.data.on_overflow=drop", "rejection_sampling.prompts.max_prompt_length=512",
        "rejection_sampling.select.verify_steps=false", "distill.prompts.max_prompt_length=512",
        "distill.select.threshold=0.0", "distill.train.max_length=512", "cold_start.few_shot_exemplars=1",
        "cold_start.few_shot_max_prompt_length=1024",
        "preference_rm={train: {steps: 2, batch_size: 4, eval_every: 1000}, data: {max_length: 256}}",
        "final_rl_general_share=0.5", "final_rl.rollout.prompts_per_step=4"])
    out = r1.run(cfg, only=["final_rl"])
    root = tmp_path / "r1-tiny"
    rows = {r["stage"]: r for r in out["rows"]}
    assert "preference_rm" not in rows  # a reward model is not a policy: not evaluated
    assert {"language", "language_second", "correct"} <= set(rows["base"])
    assert len(rows["final_rl"]["correct"]) == 8 and rows["final_rl"]["vs"] == "sft"
    task = [json.loads(x) for x in (root / "task" / "eval.jsonl").read_text().splitlines()]
    assert [r["language"] for r in task] == ["en", "zh"] * 4 and task[1]["prompt"].startswith("中文: ")
    mixed = [json.loads(x) for x in (root / "task" / "final_rl.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in mixed} == {"task", "general"}
    manifest = json.loads((root / "final_rl" / "manifest.json").read_text())
    reward = manifest["config"]["reward"]
    assert reward["model"].endswith("preference_rm/final") and reward["when"]["model"] == {"kind": "general"}
    assert reward["when"]["accuracy"] == {"kind": "task"}
    assert (root / "preference_rm" / "final" / "config.json").is_file()
    assert "RL stages against their input" in (root / "report.md").read_text()


def test_a_stage_stopped_by_sigterm_stops_the_pipeline_unfinished(tmp_path, monkeypatch, capsys):
    """A recipe that caught SIGTERM saves a checkpoint and returns ``interrupted``: the pipeline must not take the
    stage for finished (found in a real run: the next stages ran on an unfinished model)."""
    cfg = load_config(r1.R1Config, CONFIG, ONE_STEP + [f"output_dir={tmp_path}"])
    real = r1.stages

    def patched(cfg, root):
        plan = real(cfg, root)
        plan[0].run = lambda d: (None, {"interrupted": True, "steps": 0})
        return plan
    monkeypatch.setattr(r1, "stages", patched)
    out = r1.run(cfg)
    assert out["interrupted"] == "r1_zero"
    manifest = json.loads((tmp_path / "r1-tiny" / "r1_zero" / "manifest.json").read_text())
    assert "finished" not in manifest and not (tmp_path / "r1-tiny" / "cold_start_data").exists()
    assert "rerun the same command to resume it" in capsys.readouterr().out


def test_a_second_pipeline_in_the_same_directory_is_refused(tmp_path):
    """Two pipelines writing one run directory corrupt it (seen in a real run): a live lock refuses the second,
    a stale one (its process gone) is taken over."""
    import subprocess
    import sys

    cfg = load_config(r1.R1Config, CONFIG, ONE_STEP + [f"output_dir={tmp_path}"])
    root = tmp_path / "r1-tiny"
    root.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (root / ".lock").write_text(str(other.pid))
        with pytest.raises(r1.StageError, match=f"another pipeline \\(pid {other.pid}\\) is running"):
            r1.run(cfg, only=["r1_zero"])
    finally:
        other.kill()
        other.wait()
    out = r1.run(cfg, only=["r1_zero"])  # its process is gone: the stale lock is taken over
    assert out["rows"][-1]["stage"] == "r1_zero" and not (root / ".lock").exists()
