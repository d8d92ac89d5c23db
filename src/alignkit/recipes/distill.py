"""Distillation into a smaller student (lecture section 4).

    alignkit distill -c configs/distill/arith_tiny.yaml teacher.path=runs/r1/final_rl/final

mode "sft" (the lecture's definition, DeepSeek-R1's distilled models): the teacher samples N completions per
prompt, the verified ones are kept (rejection sampling) and the student is fine-tuned on them.
mode "logits": the student matches the teacher's full next-token distribution on the same verified
sequences, minimizing the forward KL(teacher || student) per response token (same tokenizer required).
mode "on_policy" (GKD, Agarwal et al. 2024): the student samples its own completions and matches the
teacher's distribution on them with the generalized JSD (``on_policy.beta``: 0 forward KL, 1 reverse KL);
``on_policy.lmbda`` < 1 trains that share of steps on the teacher's verified sequences instead (same
tokenizer required; the loop is ``alignkit.recipes.distill_on_policy``).

This recipe composes two others: ``rejection_sampling`` (the teacher's verified data) and, in "sft" mode,
``sft`` (the student's training), because that is what distillation is here; docs/architecture.md notes it.
Outputs go to <output.dir>/<output.name>/: ``teacher_data/`` (data.jsonl, stats.json), ``student/`` (the SFT
run, or the logit / on-policy distillation run with metrics.jsonl and final/), ``summary.json``; on_policy
with lmbda = 1 samples no teacher data. All student runs are
built on the shared lifecycle (``alignkit.infra.run``): resume, SIGTERM, non-finite guard, time limit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import Field

from alignkit.config import ModelSection, OptimSection, RewardSection, Section
from alignkit.config import OutputSection as RunOutputSection
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.run import Run, time_limit_field
from alignkit.infra.rundir import prepare_run_dir
from alignkit.recipes import rejection_sampling, sft

log = logging.getLogger(__name__)


class StudentTrainSection(Section):
    steps: int = Field(300, gt=0, description="student optimizer steps")
    batch_size: int = Field(32, gt=0, description="examples per step")
    max_length: int = Field(96, gt=0, description="max tokens per example")
    temperature: float = Field(1.0, gt=0, description="logits mode: distillation temperature (loss scaled by T^2)")
    eval_every: int = Field(100, gt=0, description="held-out evaluation every N steps")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="sft mode: share of the teacher data held out for "
                                 "the student's eval loss (0 = none)")
    seed: int = Field(0, description="seed")
    time_limit_s: float | None = time_limit_field()
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="logits mode: mixed precision on GPUs")


class OnPolicySection(Section):
    beta: float = Field(0.5, ge=0, le=1, description="GKD generalized JSD: 0 = forward KL(teacher||student), "
                        "1 = reverse KL(student||teacher), 0.5 = symmetric JSD")
    lmbda: float = Field(1.0, ge=0, le=1, description="share of steps on the student's own samples (a seeded "
                         "coin per step); the rest on the teacher's verified sequences (1 = fully on-policy, "
                         "no teacher data is sampled)")
    prompts_per_step: int = Field(16, gt=0, description="prompts per step (one student sample each; all processes "
                                  "together); also the batch of a teacher-data step")
    max_new_tokens: int = Field(48, gt=0, description="longest student completion")
    temperature: float = Field(1.0, gt=0, description="student sampling temperature (the loss uses train.temperature)")


class OutputSection(Section):
    dir: str = Field("runs", description="parent directory")
    name: str = Field("distill", description="outputs go to <dir>/<name>/")
    tensorboard: bool = Field(True, description="write TensorBoard events")
    resume: bool = Field(False, description="continue an interrupted run: keep its finished teacher data (same "
                         "settings), resume the student's training from its newest checkpoint")
    save_every: int = Field(0, ge=0, description="student checkpoint every N steps (0 = only at the end / on SIGTERM)")
    overwrite: bool = Field(False, description="delete an earlier run in <dir>/<name>/ and start again")


class LogitsRunConfig(Section):
    """The logit-distillation student run as the lifecycle reads it (built from a :class:`DistillConfig`)."""

    model: ModelSection
    optim: OptimSection
    train: StudentTrainSection
    output: RunOutputSection


class DistillConfig(Section):
    mode: Literal["sft", "logits", "on_policy"] = Field(
        "sft", description="SFT on verified teacher samples, forward-KL to its logits on them, or on_policy: "
        "the generalized JSD to the teacher on the student's own samples (GKD)")
    teacher: ModelSection = Field(default_factory=ModelSection, description="the teacher (a trained model directory)")
    student: ModelSection = Field(default_factory=lambda: ModelSection(path="bundled-student"),
                                  description="the student: the shipped small base model, or a model directory")
    prompts: rejection_sampling.PromptsSection = Field(default_factory=rejection_sampling.PromptsSection,
                                                       description="prompts the teacher answers")
    sampling: rejection_sampling.SamplingSection = Field(
        default_factory=lambda: rejection_sampling.SamplingSection(num_samples=4), description="teacher sampling")
    reward: RewardSection = Field(default_factory=lambda: RewardSection(weights={"accuracy": 0.5, "format": 0.5}),
                                  description="verifiers of the teacher's samples")
    select: rejection_sampling.SelectSection = Field(
        default_factory=lambda: rejection_sampling.SelectSection(max_per_prompt=1), description="what is kept")
    teacher_data_from: str | None = Field(None, description="another distill run's finished teacher_data "
                                          "directory, sampled with this run's teacher, prompts, sampling, reward "
                                          "and select settings: reused instead of sampling the teacher again "
                                          "(other settings there are an error)")
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=2e-3), description="student optimizer")
    train: StudentTrainSection = Field(default_factory=StudentTrainSection, description="student training")
    on_policy: OnPolicySection = Field(default_factory=OnPolicySection, description="mode on_policy: GKD")
    output: OutputSection = Field(default_factory=OutputSection, description="where results go")


def teacher_data(cfg: DistillConfig, out_dir: Path) -> dict:
    """The teacher's verified completions (rejection sampling) -> stats with the data path. On resume, the
    interrupted run's finished teacher data is reused if it was sampled with the same settings."""
    rs = rejection_sampling.RejectionSamplingConfig(
        model=cfg.teacher, prompts=cfg.prompts, sampling=cfg.sampling, reward=cfg.reward, select=cfg.select,
        output=rejection_sampling.OutputSection(dir=str(out_dir), name="teacher_data", overwrite=cfg.output.resume))
    done = out_dir / "teacher_data"
    settings = {k: v for k, v in rs.model_dump(mode="json").items() if k != "output"}
    if cfg.teacher_data_from is not None:
        return _reuse_teacher_data(Path(cfg.teacher_data_from), settings)
    if cfg.output.resume and (done / "stats.json").is_file():
        earlier = yaml.safe_load((done / "config.yaml").read_text()) if (done / "config.yaml").is_file() else {}
        if {k: v for k, v in (earlier or {}).items() if k != "output"} == settings:
            return json.loads((done / "stats.json").read_text())
        log.warning("output.resume: the teacher-data settings changed; sampling the teacher data again")
    stats = rejection_sampling.run(rs)
    if stats["kept"] == 0:
        raise RuntimeError(f"the teacher produced no verified completion on {stats['prompts']} prompts "
                           f"(threshold {cfg.select.threshold}); nothing to distill")
    return stats


def _reuse_teacher_data(src: Path, settings: dict) -> dict:
    """``teacher_data_from``: the stats of a finished teacher_data directory sampled with ``settings``."""
    if not (src / "stats.json").is_file() or not (src / "config.yaml").is_file():
        raise FileNotFoundError(f"teacher_data_from: {src} holds no finished teacher data (stats.json and "
                                f"config.yaml); run the distillation that writes it first")
    earlier = yaml.safe_load((src / "config.yaml").read_text()) or {}
    differ = sorted(k for k in set(settings) | set(earlier) if k != "output" and earlier.get(k) != settings.get(k))
    if differ:
        raise ValueError(f"teacher_data_from: {src} was sampled with other {', '.join(differ)} settings than this "
                         f"run's; make them equal or unset teacher_data_from to sample again")
    stats = json.loads((src / "stats.json").read_text())
    if not stats.get("kept"):
        raise RuntimeError(f"teacher_data_from: {src} kept no verified completion; nothing to distill")
    log.info("teacher data reused from %s (%d rows)", src, stats["kept"])
    return stats


def train_student_sft(cfg: DistillConfig, data_file: str, out_dir: Path) -> dict:
    """Student SFT on the teacher's verified data (eval on the seeded held-out arithmetic set)."""
    scfg = sft.SFTConfig(
        model=cfg.student, optim=cfg.optim,
        data=sft.DataSection(train_file=data_file, eval_fraction=cfg.train.eval_fraction, max_length=cfg.train.max_length,
                             on_overflow="drop"),
        train=sft.TrainSection(steps=cfg.train.steps, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                               eval_every=cfg.train.eval_every, time_limit_s=cfg.train.time_limit_s,
                               precision=cfg.train.precision),
        output=sft.OutputSection(dir=str(out_dir), name="student", tensorboard=cfg.output.tensorboard,
                                 resume=cfg.output.resume, save_every=cfg.output.save_every))
    return sft.run(scfg)


def train_student_logits(cfg: DistillConfig, data_file: str, out_dir: Path) -> dict:
    """Forward KL(teacher || student) on the response tokens of the teacher's verified sequences; every
    process draws the same seeded batch of each step (a pure function of seed and step: resumable) and
    trains on its share of it."""
    from alignkit.data import load_records, pad_batch, render_many
    from alignkit.infra.train import backward, build_optimizer, build_scheduler, global_sum, optimizer_step
    from alignkit.losses import aggregate_loss, forward_kl_distill_loss
    from alignkit.models import load_policy

    rcfg = LogitsRunConfig(model=cfg.student, optim=cfg.optim, train=cfg.train, output=RunOutputSection(
        dir=str(out_dir), name="student", tensorboard=cfg.output.tensorboard, resume=cfg.output.resume,
        save_every=cfg.output.save_every))
    life = Run(rcfg, desc="distill", seed=cfg.train.seed)
    teacher, tok_t = load_policy(cfg.teacher)
    student, tokenizer = load_policy(cfg.student)
    if tok_t.get_vocab() != tokenizer.get_vocab():
        raise ValueError("logit distillation needs the teacher's tokenizer for the student; use mode=sft")
    teacher = teacher.to(life.acc.device).eval().requires_grad_(False)
    examples, _ = render_many(tokenizer, load_records(data_file, "sft"), max_length=cfg.train.max_length,
                              on_overflow="drop")
    optimizer = build_optimizer(student.train(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    student, optimizer = life.setup(student, optimizer, scheduler)
    life.begin()
    with GracefulStop() as stop:
        for step in life.steps():
            gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
            idx = torch.randint(len(examples), (cfg.train.batch_size,), generator=gen).tolist()[life.rank::life.world]
            b = {k: v.to(life.acc.device) for k, v in pad_batch([examples[i] for i in idx],
                                                                   pad_token_id=tokenizer.pad_token_id).items()}
            target = b["response_mask"][:, 1:]  # logits at t-1 predict token t
            with torch.no_grad():
                t_logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            s_logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            per_token, _ = forward_kl_distill_loss(s_logits, t_logits, target, temperature=cfg.train.temperature)
            loss = aggregate_loss(per_token, target, mode="token_mean",
                                  num_tokens=max(global_sum(life.acc, int(target.sum())), 1))
            backward(life.acc, loss)
            grad_norm, applied = optimizer_step(student, optimizer, scheduler, guard=life.guard, loss=loss.item(),
                                                max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            metrics = {"train/kl": global_sum(life.acc, loss.item()), "train/grad_norm": grad_norm,
                       "train/lr": scheduler.get_last_lr()[0], "train/skipped": int(not applied)}
            if life.end_step(metrics, stop, postfix={"kl": "train/kl"}):
                break
    return life.finish(tokenizer=tokenizer, plots=["train/kl"])


def run(cfg: DistillConfig) -> dict:
    """Teacher data, then student training; evaluates teacher and student on the held-out set."""
    from alignkit.evaluation import arithmetic_eval_set, evaluate_model
    from alignkit.models import load_policy

    out_dir = Path(cfg.output.dir) / cfg.output.name
    prepare_run_dir(out_dir, resume=cfg.output.resume, overwrite=cfg.output.overwrite)
    if cfg.mode == "on_policy":
        from alignkit.recipes.distill_on_policy import train_student_on_policy

        stats = teacher_data(cfg, out_dir) if cfg.on_policy.lmbda < 1 else None
        trained = train_student_on_policy(cfg, stats and stats["data"], out_dir)
    else:
        stats = teacher_data(cfg, out_dir)
        trained = (train_student_sft if cfg.mode == "sft" else train_student_logits)(cfg, stats["data"], out_dir)
    held_out = arithmetic_eval_set(cfg.prompts.levels) if cfg.prompts.train_file is None else []
    summary = {"mode": cfg.mode, "teacher_data": stats, "student_run": trained.get("run_dir"),
               "interrupted": bool(trained.get("interrupted"))}
    if summary["interrupted"]:  # SIGTERM: the student's checkpoint is saved, no final model; resume continues it
        return summary
    if held_out:
        final = ModelSection(path=str(out_dir / "student" / "final"))
        summary["student_eval"] = evaluate_model(*load_policy(final), held_out)
        summary["teacher_eval"] = evaluate_model(*load_policy(cfg.teacher), held_out)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
