"""Online DPO (Guo et al. 2024, "Direct language model alignment from online AI feedback"; TRL's OnlineDPO):
the preference pairs come from the policy itself, every step.

    alignkit online-dpo rollout.group_size=4 loss.beta=0.1                  (arithmetic, rule rewards)
    alignkit online-dpo reward.model=runs/rm/final reward.weights={}        (a trained reward model)

One step:
  sample      B prompts (``rollout.prompts_per_step``)
  generate    G >= 2 completions per prompt from the current policy (``alignkit.rollout``)
  score       reward functions (``reward.weights``, as GRPO) and/or a trained reward model (``reward.model``)
  pairs       per prompt the best (chosen) and the worst (rejected) valid completion
              (``alignkit.losses.preference.rank_pairs``); a prompt whose rewards tie carries no preference:
              left out and counted as ``pairs/tied``
  logprobs    summed completion logprobs (temperature 1) of chosen and rejected under the policy (with grad)
              and the reference (frozen copy; the LoRA policy with adapters disabled; none for the
              reference-free losses simpo / orpo or ``loss.reference_free``)
  update      ``loss.loss_type`` of ``alignkit.losses.PREFERENCE_LOSSES`` (DPO's loss section and options),
              summed over the step's pairs / their number (processes together)

Metrics: ``reward/*`` of every sample, ``pairs/used``, ``pairs/tied``, ``train/loss``, ``train/rewards/*``
(each loss's implicit reward), ``completion/length``; held-out greedy answers as GRPO's ``eval/*``.
``train/grad_norm``, ``train/lr``; a step with no untied pair makes no update (``train/skipped`` 1).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from alignkit.config import ModelSection, OptimSection, OutputSection, RLRewardSection, Section
from alignkit.data.prompts import PromptDataSection, PromptSampler, load_prompts
from alignkit.evaluation import held_out_evaluation
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.run import Run, time_limit_field
from alignkit.infra.train import (
    backward,
    build_optimizer,
    build_scheduler,
    global_sum,
    optimizer_step,
    prepare_model,
)
from alignkit.losses.preference import rank_pairs
from alignkit.models.forwards import completion_logprobs
from alignkit.models.reference import completion_reference, frozen_copy
from alignkit.recipes.dpo import STAT_KEYS, LossSection, pair_loss
from alignkit.rollout.batches import GroupBatch, merge_rollouts, sample_groups
from alignkit.rollout.scoring import Scorer

log = logging.getLogger("alignkit.online_dpo")


class RolloutSection(Section):
    prompts_per_step: int = Field(16, gt=0, description="B: prompts per step (all processes together)")
    group_size: int = Field(4, ge=2, description="G: completions sampled per prompt (best vs worst become a pair)")
    max_new_tokens: int = Field(48, gt=0, description="longest completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (the loss uses temperature-1 logprobs)")
    top_k: int | None = Field(None, gt=0, description="top-k filtering (None = off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus filtering (1 = off)")
    stop: list[str] = Field([], description="stop strings")
    backend: Literal["native", "hf"] = Field("native", description="sampler backend")


class TrainSection(Section):
    steps: int = Field(100, gt=0, description="online DPO steps")
    seed: int = Field(0, description="seed for prompts, sampling and initialization")
    eval_every: int = Field(25, gt=0, description="evaluate on held-out prompts every N steps (and at the end)")
    time_limit_s: float | None = time_limit_field()
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")


class OnlineDPOConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy (and initial reference)")
    data: PromptDataSection = Field(default_factory=PromptDataSection, description="prompts")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="sampling")
    reward: RLRewardSection = Field(default_factory=RLRewardSection,
                                    description="rule-based rewards and an optional trained reward model")
    loss: LossSection = Field(default_factory=LossSection, description="preference loss (as alignkit dpo)")
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=5e-4, warmup_steps=0, schedule="constant"),
                                description="optimizer")
    train: TrainSection = Field(default_factory=TrainSection, description="loop")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="online-dpo"), description="where results go")


def pair_batch(batch: GroupBatch, chosen: torch.Tensor, rejected: torch.Tensor) -> GroupBatch:
    """Rows chosen_0, rejected_0, chosen_1, ... (each pair's rows adjacent: one prompt computed once)."""
    idx = torch.stack([chosen, rejected], dim=1).flatten()
    rows = idx.tolist()
    return GroupBatch(batch.prompt_ids[idx], batch.prompt_mask[idx], batch.completion_ids[idx], batch.response_mask[idx],
                      [batch.completions[i] for i in rows], [batch.finish_reasons[i] for i in rows], [2] * len(chosen))


def run(cfg: OnlineDPOConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None, reward_funcs=None,
        callbacks=None) -> dict:
    """Train per ``cfg``; returns a summary; same Python API as GRPO (``reward_funcs`` replace reward.weights)."""
    from alignkit.models import load_policy
    from alignkit.rewards import RewardFailureError, reward_metrics

    life = Run(cfg, desc="online-dpo", seed=cfg.train.seed, seed_per_rank=True, callbacks=callbacks)
    world, rank, acc = life.world, life.rank, life.acc
    life.require_divisible(cfg.rollout.prompts_per_step, "rollout.prompts_per_step", "processes", world)
    if model is None:
        model, tokenizer = load_policy(cfg.model)
    reference = frozen_copy(model) if cfg.loss.uses_reference and not cfg.model.lora.enabled else None
    model = prepare_model(model, cfg.model)
    scorer = Scorer(cfg.reward, device=str(acc.device), reward_funcs=reward_funcs)
    pools, held_out, dropped = load_prompts(cfg.data, tokenizer, train_records=train_dataset, eval_records=eval_dataset)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    sampler = PromptSampler(pools, cfg.train.seed)
    model, optimizer = life.setup(model, optimizer, scheduler, objects={"sampler": sampler})
    if reference is not None:
        reference = reference.to(acc.device)
    life.begin(held_out_evaluation(lambda: life.plain, tokenizer, held_out, max_new_tokens=cfg.rollout.max_new_tokens,
                                   rewards=scorer.rewards if cfg.data.eval_file or eval_dataset is not None else None,
                                   success_key=cfg.reward.success_key), {"data/dropped_prompts": dropped})
    G, failure = cfg.rollout.group_size, None
    with GracefulStop() as stop:
        for step in life.steps():
            with life.timer("sample"):
                prompts = sampler.draw(cfg.rollout.prompts_per_step)[rank::world]
            with life.timer("generate"):
                parts = sample_groups(life.plain, tokenizer, prompts, [G] * len(prompts), cfg.rollout,
                                      temperature=cfg.rollout.temperature, seed=cfg.train.seed * 100003 + step * 97 + rank)
                batch = merge_rollouts(parts, tokenizer.pad_token_id)
            with life.timer("score"):
                try:
                    scored = scorer(batch.completions, batch.completion_ids, batch.response_mask,
                                    [p[2] for p in prompts for _ in range(G)], [p[1] for p in prompts for _ in range(G)])
                except RewardFailureError as err:
                    failure = err
                    break
                valid = torch.tensor([s.ok for s in scored])
                raw = torch.tensor([s.total if s.ok else 0.0 for s in scored], dtype=torch.float32)
                chosen, rejected, ok = rank_pairs(raw, G, valid=valid)
            n_pairs = global_sum(acc, int(ok.sum()))
            stats, loss_total, applied, grad_norm = torch.zeros(len(STAT_KEYS), dtype=torch.float64), 0.0, False, 0.0
            if n_pairs:
                with life.timer("update"):
                    pairs = pair_batch(batch, chosen[ok], rejected[ok])
                    rows = slice(0, 2 * int(ok.sum()))
                    lengths = pairs.response_mask.sum(-1).float()
                    if int(ok.sum()):
                        lp = (completion_logprobs(model, pairs, rows, temperature=1.0) * pairs.response_mask).sum(-1)
                        ref = ((completion_reference(reference, life.plain, pairs, rows, temperature=1.0)
                                * pairs.response_mask).sum(-1) if cfg.loss.uses_reference else None)
                        order = lambda x: torch.cat([x[0::2], x[1::2]])  # noqa: E731  chosen first, then rejected
                        losses, st = pair_loss(order(lp), order(ref) if ref is not None else None, beta=cfg.loss.beta,
                                               cfg=cfg.loss, lengths=order(lengths))
                        loss = losses.sum() / n_pairs
                        stats = torch.stack([st[k].sum() for k in STAT_KEYS]).double().cpu()
                    else:  # this process has no pair: a zero loss keeps DDP's all-reduce in step
                        loss = sum(p.sum() * 0.0 for p in model.parameters())
                    backward(acc, loss)
                    loss_total = float(acc.reduce(loss.detach(), reduction="sum"))
                    stats = acc.reduce(stats.to(acc.device), reduction="sum").cpu()
                    grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=life.guard, loss=loss_total,
                                                        max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            metrics = {**reward_metrics(scored), "pairs/used": n_pairs,
                       "pairs/tied": global_sum(acc, int((~ok).sum())), "train/loss": loss_total,
                       **({f"train/{k}": float(v) / n_pairs for k, v in zip(STAT_KEYS, stats)} if n_pairs else {}),
                       "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                       "train/skipped": int(not applied),
                       "samples/failed": int((~valid).sum()),
                       "completion/length": float(batch.response_mask.sum(-1).float().mean())}
            if life.end_step(metrics, stop, postfix={"reward": "reward/total", "pairs": "pairs/used"}):
                break
    return life.finish(tokenizer=tokenizer, failure=scorer.close(failure), reward_failures=scorer.monitor.counters(),
                       plots=["reward/total", "train/loss", "train/rewards/accuracy", "pairs/tied", "eval/accuracy"])
