"""Reward model: a scalar score r(x, y) fitted to preference pairs with the Bradley-Terry loss (lecture,
RLHF stage 2): P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)), L = -log sigma(r_w - r_l [- margin]).

    alignkit rm -c configs/rm/arith_tiny.yaml train.steps=200
    accelerate launch --num_processes 2 -m alignkit.cli rm -c ...     (or torchrun; same code)

Each step: pairs -> forward (chosen and rejected rows in ONE batch of 2B rows, scores split after) -> loss
-> backward / step -> log (loss, pairwise accuracy, mean margin r_w - r_l); every ``train.eval_every``
steps: held-out pairwise accuracy, mean margin, mean sigma(margin) and loss.

Decisions, stated up front:
- The model is transformers' ``*ForSequenceClassification`` with one label, built from the policy's trunk
  (``alignkit.models.reward``): the score is read at the last real token (the completion's EOS), and
  ``final/`` loads with ``AutoModelForSequenceClassification.from_pretrained``. No separate value-head class.
- The loss is the sum of per-pair losses divided by the number of pairs in the whole global batch (all
  micro-batches and processes), so 1 x 8 micro-batches, 8 x 1 and 2 processes x 4 train the same.
- ``data.margin_field`` (default ``margin``): a numeric column of a preference file is the required gap of
  Llama 2 (loss -log sigma(r_w - r_l - m)); rows without it use 0. Logged margins are r_w - r_l.
- ``data.train_file: null`` is the synthetic arithmetic set (``alignkit.data.preferences``): the correct
  R1 trace preferred over one whose answer is off by 1..``max_offset``; held-out questions never occur in
  training. Default ``rejected: wrong_answer`` (the trace is right, the answer contradicts it): a fresh tiny
  trunk learns that in ~100 steps. ``wrong_trace`` (trace and answer wrong, self-consistent) needs checking
  the arithmetic itself; neither a fresh tiny trunk nor the bundled base got past ~0.6 in 100 steps.
- The new score head starts at normal(0, 1/sqrt(hidden+1)) (OpenAI lm-human-preferences), not
  transformers' 0.02: the trunk's gradient scales with the head, and the small init stalls a tiny model.
- Over-long pairs are an error or dropped (never truncated: that would cut the EOS the score is read at).
- ``model.lora.enabled``: peft LoRA of task type ``SEQ_CLS``: adapters on the trunk's linear layers, and the
  new score head trained in full (peft's ``modules_to_save``), never frozen. ``final/`` has the adapters
  merged, so it is a plain ``*ForSequenceClassification`` as without LoRA; checkpoints hold the wrapped model.
- ``model.path: bundled`` is the shipped tiny base model; ``tiny`` a fresh random one; else a local dir.
- A checkpoint (model, optimizer, scheduler, RNG, data position) is written atomically every
  ``output.save_every`` steps and on SIGTERM, after which the run exits 0; ``output.resume`` continues it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from alignkit.config import ModelSection, OptimSection, OutputSection, Section
from alignkit.data.order import ShuffledOrder
from alignkit.data.pairs import Pair, collate_pairs
from alignkit.data.pairs import render_pairs as render_pairs_
from alignkit.data.source import DataSourceFields
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.run import Run, no_sync_unless_last, time_limit_field
from alignkit.infra.train import backward, build_optimizer, build_scheduler, optimizer_step, prepare_model
from alignkit.losses import bradley_terry_loss


class DataSection(DataSourceFields):
    train_file: str | None = Field(None, description="preference data (jsonl/json/parquet/csv/datasets dir/Hub name) with "
                                   "prompt, chosen, rejected; None = synthetic arithmetic preferences")
    eval_file: str | None = Field(None, description="held-out preference data; None = split eval_fraction off train_file")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="held-out fraction of train_file when no eval_file")
    margin_field: str | None = Field("margin", description="numeric column with a per-pair required margin "
                                     "(Llama 2); rows without it use 0; None = ignore")
    n_train: int = Field(2000, gt=0, description="synthetic: training pairs")
    n_eval: int = Field(100, gt=0, description="synthetic: held-out pairs (distinct questions)")
    level: int = Field(2, ge=1, le=5, description="synthetic: arithmetic difficulty level (1-5)")
    max_offset: int = Field(5, ge=1, description="synthetic: the rejected answer is off by 1..max_offset (either sign)")
    rejected: Literal["wrong_answer", "wrong_trace"] = Field(
        "wrong_answer", description="synthetic: the rejected trace is right but its answer is not (wrong_answer), "
        "or both are wrong and agree (wrong_trace: needs a trunk that knows arithmetic)")
    max_length: int = Field(128, gt=0, description="max tokens of a chosen or rejected sequence")
    on_overflow: Literal["error", "drop"] = Field("error", description="a pair with a side over max_length")


class TrainSection(Section):
    steps: int = Field(200, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="pairs per optimizer step (global, all processes)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per step and process")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")
    seed: int = Field(0, description="seed for data order and initialization")
    eval_every: int = Field(50, gt=0, description="evaluate every N steps (and at the end)")
    time_limit_s: float | None = time_limit_field()


class RMConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="trunk of the reward model")
    data: DataSection = Field(default_factory=DataSection, description="preference data")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="loop sizes")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="rm"), description="where results go")


def load_data(cfg: DataSection, seed: int, train_dataset=None, eval_dataset=None) -> tuple[list, list]:
    """-> (train records, eval records). Files (or a Python caller's datasets) are validated at load time
    (DataError names file/row/field)."""
    from alignkit.data import load_records, make_split, split_records
    from alignkit.data.objects import as_records
    from alignkit.data.preferences import to_preference_records

    if train_dataset is not None:
        records = as_records(train_dataset, "preference")
        if eval_dataset is not None:
            return records, as_records(eval_dataset, "preference", name="eval_dataset")
        return split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)
    if cfg.train_file is None:
        train_p, eval_p = make_split(cfg.n_train, cfg.n_eval, level=cfg.level, seed=seed)
        kw = dict(max_offset=cfg.max_offset, rejected=cfg.rejected)
        return to_preference_records(train_p, seed=seed, **kw), to_preference_records(eval_p, seed=seed + 1, **kw)
    records = load_records(cfg.train_file, "preference", split=cfg.split, columns=cfg.columns)
    if cfg.eval_file is not None:
        return records, load_records(cfg.eval_file, "preference", split=cfg.eval_split or cfg.split,
                                     columns=cfg.columns)
    return split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)


def render_pairs(tokenizer, records, cfg: DataSection) -> tuple[list[Pair], int]:
    """Records (typed or dicts) -> (pairs, number dropped as over-long); margins read and checked here."""
    pairs, _, counts = render_pairs_(tokenizer, records, max_length=cfg.max_length, on_overflow=cfg.on_overflow,
                                     margin_field=cfg.margin_field, skip_identical=False)
    return pairs, counts["dropped"]


def collate(pairs: list[Pair], pad_token_id: int) -> dict:
    """B pairs -> right-padded [2B, T] rows (chosen 0..B-1, then rejected B..2B-1) and ``margin`` [B]."""
    batch = collate_pairs(pairs, pad_token_id)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "margin")}


def pair_scores(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over the concatenated batch -> (chosen_rewards [B], rejected_rewards [B])."""
    from alignkit.models.reward import sequence_scores

    scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    return scores.chunk(2)


def batch_loss(model, batch: dict, num_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of Bradley-Terry losses / ``num_pairs`` (the global batch's pairs), detached r_w - r_l [B])."""
    chosen, rejected = pair_scores(model, batch)
    losses, _ = bradley_terry_loss(chosen, rejected, margin=batch["margin"])
    return losses.sum() / num_pairs, (chosen - rejected).detach()


@torch.no_grad()
def evaluate(model, pairs: list[Pair], pad_token_id: int, *, batch_size: int = 64) -> dict:
    """Held-out pairwise accuracy (r_w > r_l; a tie counts as wrong), mean margin r_w - r_l, mean
    sigma(r_w - r_l) (the modeled preference probability) and mean loss."""
    from alignkit.losses import preference_probability

    model.eval()
    chosen, rejected, margins = [], [], []
    for i in range(0, len(pairs), batch_size):
        b = collate(pairs[i:i + batch_size], pad_token_id)
        c, r = pair_scores(model, {k: v.to(next(model.parameters()).device) for k, v in b.items()})
        chosen.append(c.cpu())
        rejected.append(r.cpu())
        margins.append(b["margin"])
    model.train()
    c, r, m = torch.cat(chosen), torch.cat(rejected), torch.cat(margins)
    losses, _ = bradley_terry_loss(c, r, margin=m)
    return {"eval/accuracy": float((c > r).float().mean()), "eval/margin": float((c - r).mean()),
            "eval/preference_prob": float(preference_probability(c, r).mean()), "eval/loss": float(losses.mean())}


def run(cfg: RMConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None, callbacks=None) -> dict:
    """Train per ``cfg``; returns a summary. Writes under <output.dir>/<output.name>/: config.yaml,
    metrics.jsonl, tensorboard/, checkpoints/, final/ (plain transformers), curves.png, summary.json.

    Python API (docs/python_api.md): ``model`` (a transformers ``*ForSequenceClassification`` with one label)
    + ``tokenizer`` replace the trunk of ``model.path``; ``train_dataset`` / ``eval_dataset`` (preference rows)
    replace the data files; ``callbacks``: ``fn(step, metrics)`` for every logged row."""
    from alignkit.models import reward as reward_models

    life = Run(cfg, desc="rm", seed=cfg.train.seed, callbacks=callbacks)
    world, rank, B = life.world, life.rank, cfg.train.batch_size
    life.require_divisible(B, "train.batch_size", "processes x grad_accum", world, cfg.train.grad_accum)
    if model is None:
        model, tokenizer = reward_models.build_reward_model(cfg.model, seed=cfg.train.seed)
    model = prepare_model(model, cfg.model, task_type="SEQ_CLS")  # LoRA: the score head stays trainable
    train_records, eval_records = load_data(cfg.data, cfg.train.seed, train_dataset, eval_dataset)
    train, dropped = render_pairs(tokenizer, train_records, cfg.data)
    held_out, _ = render_pairs(tokenizer, eval_records, cfg.data)
    if len(train) < B or not held_out:
        raise ValueError(f"{len(train)} training and {len(held_out)} held-out pairs: need at least "
                         f"train.batch_size={B} and 1")
    pad_id = tokenizer.pad_token_id
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    order = ShuffledOrder(len(train), cfg.train.seed)
    model, optimizer = life.setup(model, optimizer, scheduler, objects={"data": order})
    life.begin(lambda step: evaluate(life.plain, held_out, pad_id), {"data/dropped": dropped})

    with GracefulStop() as stop:
        for step in life.steps():
            with life.timer("data"):
                local = [train[i] for i in order.take(B)][rank::world]
                micro = len(local) // cfg.train.grad_accum
            with life.timer("forward_backward"):
                sums = torch.zeros(3, dtype=torch.float64)  # loss, correct pairs, sum of r_w - r_l
                for m in range(cfg.train.grad_accum):
                    batch = collate(local[m * micro:(m + 1) * micro], pad_id)
                    with no_sync_unless_last(life.acc, model, m, cfg.train.grad_accum):
                        loss, diff = batch_loss(model, {k: v.to(life.acc.device) for k, v in batch.items()}, B)
                        backward(life.acc, loss)
                    sums += torch.tensor([loss.item(), float((diff > 0).sum()), float(diff.sum())], dtype=torch.float64)
                loss_total, correct, diff_sum = life.acc.reduce(sums.to(life.acc.device), reduction="sum").tolist()
            with life.timer("update"):
                grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=life.guard, loss=loss_total,
                                                    max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            metrics = {"train/loss": loss_total, "train/accuracy": correct / B, "train/margin": diff_sum / B,
                       "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                       "train/skipped": int(not applied)}
            if life.end_step(metrics, stop, postfix={"loss": "train/loss", "acc": "eval/accuracy"}):
                break
    return life.finish(tokenizer=tokenizer, plots=["train/loss", "train/accuracy", "eval/accuracy", "eval/margin"])
