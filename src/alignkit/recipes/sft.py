"""Supervised fine-tuning: next-token cross-entropy on response tokens (lecture, RLHF stage 1).

    alignkit sft -c configs/sft/arith_tiny.yaml optim.lr=3e-4

Phases per step: batch -> forward (response logprobs) -> loss -> backward/step -> log; every
``train.eval_every`` steps: held-out loss, token accuracy and greedy answer accuracy.

Deviations and decisions, stated up front:
- The loss is normalized by the response tokens of the whole accumulated batch (not per micro-batch),
  so 1 x 8 micro-batches trains exactly like 8 x 1.
- With ``model.path: tiny`` a fresh tiny model is built locally (no download); otherwise any local
  ``save_pretrained`` directory of a causal LM is loaded.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from alignkit.config import Section, to_yaml
from alignkit.infra import PhaseTimer, RunLogger, plot_metrics, seed_everything
from alignkit.losses import aggregate_loss, sft_loss


class ModelSection(Section):
    path: str = Field("tiny", description="'tiny' builds the tiny model locally; else a local model directory")
    arch: Literal["llama", "qwen2"] = Field("llama", description="architecture of a freshly built tiny model")
    hidden_size: int = Field(64, gt=0, description="tiny model: hidden size")
    num_layers: int = Field(2, gt=0, description="tiny model: transformer layers")
    num_heads: int = Field(4, gt=0, description="tiny model: attention heads")


class DataSection(Section):
    train_file: str | None = Field(None, description="SFT data file (jsonl/json/parquet/csv/datasets dir); None = synthetic arithmetic")
    n_train: int = Field(2000, gt=0, description="synthetic: training problems")
    n_eval: int = Field(100, gt=0, description="synthetic: held-out problems")
    level: int = Field(1, ge=1, description="synthetic: arithmetic difficulty level")
    style: Literal["answer_only", "r1"] = Field("r1", description="synthetic: completion style")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="files: held-out fraction")
    max_length: int = Field(128, gt=0, description="max tokens per example; longer ones are an error")


class OptimSection(Section):
    lr: float = Field(3e-3, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps")
    schedule: Literal["constant", "linear", "cosine"] = Field("cosine", description="decay after warmup")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping max norm")


class TrainSection(Section):
    steps: int = Field(200, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="examples per optimizer step (global batch)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per step; batch_size must divide by it")
    seed: int = Field(0, description="seed for data order and initialization")
    eval_every: int = Field(50, gt=0, description="evaluate every N steps (and at the end)")
    eval_generate: int = Field(50, ge=0, description="held-out prompts to answer greedily at evaluation")


class OutputSection(Section):
    dir: str = Field("runs", description="parent directory of runs")
    name: str = Field("sft", description="run name: outputs go to <dir>/<name>/")
    tensorboard: bool = Field(True, description="write TensorBoard events")


class SFTConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy to fine-tune")
    data: DataSection = Field(default_factory=DataSection, description="training data")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="loop sizes")
    output: OutputSection = Field(default_factory=OutputSection, description="where results go")


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR at ``step`` (0-based): linear warmup, then constant/linear/cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _load_model_and_tokenizer(cfg: ModelSection):
    from alignkit.models import build_tiny, load_causal_lm, load_tokenizer

    if cfg.path == "tiny":
        return build_tiny(arch=cfg.arch, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads)
    return load_causal_lm(cfg.path), load_tokenizer(cfg.path)


def _datasets(cfg: DataSection, seed: int):
    """-> (train records, eval records, eval problems with answers or None)."""
    from alignkit.data import load_records, make_split, split_records, to_sft_records

    if cfg.train_file is None:
        train_p, eval_p = make_split(cfg.n_train, cfg.n_eval, level=cfg.level, seed=seed)
        return to_sft_records(train_p, style=cfg.style), to_sft_records(eval_p, style=cfg.style), eval_p
    records = load_records(cfg.train_file, "sft")
    train, held_out = split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)
    return train, held_out, None


def _batch(tokenizer, examples):
    from alignkit.data import pad_batch

    return pad_batch(examples, pad_token_id=tokenizer.pad_token_id, side="right")


def _target_count(example) -> int:
    """Response tokens that are predicted (position 0 has no prediction)."""
    return sum(example.response_mask[1:])


def _forward_loss(model, batch, num_tokens):
    from alignkit.logprobs import sequence_logprobs

    logprobs = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"])
    mask = batch["response_mask"].clone()
    mask[:, 0] = 0  # the first token of a sequence is never a target
    per_token, _ = sft_loss(logprobs, mask)
    return aggregate_loss(per_token, mask, mode="token_mean", num_tokens=num_tokens)


@torch.no_grad()
def evaluate(model, tokenizer, rendered_eval, problems, *, batch_size: int, n_generate: int) -> dict:
    """Held-out token-mean loss, token accuracy (argmax = target on response tokens), greedy answer accuracy."""
    model.eval()
    total_nll, total_tok, correct_tok = 0.0, 0, 0
    for i in range(0, len(rendered_eval), batch_size):
        b = _batch(tokenizer, rendered_eval[i : i + batch_size])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        target, mask = b["input_ids"][:, 1:], b["response_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total_nll += nll[mask].sum().item()
        total_tok += int(mask.sum())
        correct_tok += int((logits.argmax(-1) == target)[mask].sum())
    out = {"eval/loss": total_nll / max(total_tok, 1), "eval/token_accuracy": correct_tok / max(total_tok, 1)}
    if problems and n_generate:
        out.update(answer_accuracy(model, tokenizer, problems[:n_generate]))
    model.train()
    return out


def answer_accuracy(model, tokenizer, problems, *, max_new_tokens: int = 48) -> dict:
    """Greedy answers to held-out problems, scored with the same reward functions RL uses."""
    from alignkit.data import render_prompt
    from alignkit.rewards import accuracy_reward, format_reward
    from alignkit.rollout import generate

    prompts = [render_prompt(tokenizer, p.question) for p in problems]
    out = generate(model, tokenizer, prompts, num_samples=1, max_new_tokens=max_new_tokens, temperature=0.0)
    acc = [accuracy_reward(t, answer=p.answer) for t, p in zip(out.completion_texts, problems)]
    fmt = [format_reward(t) for t in out.completion_texts]
    return {"eval/answer_accuracy": sum(acc) / len(acc), "eval/format": sum(fmt) / len(fmt)}


def run(cfg: SFTConfig) -> dict:
    """Train; returns the final metrics. Writes <output.dir>/<output.name>/{config.yaml, metrics.jsonl,
    final/, curves.png}."""
    from alignkit.data import render_many

    if cfg.train.batch_size % cfg.train.grad_accum:
        fits = [d for d in range(1, cfg.train.batch_size + 1) if cfg.train.batch_size % d == 0]
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by train.grad_accum="
                         f"{cfg.train.grad_accum}; grad_accum values that fit: {fits}")
    seed_everything(cfg.train.seed)
    run_dir = Path(cfg.output.dir) / cfg.output.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    model, tokenizer = _load_model_and_tokenizer(cfg.model)
    train_records, eval_records, eval_problems = _datasets(cfg.data, cfg.train.seed)
    train, _ = render_many(tokenizer, train_records, max_length=cfg.data.max_length)
    held_out, _ = render_many(tokenizer, eval_records, max_length=cfg.data.max_length)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup=cfg.optim.warmup_steps, total=cfg.train.steps, schedule=cfg.optim.schedule))
    logger, timer = RunLogger(run_dir, tensorboard=cfg.output.tensorboard), PhaseTimer()
    gen = torch.Generator().manual_seed(cfg.train.seed)
    order, cursor = torch.randperm(len(train), generator=gen).tolist(), 0
    micro = cfg.train.batch_size // cfg.train.grad_accum
    eval_kw = dict(batch_size=64, n_generate=cfg.train.eval_generate)
    start_metrics = evaluate(model, tokenizer, held_out, eval_problems, **eval_kw)
    logger.log(0, start_metrics)
    model.train()
    bar = tqdm(range(cfg.train.steps), desc="sft", unit="step", dynamic_ncols=True)
    t0, metrics = time.perf_counter(), dict(start_metrics)
    for step in bar:
        with timer("data"):
            if cursor + cfg.train.batch_size > len(order):
                order, cursor = torch.randperm(len(train), generator=gen).tolist(), 0
            idx = order[cursor : cursor + cfg.train.batch_size]
            cursor += cfg.train.batch_size
            examples = [train[i] for i in idx]
            num_tokens = sum(_target_count(e) for e in examples)
        with timer("forward_backward"):
            loss_total = 0.0
            for m in range(cfg.train.grad_accum):
                loss = _forward_loss(model, _batch(tokenizer, examples[m * micro : (m + 1) * micro]), num_tokens)
                loss.backward()
                loss_total += loss.item()
        with timer("update"):
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            sched.step()
            optimizer.zero_grad(set_to_none=True)
        metrics = {"train/loss": loss_total, "train/grad_norm": grad_norm, "train/lr": sched.get_last_lr()[0],
                   "train/tokens": num_tokens}
        if (step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.steps:
            with timer("eval"):
                metrics.update(evaluate(model, tokenizer, held_out, eval_problems, **eval_kw))
        metrics.update(timer.summary())
        logger.log(step + 1, metrics)
        bar.set_postfix(loss=f"{loss_total:.3f}", **({"acc": f"{metrics['eval/answer_accuracy']:.2f}"}
                                                     if "eval/answer_accuracy" in metrics else {}))
    logger.close()
    final = run_dir / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    plot_metrics(logger.path, run_dir / "curves.png", ["train/loss", "eval/loss", "eval/answer_accuracy"], title=cfg.output.name)
    summary = {"start": start_metrics, "end": {k: v for k, v in metrics.items() if k.startswith("eval/")},
               "wall_s": time.perf_counter() - t0, "run_dir": str(run_dir)}
    return summary
