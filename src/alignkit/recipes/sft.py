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

import logging
from typing import Literal

import torch
from pydantic import Field

from alignkit.config import ModelSection, OptimSection, OutputSection, Section
from alignkit.data.order import ShuffledOrder
from alignkit.data.source import DataSourceFields
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.run import Run, no_sync_unless_last, time_limit_field
from alignkit.infra.train import (
    backward,
    build_optimizer,
    build_scheduler,
    optimizer_step,
    prepare_model,
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
    time_limit_s: float | None = time_limit_field()


class SFTConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy to fine-tune")
    data: DataSection = Field(default_factory=DataSection, description="training data")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="loop sizes")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="sft"), description="where results go")


def load_data(cfg: DataSection, seed: int, train_dataset=None, eval_dataset=None):
    """-> (train records, eval records, eval problems or None). Files (or the datasets a Python caller
    passes) are validated at load time."""
    from alignkit.data import load_records, make_split, split_records, to_sft_records
    from alignkit.data.objects import as_records

    if train_dataset is not None:
        records = as_records(train_dataset, "sft")
        if eval_dataset is not None:
            return records, as_records(eval_dataset, "sft", name="eval_dataset"), None
        train, held_out = split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)
        return train, held_out, None
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
    """Held-out token-mean loss and token accuracy (argmax = target; left out when nothing is held out, e.g.
    data.eval_fraction 0); greedy answer accuracy and format compliance on synthetic problems, scored with the
    same reward functions RL uses."""
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
    out = {"eval/loss": nll / count, "eval/token_accuracy": correct / count} if count else {}  # none held out
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


def run(cfg: SFTConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
        callbacks=None) -> dict:
    """Train per ``cfg``; returns a summary. Writes under <output.dir>/<output.name>/: config.yaml,
    metrics.jsonl, tensorboard/, checkpoints/, final/ (plain transformers), curves.png, summary.json.

    Python API (docs/python_api.md): ``model`` + ``tokenizer`` (a transformers causal LM) replace
    ``model.path``; ``train_dataset`` / ``eval_dataset`` (a datasets.Dataset or a list of SFT rows) replace
    ``data.train_file`` / ``data.eval_file``; ``callbacks``: ``fn(step, metrics)`` for every logged row."""
    from alignkit.data import render_many
    from alignkit.models import load_policy

    life = Run(cfg, desc="sft", seed=cfg.train.seed, callbacks=callbacks)
    world, rank, B = life.world, life.rank, cfg.train.batch_size
    life.require_divisible(B, "train.batch_size", "processes x grad_accum", world, cfg.train.grad_accum)
    if model is None:
        model, tokenizer = load_policy(cfg.model)
    model = prepare_model(model, cfg.model)
    train_records, eval_records, eval_problems = load_data(cfg.data, cfg.train.seed, train_dataset, eval_dataset)
    kw = dict(max_length=cfg.data.max_length, on_overflow=cfg.data.on_overflow)
    train, dropped = render_many(tokenizer, train_records, **kw)
    held_out, _ = render_many(tokenizer, eval_records, **kw)
    if not train:
        raise ValueError("no training examples left after rendering (all dropped?)")
    if len(train) < B:
        log.warning("only %d training examples for batches of %d: examples repeat within a step", len(train), B)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    order = ShuffledOrder(len(train), cfg.train.seed)
    model, optimizer = life.setup(model, optimizer, scheduler, objects={"data": order})
    life.begin(lambda step: evaluate(life.plain, tokenizer, held_out, eval_problems,
                                     n_generate=cfg.train.eval_generate), {"data/dropped": dropped})

    with GracefulStop() as stop:
        for step in life.steps():
            with life.timer("data"):  # every batch is full: it runs on into the next shuffled epoch
                examples = [train[i] for i in order.fill(B)]
                num_tokens = sum(sum(e.response_mask[1:]) for e in examples)  # global target tokens
                local = examples[rank::world]
                micro = len(local) // cfg.train.grad_accum
            with life.timer("forward_backward"):
                loss_sum = 0.0
                for m in range(cfg.train.grad_accum):
                    batch = collate(local[m * micro:(m + 1) * micro], tokenizer, packing=cfg.train.packing,
                                    max_length=cfg.data.max_length)
                    with no_sync_unless_last(life.acc, model, m, cfg.train.grad_accum):
                        loss = batch_loss(model, {k: v.to(life.acc.device) for k, v in batch.items()}, num_tokens)
                        backward(life.acc, loss)
                    loss_sum += loss.item()
                loss_total = float(life.acc.reduce(torch.tensor(loss_sum, device=life.acc.device), reduction="sum"))
            with life.timer("update"):
                grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=life.guard, loss=loss_total,
                                                    max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            metrics = {"train/loss": loss_total, "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                       "train/tokens": num_tokens, "train/skipped": int(not applied)}
            if life.end_step(metrics, stop, postfix={"loss": "train/loss", "acc": "eval/answer_accuracy"}):
                break
    return life.finish(tokenizer=tokenizer, plots=["train/loss", "eval/loss", "eval/answer_accuracy"])
