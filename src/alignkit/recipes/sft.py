"""Supervised fine-tuning: next-token cross-entropy on response tokens (lecture, RLHF stage 1).

    alignkit sft -c configs/sft/arith_tiny.yaml optim.lr=3e-4
    accelerate launch --num_processes 2 -m alignkit.cli sft -c ...     (or torchrun; same code)

Each step: batch -> forward (response logprobs) -> loss -> backward / step -> log; every
``train.eval_every`` steps: held-out loss, token accuracy and (synthetic task) greedy answer accuracy.

Decisions, stated up front:
- The loss is normalized by the target tokens of the whole global batch (all micro-batches and all
  processes), so 1 x 8 micro-batches, 8 x 1 and 2 processes x 4 train the same (tests/invariance).
- ``train.packing`` packs the step's examples into rows of ``data.max_length`` tokens with position ids
  restarting per example (no cross-example attention); it changes no number, only the padding waste.
- ``model.path: bundled`` is the shipped tiny base model; ``tiny`` a fresh random one; else a local dir.
- A checkpoint (model, optimizer, scheduler, RNG, data position) is written atomically every
  ``output.save_every`` steps and on SIGTERM, after which the run exits 0; ``output.resume`` continues it.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignkit.config import ModelSection, OptimSection, OutputSection, Section, to_yaml
from alignkit.data.source import DataSourceFields
from alignkit.infra import PhaseTimer, RunLogger, plot_metrics, progress, seed_everything
from alignkit.infra.checkpoint import GracefulStop, latest_checkpoint, load_checkpoint, save_checkpoint
from alignkit.infra.rundir import prepare_run_dir
from alignkit.infra.train import (
    NonFiniteGuard,
    backward,
    build_optimizer,
    build_scheduler,
    eval_summary,
    optimizer_step,
    prepare_model,
    save_final,
    setup_accelerator,
)
from alignkit.losses import aggregate_loss, sft_loss

log = logging.getLogger("alignkit.sft")


class DataSection(DataSourceFields):
    train_file: str | None = Field(None, description="SFT data (jsonl/json/parquet/csv/datasets dir/Hub name); None = synthetic arithmetic")
    eval_file: str | None = Field(None, description="held-out SFT data; None = split eval_fraction off train_file")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="held-out fraction of train_file when no eval_file")
    n_train: int = Field(2000, gt=0, description="synthetic: training problems")
    n_eval: int = Field(50, gt=0, description="synthetic: held-out problems (distinct questions)")
    level: int = Field(2, ge=1, le=5, description="synthetic: arithmetic difficulty level (1-5)")
    style: Literal["answer_only", "r1"] = Field("r1", description="synthetic: completion style")
    max_length: int = Field(128, gt=0, description="max tokens per example (packing: per row)")
    on_overflow: Literal["error", "drop", "truncate"] = Field("error", description="an example over max_length")


class TrainSection(Section):
    steps: int = Field(200, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="examples per optimizer step (global, all processes)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per step and process")
    packing: bool = Field(True, description="pack examples into rows without cross-example attention")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")
    seed: int = Field(0, description="seed for data order and initialization")
    eval_every: int = Field(50, gt=0, description="evaluate every N steps (and at the end)")
    eval_generate: int = Field(50, ge=0, description="synthetic: held-out prompts answered greedily at evaluation")


class SFTConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy to fine-tune")
    data: DataSection = Field(default_factory=DataSection, description="training data")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="loop sizes")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="sft"), description="where results go")


def load_data(cfg: DataSection, seed: int):
    """-> (train records, eval records, eval problems or None). Files are validated at load time."""
    from alignkit.data import load_records, make_split, split_records, to_sft_records

    if cfg.train_file is None:
        train_p, eval_p = make_split(cfg.n_train, cfg.n_eval, level=cfg.level, seed=seed)
        return to_sft_records(train_p, style=cfg.style), to_sft_records(eval_p, style=cfg.style), eval_p
    records = load_records(cfg.train_file, "sft", split=cfg.split, columns=cfg.columns)
    if cfg.eval_file is not None:
        return records, load_records(cfg.eval_file, "sft", split=cfg.eval_split or cfg.split,
                                     columns=cfg.columns), None
    train, held_out = split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)
    return train, held_out, None


def collate(examples, tokenizer, *, packing: bool, max_length: int) -> dict:
    """Right-padded [B, T] batch, or packed [R, L] rows with restarting position ids."""
    from alignkit.data import pad_batch
    from alignkit.data.packing import pack_batch

    if packing:
        return pack_batch(examples, max_length=max_length, pad_token_id=tokenizer.pad_token_id)
    batch = pad_batch(examples, pad_token_id=tokenizer.pad_token_id, side="right")
    batch["response_mask"][:, 0] = 0  # the first token of a sequence is never a target
    return batch


def batch_loss(model, batch: dict, num_tokens: float) -> torch.Tensor:
    """Sum of target-token NLL over the batch / ``num_tokens`` (the global batch's target count)."""
    from alignkit.logprobs import sequence_logprobs

    logprobs = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                 position_ids=batch.get("position_ids"))
    per_token, _ = sft_loss(logprobs, batch["response_mask"])
    return aggregate_loss(per_token, batch["response_mask"], mode="token_mean", num_tokens=num_tokens)


@torch.no_grad()
def evaluate(model, tokenizer, examples, problems, *, n_generate: int, batch_size: int = 64) -> dict:
    """Held-out token-mean loss and token accuracy (argmax = target); greedy answer accuracy and format
    compliance on synthetic problems, scored with the same reward functions RL uses."""
    model.eval()
    nll, correct, count = 0.0, 0, 0
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i:i + batch_size], tokenizer, packing=False, max_length=0)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        target, mask = b["input_ids"][:, 1:], b["response_mask"][:, 1:].bool()
        tok_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        nll += tok_nll[mask].sum().item()
        correct += int((logits.argmax(-1) == target)[mask].sum())
        count += int(mask.sum())
    out = {"eval/loss": nll / max(count, 1), "eval/token_accuracy": correct / max(count, 1)}
    if problems and n_generate:
        out.update(answer_accuracy(model, tokenizer, problems[:n_generate]))
    model.train()
    return out


def answer_accuracy(model, tokenizer, problems, *, max_new_tokens: int = 64) -> dict:
    """Greedy answers to held-out problems -> accuracy and strict-format share."""
    from alignkit.data import render_prompt
    from alignkit.rewards import accuracy_reward, format_reward
    from alignkit.rollout import generate

    prompts = [render_prompt(tokenizer, p.question) for p in problems]
    out = generate(model, tokenizer, prompts, num_samples=1, max_new_tokens=max_new_tokens, temperature=0.0)
    texts = out.completions
    acc = sum(accuracy_reward(t, answer=p.answer) for t, p in zip(texts, problems)) / len(problems)
    fmt = sum(format_reward(t) for t in texts) / len(problems)
    return {"eval/answer_accuracy": acc, "eval/format": fmt}


def run(cfg: SFTConfig) -> dict:
    """Train per ``cfg``; returns a summary. Writes under <output.dir>/<output.name>/: config.yaml,
    metrics.jsonl, tensorboard/, checkpoints/, final/ (plain transformers), curves.png, summary.json."""
    from alignkit.data import render_many
    from alignkit.models import load_policy

    acc = setup_accelerator(cfg.train.precision, dtype=cfg.model.dtype)
    world, rank = acc.num_processes, acc.process_index
    per_step = world * cfg.train.grad_accum
    if cfg.train.batch_size % per_step:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} must divide by processes x grad_accum = "
                         f"{world} x {cfg.train.grad_accum}; e.g. batch_size={per_step * max(1, cfg.train.batch_size // per_step)}")
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.output.dir) / cfg.output.name
    prepare_run_dir(run_dir, resume=cfg.output.resume, overwrite=cfg.output.overwrite, is_main=acc.is_main_process)
    model, tokenizer = load_policy(cfg.model)
    model = prepare_model(model, cfg.model)
    train_records, eval_records, eval_problems = load_data(cfg.data, cfg.train.seed)
    kw = dict(max_length=cfg.data.max_length, on_overflow=cfg.data.on_overflow)
    train, dropped = render_many(tokenizer, train_records, **kw)
    held_out, _ = render_many(tokenizer, eval_records, **kw)
    if not train:
        raise ValueError("no training examples left after rendering (all dropped?)")
    if len(train) < cfg.train.batch_size:
        log.warning("only %d training examples for batches of %d: examples repeat within a step", len(train),
                    cfg.train.batch_size)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)

    gen = torch.Generator().manual_seed(cfg.train.seed)
    start_step, order, cursor = 0, torch.randperm(len(train), generator=gen).tolist(), 0
    ckpt = latest_checkpoint(run_dir) if cfg.output.resume else None
    if ckpt is not None:
        state, tensors = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, optim=cfg.optim)
        start_step, order, cursor = state["step"], state["order"], state["cursor"]
        gen.set_state(tensors["data_generator"])
    model, optimizer = acc.prepare(model, optimizer)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    logger = RunLogger(run_dir, tensorboard=cfg.output.tensorboard, enabled=acc.is_main_process,
                       resume_step=start_step if ckpt else None,
                       wandb_project="alignkit" if cfg.output.wandb else None)
    guard, timer = NonFiniteGuard(cfg.output.max_bad_steps, run_dir=run_dir), PhaseTimer()
    plain = acc.unwrap_model(model)
    eval_kw = dict(n_generate=cfg.train.eval_generate)
    start_metrics = evaluate(plain, tokenizer, held_out, eval_problems, **eval_kw)
    if ckpt is None:
        logger.log(0, {**start_metrics, "data/dropped": dropped})

    def checkpoint(step):
        if acc.is_main_process:
            save_checkpoint(run_dir, step, model=acc.unwrap_model(model), optimizer=optimizer, scheduler=scheduler,
                            state={"order": order, "cursor": cursor}, tensors={"data_generator": gen.get_state()},
                            keep_last=cfg.output.keep_last, guards=[guard])
        acc.wait_for_everyone()

    t0, metrics, step, interrupted = time.perf_counter(), dict(start_metrics), start_step, False
    bar = progress(range(start_step, cfg.train.steps), desc="sft", unit="step", disable=not acc.is_main_process,
                   initial=start_step, total=cfg.train.steps)
    with GracefulStop() as stop:
        for step in bar:
            with timer("data"):  # every batch is full: it runs on into the next shuffled epoch
                idx = []
                while len(idx) < cfg.train.batch_size:
                    if cursor >= len(order):
                        order, cursor = torch.randperm(len(train), generator=gen).tolist(), 0
                    take = order[cursor:cursor + cfg.train.batch_size - len(idx)]
                    cursor += len(take)
                    idx += take
                examples = [train[i] for i in idx]
                num_tokens = sum(sum(e.response_mask[1:]) for e in examples)  # global target tokens
                local = examples[rank::world]
                micro = len(local) // cfg.train.grad_accum
            with timer("forward_backward"):
                loss_sum = 0.0
                for m in range(cfg.train.grad_accum):
                    batch = collate(local[m * micro:(m + 1) * micro], tokenizer, packing=cfg.train.packing,
                                    max_length=cfg.data.max_length)
                    sync = acc.no_sync(model) if m < cfg.train.grad_accum - 1 else nullcontext()
                    with sync:
                        loss = batch_loss(model, {k: v.to(acc.device) for k, v in batch.items()}, num_tokens)
                        backward(acc, loss)
                    loss_sum += loss.item()
                loss_total = float(acc.reduce(torch.tensor(loss_sum, device=acc.device), reduction="sum"))
            with timer("update"):
                grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=guard, loss=loss_total,
                                                    max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            metrics = {"train/loss": loss_total, "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                       "train/tokens": num_tokens, "train/skipped": int(not applied)}
            done = step + 1
            if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                with timer("eval"):
                    metrics.update(evaluate(plain, tokenizer, held_out, eval_problems, **eval_kw))
            metrics.update(timer.summary())
            logger.log(done, metrics)
            bar.set_postfix(loss=f"{loss_total:.3f}", **({"acc": f"{metrics['eval/answer_accuracy']:.2f}"}
                                                         if "eval/answer_accuracy" in metrics else {}))
            interrupted = stop.requested
            if interrupted or (cfg.output.save_every and done % cfg.output.save_every == 0):
                checkpoint(done)
            if interrupted:
                break
    logger.close()
    summary = eval_summary(start_metrics, metrics,
               steps=step + 1, interrupted=interrupted, non_finite_steps=guard.total,
               wall_s=time.perf_counter() - t0, run_dir=str(run_dir))
    if acc.is_main_process and not interrupted:
        save_final(acc.unwrap_model(model), tokenizer, run_dir)
        plot_metrics(logger.path, run_dir / "curves.png", ["train/loss", "eval/loss", "eval/answer_accuracy"],
                     title=cfg.output.name)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary

