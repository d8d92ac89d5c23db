"""On-policy distillation (GKD, Agarwal et al. 2024; reverse KL: MiniLLM, Gu et al. 2024): ``alignkit distill
mode=on_policy``, the student's training loop of :mod:`alignkit.recipes.distill` in that mode.

One step, as named and timed phases:
  generate  with probability ``on_policy.lmbda`` (a seeded coin per step): one completion from the STUDENT for
            each of ``on_policy.prompts_per_step`` prompts (no grad); otherwise a batch of the teacher's
            verified sequences (the data mode sft trains on; sampled only when lmbda < 1)
  update    teacher (no grad) and student forwards over prompt + completion, per-token
            ``generalized_jsd_loss(beta=on_policy.beta)`` on the completion tokens at ``train.temperature``,
            token-mean over the whole batch (all processes), one optimizer step

Logged: ``train/jsd`` (the loss), ``train/kl`` (forward KL(teacher || student) on the same tokens, as the
logits mode logs it: the learning signal comparable across beta), ``train/on_policy`` (1 = student samples),
``completion/length``. The same tokenizer is required. Built on the shared lifecycle (resume, SIGTERM,
non-finite guard, time limit, final save of the student).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from alignkit.config import OutputSection as RunOutputSection
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.run import Run
from alignkit.recipes import rejection_sampling
from alignkit.recipes.distill import DistillConfig, LogitsRunConfig

log = logging.getLogger(__name__)


def check_same_tokenizer(teacher, tok_teacher, student, tok_student) -> None:
    """One tokenizer (same vocabulary, same logits width) for teacher and student, or a one-line error."""
    width_t = teacher.get_output_embeddings().weight.shape[0]
    width_s = student.get_output_embeddings().weight.shape[0]
    if tok_teacher.get_vocab() != tok_student.get_vocab() or width_t != width_s:
        raise ValueError(f"mode=on_policy needs the teacher's tokenizer for the student: the teacher's vocabulary has "
                         f"{len(tok_teacher)} tokens (logits {width_t}), the student's {len(tok_student)} (logits "
                         f"{width_s}); use mode=sft")


def next_token_logits(model, input_ids, attention_mask, keep: int) -> torch.Tensor:
    """[B, keep, V]: the logits predicting the last ``keep`` tokens of each row (positions from the mask, so
    left-padded prompts and right-padded completions give the same numbers as each row alone)."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                 logits_to_keep=keep + 1).logits[:, :-1]


def train_student_on_policy(cfg: DistillConfig, data_file: str | None, out_dir: Path) -> dict:
    """GKD: the student's samples (share lmbda of the steps) or the teacher's verified sequences (``data_file``,
    the rest), generalized JSD to the teacher per completion token. Returns the lifecycle's summary."""
    from alignkit.data import load_records, pad_batch, render_many, render_prompt
    from alignkit.data.prompts import PromptSampler
    from alignkit.infra.train import backward, build_optimizer, build_scheduler, global_sum, optimizer_step
    from alignkit.losses import aggregate_loss, forward_kl_distill_loss, generalized_jsd_loss
    from alignkit.models import load_policy
    from alignkit.rollout import generate

    op = cfg.on_policy
    rcfg = LogitsRunConfig(model=cfg.student, optim=cfg.optim, train=cfg.train, output=RunOutputSection(
        dir=str(out_dir), name="student", tensorboard=cfg.output.tensorboard, resume=cfg.output.resume,
        save_every=cfg.output.save_every))
    life = Run(rcfg, desc="distill-on-policy", seed=cfg.train.seed)
    rank, world, device = life.rank, life.world, life.acc.device
    life.require_divisible(op.prompts_per_step, "on_policy.prompts_per_step", "processes", world)
    teacher, tok_t = load_policy(cfg.teacher)
    student, tokenizer = load_policy(cfg.student)
    check_same_tokenizer(teacher, tok_t, student, tokenizer)
    teacher = teacher.to(device).eval().requires_grad_(False)
    pool, dropped = [], 0
    for rec in rejection_sampling.load_prompt_records(cfg.prompts):
        ids = render_prompt(tokenizer, rec["prompt"], max_length=cfg.prompts.max_prompt_length, on_overflow="drop")
        if ids is None:
            dropped += 1
        else:
            pool.append((ids, rec["prompt"], rec))
    sampler = PromptSampler({0: pool}, cfg.train.seed)  # an empty pool: its draw names the fields to check
    examples = render_many(tokenizer, load_records(data_file, "sft"), max_length=cfg.train.max_length,
                           on_overflow="drop")[0] if data_file and op.lmbda < 1 else []
    optimizer = build_optimizer(student.train(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    student, optimizer = life.setup(student, optimizer, scheduler, objects={"sampler": sampler})
    life.begin(first_row={"data/dropped_prompts": dropped})
    with GracefulStop() as stop:
        for step in life.steps():
            coin = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)  # same on every process
            on_policy = not examples or torch.rand((), generator=coin).item() < op.lmbda
            with life.timer("generate"):
                if on_policy:
                    prompts = sampler.draw(op.prompts_per_step)[rank::world]
                    out = generate(life.plain, tokenizer, [p[0] for p in prompts], max_new_tokens=op.max_new_tokens,
                                   temperature=op.temperature, seed=cfg.train.seed * 100003 + step * 97 + rank)
                    ids = torch.cat([out.prompt_ids, out.completion_ids], dim=1).to(device)
                    attn = torch.cat([out.prompt_mask, out.response_mask], dim=1).to(device)
                    target = out.response_mask.to(device)
                else:
                    idx = torch.randint(len(examples), (op.prompts_per_step,), generator=coin).tolist()[rank::world]
                    b = pad_batch([examples[i] for i in idx], pad_token_id=tokenizer.pad_token_id)
                    ids, attn = b["input_ids"].to(device), b["attention_mask"].to(device)
                    target = b["response_mask"][:, 1:].to(device)  # logits at t-1 predict token t
            with life.timer("update"):
                keep = target.shape[1]
                with torch.no_grad():
                    t_logits = next_token_logits(teacher, ids, attn, keep)
                s_logits = next_token_logits(student, ids, attn, keep)
                per_token, _ = generalized_jsd_loss(s_logits, t_logits, target, beta=op.beta,
                                                    temperature=cfg.train.temperature)
                n_tok = max(global_sum(life.acc, int(target.sum())), 1)
                loss = aggregate_loss(per_token, target, mode="token_mean", num_tokens=n_tok)
                backward(life.acc, loss)
                grad_norm, applied = optimizer_step(student, optimizer, scheduler, guard=life.guard, loss=loss.item(),
                                                    max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
                with torch.no_grad():
                    kl, _ = forward_kl_distill_loss(s_logits.detach(), t_logits, target, temperature=cfg.train.temperature)
            metrics = {"train/jsd": global_sum(life.acc, loss.item()),
                       "train/kl": global_sum(life.acc, float(kl.sum()) / n_tok), "train/on_policy": int(on_policy),
                       "completion/length": global_sum(life.acc, int(target.sum())) / op.prompts_per_step,
                       "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                       "train/skipped": int(not applied)}
            if life.end_step(metrics, stop, postfix={"kl": "train/kl", "jsd": "train/jsd"}):
                break
    return life.finish(tokenizer=tokenizer, plots=["train/kl", "train/jsd"])
