"""KTO: Kahneman-Tversky optimization (Ethayarajh et al. 2024) on unpaired feedback: each example is one
completion with a label, desirable or not; no pairs are needed.

    alignkit kto loss.beta=0.1 train.steps=100                   (synthetic arithmetic, bundled model)
    alignkit kto data.train_file=feedback.jsonl                  rows: prompt, completion, label (true/false)
    alignkit kto data.train_file=pairs.jsonl data.from_pairs=true    each pair -> (chosen, true), (rejected, false)

With r(x, y) = log pi(y|x) - log pi_ref(y|x) and the reference point z0 = max(0, mean over MISMATCHED pairs
(x_i, y_{i+1}) of the batch of r) (a detached estimate of KL(pi || pi_ref)), the loss of one example is
    desirable:    w_D (1 - sigma(beta (r - z0)))        undesirable:  w_U (1 - sigma(beta (z0 - r)))
(``alignkit.losses.kto_loss``; ``kto_reference_point``). The mismatched pairs are the batch rolled by one:
prompt i with completion i+1 (TRL's KTO), rendered afresh each step; one over ``data.max_length`` is left
out of z0.

Each step: B examples (``train.batch_size``, all processes) -> policy logprobs of the examples (with grad)
and of their mismatched pairs (no grad) -> reference logprobs of both (frozen copy, ``ref.mode=copy``, or
the LoRA policy with adapters disabled, ``ref.mode=adapter``) -> z0 (averaged over processes) -> loss (sum
over examples / B) -> step. Every ``train.eval_every`` steps and at the end, the held-out examples give
``eval/rewards/desirable`` and ``eval/rewards/undesirable`` (mean beta * r of each class), their difference
``eval/rewards/margin`` (rises as KTO learns), ``eval/kl`` (z0 on held-out mismatched pairs) and
``eval/loss``.

Data: ``data.train_file: null`` is the synthetic arithmetic set of DPO (``alignkit.data.preferences.
arithmetic_preferences``: correct R1 trace vs a wrong answer or a badly formatted one), each pair split into
a desirable and an undesirable example. Files hold unpaired rows (``kind="unpaired"``: prompt, completion,
label bool) or, with ``data.from_pairs: true``, preference pairs. An example over ``data.max_length`` is a
DataError by default or dropped and counted (``data.on_overflow: drop``).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Literal

import torch
from pydantic import Field

from alignkit.config import ModelSection, OptimSection, OutputSection, Section
from alignkit.data.order import ShuffledOrder
from alignkit.data.source import DataSourceFields
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.run import Run, time_limit_field
from alignkit.infra.train import backward, build_optimizer, build_scheduler, optimizer_step, prepare_model
from alignkit.losses.kto import kto_loss, kto_reference_point
from alignkit.models.forwards import pair_logps
from alignkit.models.reference import frozen_copy

log = logging.getLogger("alignkit.kto")


class DataSection(DataSourceFields):
    train_file: str | None = Field(None, description="unpaired feedback (prompt, completion, label true/false) in any "
                                   "format alignkit reads, or pairs with from_pairs; None = synthetic arithmetic")
    eval_file: str | None = Field(None, description="held-out rows; None = split eval_fraction off train_file")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="held-out fraction of train_file when no eval_file")
    from_pairs: bool = Field(False, description="the files hold preference pairs (prompt, chosen, rejected): each "
                             "becomes a desirable (chosen) and an undesirable (rejected) example")
    n_train: int = Field(1000, gt=0, description="synthetic: training pairs (2 examples each)")
    n_eval: int = Field(32, gt=0, description="synthetic: held-out pairs (distinct questions)")
    level: int = Field(2, ge=1, le=5, description="synthetic: arithmetic difficulty level (1-5)")
    max_offset: int = Field(5, ge=1, description="synthetic: a wrong answer is off by 1..max_offset")
    rejected: Literal["mixed", "wrong_answer", "wrong_trace", "bad_format"] = Field(
        "mixed", description="synthetic: the undesirable completions (as DPO's data.rejected)")
    max_length: int = Field(128, gt=0, description="max tokens of an example (prompt included)")
    on_overflow: Literal["error", "drop"] = Field("error", description="an example over max_length")


class ReferenceSection(Section):
    mode: Literal["copy", "adapter"] = Field("copy", description="copy: frozen copy of the initial policy; adapter: "
                                             "the policy with its LoRA adapters disabled (needs model.lora.enabled)")


class LossSection(Section):
    beta: float = Field(0.1, gt=0, description="KL strength beta (scales the implied reward)")
    desirable_weight: float = Field(1.0, gt=0, description="w_D: weight of desirable examples")
    undesirable_weight: float = Field(1.0, gt=0, description="w_U: weight of undesirable examples (KTO: keep "
                                      "w_D n_D / (w_U n_U) in [1, 4/3])")


class TrainSection(Section):
    steps: int = Field(200, gt=0, description="optimizer steps")
    batch_size: int = Field(16, gt=1, description="examples per optimizer step (global, all processes; >= 2 per "
                            "process for mismatched pairs)")
    seed: int = Field(0, description="seed for data order and initialization")
    eval_every: int = Field(50, gt=0, description="evaluate every N steps (and at the end)")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")
    time_limit_s: float | None = time_limit_field()


class KTOConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy (and initial reference)")
    ref: ReferenceSection = Field(default_factory=ReferenceSection, description="the reference policy")
    loss: LossSection = Field(default_factory=LossSection, description="KTO loss")
    data: DataSection = Field(default_factory=DataSection, description="unpaired feedback")
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=1e-3), description="optimizer and schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="loop sizes")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="kto"), description="where results go")


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------
def load_data(cfg: DataSection, seed: int, train_dataset=None, eval_dataset=None) -> tuple[list, list]:
    """-> (train, eval) UnpairedRecords (files / a Python caller's rows validated as they load)."""
    from alignkit.data import load_records, make_split, split_records, unpaired_from_pairs
    from alignkit.data.objects import as_records
    from alignkit.data.preferences import arithmetic_preferences

    kind = "preference" if cfg.from_pairs else "unpaired"
    convert = unpaired_from_pairs if cfg.from_pairs else list
    if train_dataset is not None:
        records = convert(as_records(train_dataset, kind))
        if eval_dataset is not None:
            return records, convert(as_records(eval_dataset, kind, name="eval_dataset"))
        return split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)
    if cfg.train_file is None:
        train_p, eval_p = make_split(cfg.n_train, cfg.n_eval, level=cfg.level, seed=seed)
        kw = dict(rejected=cfg.rejected, max_offset=cfg.max_offset)
        return (unpaired_from_pairs(arithmetic_preferences(train_p, seed=seed, **kw)),
                unpaired_from_pairs(arithmetic_preferences(eval_p, seed=seed + 1, **kw)))
    records = convert(load_records(cfg.train_file, kind, split=cfg.split, columns=cfg.columns))
    if cfg.eval_file is not None:
        return records, convert(load_records(cfg.eval_file, kind, split=cfg.eval_split or cfg.split, columns=cfg.columns))
    return split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)


def render(tokenizer, prompt, completion, cfg: DataSection, on_overflow: str | None = None):
    """(prompt, completion) -> RenderedExample (response mask over the completion and its EOS) or None."""
    from alignkit.data import render_sft

    return render_sft(tokenizer, {"prompt": prompt, "completion": completion}, max_length=cfg.max_length,
                      on_overflow=on_overflow or cfg.on_overflow)


def render_examples(tokenizer, records, cfg: DataSection) -> tuple[list, list, int]:
    """-> (rendered examples, their records, dropped count)."""
    examples, kept, dropped = [], [], 0
    for rec in records:
        ex = render(tokenizer, rec.prompt, rec.completion, cfg)
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
            kept.append(rec)
    if dropped:
        log.warning("dropped %d examples longer than data.max_length=%d", dropped, cfg.max_length)
    return examples, kept, dropped


def mismatched(tokenizer, records, cfg: DataSection) -> list:
    """The batch rolled by one: prompt i with completion i+1 (those over max_length left out)."""
    n = len(records)
    out = [render(tokenizer, records[i].prompt, records[(i + 1) % n].completion, cfg, on_overflow="drop")
           for i in range(n)] if n > 1 else []
    return [x for x in out if x is not None]


def logps_of(model, examples, pad_id: int, device) -> torch.Tensor:
    """[N] summed completion logprobs of rendered examples (one plain forward)."""
    from alignkit.data import pad_batch

    if not examples:
        return torch.zeros(0, device=device)
    batch = pad_batch(examples, pad_token_id=pad_id)
    batch["response_mask"][:, 0] = 0
    return pair_logps(model, {k: v.to(device) for k, v in batch.items()})


def reference_ctx(ref_model, policy):
    """The reference model: the frozen copy, or the (plain) policy with its LoRA adapters disabled."""
    if ref_model is not None:
        return nullcontext(ref_model)
    return _disabled(policy)


class _disabled:
    def __init__(self, policy):
        self.policy, self.ctx = policy, policy.disable_adapter()

    def __enter__(self):
        self.ctx.__enter__()
        return self.policy

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


def step_numbers(policy, plain, ref, examples, records, tokenizer, cfg: KTOConfig, device, *, acc=None, grad: bool):
    """(losses [N], rewards [N] = beta * r, labels [N], z0, policy logps [N]) of a batch. ``policy`` takes the
    forward with grad (the prepared model), ``plain`` (unwrapped) the no-grad ones; ``ref`` is the frozen copy,
    or None for the adapter-disabled ``plain``."""
    pad = tokenizer.pad_token_id
    labels = torch.tensor([r.label for r in records], dtype=torch.bool, device=device)
    mis = mismatched(tokenizer, records, cfg.data)
    with torch.no_grad():
        with reference_ctx(ref, plain) as reference:
            ref_lp = logps_of(reference, examples + mis, pad, device)
        mis_lp = logps_of(plain, mis, pad, device)
    z0 = kto_reference_point(mis_lp, ref_lp[len(examples):])
    if acc is not None and acc.num_processes > 1:
        z0 = acc.reduce(z0.to(device), reduction="mean")
    with nullcontext() if grad else torch.no_grad():
        lp = logps_of(policy, examples, pad, device)
    losses, m = kto_loss(lp, ref_lp[:len(examples)], labels, kl_ref_point=z0, beta=cfg.loss.beta,
                         desirable_weight=cfg.loss.desirable_weight, undesirable_weight=cfg.loss.undesirable_weight)
    return losses, m["rewards"], labels, z0, lp.detach()


def class_means(rewards: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict:
    """Mean reward of each class and their difference (None where a class is absent)."""
    des = float(rewards[labels].mean()) if labels.any() else None
    und = float(rewards[~labels].mean()) if (~labels).any() else None
    out = {f"{prefix}/rewards/desirable": des, f"{prefix}/rewards/undesirable": und}
    if des is not None and und is not None:
        out[f"{prefix}/rewards/margin"] = des - und
    return {k: v for k, v in out.items() if v is not None}


@torch.no_grad()
def evaluate(policy, ref, examples, records, tokenizer, cfg: KTOConfig, batch_size: int = 64) -> dict:
    """Held-out loss, class rewards and margin, and z0 (mean over batches of the held-out examples)."""
    device = next(policy.parameters()).device
    was = policy.training
    policy.eval()
    losses, rewards, labels, z0s = [], [], [], []
    for i in range(0, len(examples), batch_size):
        lo, rw, lb, z0, _ = step_numbers(policy, policy, ref, examples[i:i + batch_size], records[i:i + batch_size], tokenizer,
                                         cfg, device, grad=False)
        losses.append(lo)
        rewards.append(rw)
        labels.append(lb)
        z0s.append(float(z0))
    policy.train(was)
    rewards, labels = torch.cat(rewards), torch.cat(labels)
    return {"eval/loss": float(torch.cat(losses).mean()), "eval/kl": sum(z0s) / len(z0s),
            **class_means(rewards, labels, "eval")}


# --------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------
def run(cfg: KTOConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None, callbacks=None) -> dict:
    """Train per ``cfg``; returns a summary; writes <output.dir>/<output.name>/ like every recipe.

    Python API: ``model`` + ``tokenizer`` replace ``model.path`` (the reference is its initial weights);
    ``train_dataset`` / ``eval_dataset`` (unpaired rows, or pairs with ``data.from_pairs``) replace the files;
    ``callbacks``: ``fn(step, metrics)`` for every logged row."""
    from alignkit.models import load_policy

    life = Run(cfg, desc="kto", seed=cfg.train.seed, callbacks=callbacks)
    world, rank, B, acc = life.world, life.rank, cfg.train.batch_size, life.acc
    life.require_divisible(B, "train.batch_size", "processes", world)
    if cfg.ref.mode == "adapter" and not cfg.model.lora.enabled:
        raise ValueError("ref.mode=adapter uses the policy with its LoRA adapters disabled: set "
                         "model.lora.enabled=true, or use ref.mode=copy")
    if model is None:
        model, tokenizer = load_policy(cfg.model)
    ref_model = frozen_copy(model).to(acc.device) if cfg.ref.mode == "copy" else None
    model = prepare_model(model, cfg.model).to(acc.device)
    train_records, eval_records = load_data(cfg.data, cfg.train.seed, train_dataset, eval_dataset)
    train, train_kept, dropped = render_examples(tokenizer, train_records, cfg.data)
    held_out, held_out_kept, _ = render_examples(tokenizer, eval_records, cfg.data)
    if len(train) < B or not held_out:
        raise ValueError(f"{len(train)} training and {len(held_out)} held-out examples left (after {dropped} dropped): "
                         f"need at least train.batch_size={B} and 1")
    counts = {"desirable": sum(r.label for r in train_kept), "undesirable": sum(not r.label for r in train_kept)}
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    order = ShuffledOrder(len(train), cfg.train.seed)
    model, optimizer = life.setup(model, optimizer, scheduler, objects={"data": order})
    life.begin(lambda step: evaluate(life.plain, ref_model, held_out, held_out_kept, tokenizer, cfg),
               {"data/dropped": dropped, **{f"data/{k}": v for k, v in counts.items()}})

    with GracefulStop() as stop:
        for step in life.steps():
            with life.timer("data"):
                idx = order.take(B)[rank::world]
            with life.timer("forward_backward"):
                losses, rewards, labels, z0, lp = step_numbers(
                    model, life.plain, ref_model, [train[i] for i in idx], [train_kept[i] for i in idx], tokenizer,
                    cfg, acc.device, acc=acc, grad=True)
                loss = losses.sum() / B
                backward(acc, loss)
                loss_total = float(acc.reduce(loss.detach(), reduction="sum"))
            with life.timer("update"):
                grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=life.guard, loss=loss_total,
                                                    max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            metrics = {"train/loss": loss_total, "train/kl": float(z0), "train/logps": float(lp.mean()),
                       **class_means(rewards, labels, "train"), "train/grad_norm": grad_norm,
                       "train/lr": scheduler.get_last_lr()[0], "train/skipped": int(not applied)}
            if life.end_step(metrics, stop, postfix={"loss": "train/loss", "margin": "eval/rewards/margin"}):
                break
    return life.finish(tokenizer=tokenizer, plots=["train/loss", "train/kl", "eval/rewards/margin", "eval/kl"],
                       data={"dropped": dropped, **counts})
