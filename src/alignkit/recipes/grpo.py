"""GRPO with verifiable rewards (lecture section 3; Shao et al. 2024, DeepSeek-R1).

    alignkit grpo -c configs/grpo/arith_tiny.yaml rollout.group_size=8

One step, as named and timed phases:
  sample      B prompts (the curriculum's current level, when on)
  generate    G completions per prompt through alignkit.rollout, at the scheduled temperature
  score       every reward component (alignkit.rewards; a trained reward model with ``reward.model``);
              a failed verifier leaves the sample out
  advantages  group-normalized: (r - mean_g) / (std_g + eps)            alignkit.advantages
  logprobs    reference logprobs (only when beta > 0); with loss.kl_in_reward also the behaviour policy's,
              and the token-level REINFORCE++ advantages with the KL in the reward
  update      mu optimizer steps of the clipped objective + beta * k3 KL  alignkit.losses.grpo_loss
  log         metrics.jsonl / TensorBoard, and a warning line when a metric leaves its healthy range

Decisions, stated up front:
- Completions per optimizer step = B x G (all of them; ``rollout.prompts_per_step`` x group size). Each of
  the ``loss.mu`` iterations is one optimizer step over all of them, in micro-batches of
  ``loss.micro_batch_size`` rows. Any micro-batch size works: the loss is normalized by counts over the
  whole batch, so micro-batching changes no number (tests/invariance).
- With mu = 1 the ratio is 1 and nothing clips (ERRATA): old_logprobs are the detached logprobs of the
  same forward. With mu > 1 they are kept from iteration 1 (where the policy still is the behaviour
  policy), so no extra forward pass is ever made for them.
- beta = 0 loads no reference model. With LoRA the reference is the model with its adapters disabled.
- Standard deviation: population (ddof 0) by default; ``loss.scale_rewards=false`` is Dr. GRPO.
- A sample whose reward function failed (raised, NaN, sandbox failure) is counted, logged and left out of
  its group's statistics and of the loss. ``loss.filter_zero_variance`` also leaves out groups whose
  rewards are all equal (they have zero advantage anyway; with beta > 0 they would still pull toward the
  reference).
- ``loss.skip_zero_advantage_rows`` (on by default): with beta = 0, no ``loss.kl_in_reward`` and one process,
  a row whose advantage is 0 adds exactly nothing to the gradient (the loss is normalized by the whole
  batch's counts, computed before the update), so the update forwards only the other rows (``train/active_rows``:
  their share; ``train/entropy`` is over them); with none, it makes no forward and steps the optimizer on zero
  gradients, as the full update would (Adam's momentum still moves the weights). R1-Zero on SmolLM2-135M spent
  27 s of a 47 s step on such an exactly-zero gradient.
- DAPO (Yu et al. 2025; ``alignkit.losses.dapo``), each an option:
  ``rollout.dynamic_sampling``: draw up to ``rollout.max_extra_draws`` more batches of prompts until the step
  holds ``prompts_per_step`` groups whose valid rewards differ (``DynamicSampler``); the loss sees only
  those groups, the ``reward/*`` metrics every sample drawn in the step (all come from the same policy),
  ``dynamic_sampling/*`` the bookkeeping; a short batch trains on what it has and warns (no informative
  group at all: the last draw, whose advantages are all zero). One process only for now (ranks would run
  different numbers of micro-batches).
  ``rollout.overlong_mask``: a completion cut at ``max_new_tokens`` (finish reason "length") is left out of
  its group's statistics and of the loss (counted as ``samples/overlong_masked``).
  ``reward.overlong_penalty`` (weight) with ``reward.overlong_cache_tokens``: the soft overlong punishment,
  0 up to max_new_tokens - cache tokens, then linearly down to -weight at max_new_tokens (counted in
  TOKENS, EOS included), added to the sequence reward as the component ``overlong``.
  Clip-higher is ``loss.clip_eps_high``, the token-level loss ``loss.aggregation=token_mean``.
- ``loss.kl_in_reward`` (REINFORCE++, Hu et al. 2025; only with ``loss.advantages=reinforce_pp``): the KL to the
  reference is a per-token reward, -beta * KL_t of the behaviour policy's sampled tokens (one extra forward
  without gradients when beta > 0), plus the group-baseline x = r - mean_g(r) at the last token; the returns
  (gamma 1) whitened over every response token of the (process's) batch are the advantages, one per token, and
  the loss has no KL term. Every policy loss takes them (gspo as GSPO-token: the sequence ratio's value with a
  token advantage). ``train/kl`` is then the measured KL of the shaping (what the adaptive controller reads).
- ``loss.policy_loss=gspo`` ratios are sequence-level (geometric means), so its clip range is tiny (the
  paper: 3e-4 / 4e-4); clip_eps above 0.01 with gspo is warned about.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from alignkit.advantages import (
    ADVANTAGE_ESTIMATORS,
    reinforce_pp_baseline,
    reinforce_pp_token_advantages,
    zero_variance_groups,
)
from alignkit.config import ModelSection, OptimSection, OutputSection, RLRewardSection, Section
from alignkit.data.prompts import PromptDataSection, PromptSampler, load_prompts, no_eval_reason
from alignkit.evaluation import held_out_evaluation
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.monitor import MonitorSection, health_warnings  # noqa: F401  (health_warnings: part of the recipe's API)
from alignkit.infra.run import Run, no_sync_unless_last, time_limit_field
from alignkit.infra.schedules import AdaptiveGroupSize, Curriculum, interpolate, piecewise_constant
from alignkit.infra.train import (
    backward,
    build_optimizer,
    build_scheduler,
    global_sum,
    optimizer_step,
    prepare_model,
)
from alignkit.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    AdaptiveKLController,
    grpo_loss,
    kl_divergence,
    masked_mean,
)
from alignkit.losses.dapo import DynamicSampler, overlong_mask, soft_overlong_penalty
from alignkit.models.forwards import completion_logprobs
from alignkit.models.reference import completion_reference, frozen_copy
from alignkit.rollout.batches import merge_rollouts, sample_groups
from alignkit.rollout.generate import BACKENDS
from alignkit.rollout.scoring import Scorer

log = logging.getLogger("alignkit.grpo")


class CurriculumSection(Section):
    enabled: bool = Field(False, description="start at the first level, advance when the success rate passes threshold")
    threshold: float = Field(0.8, gt=0, le=1, description="success rate (over the window) that advances a level")
    window: int = Field(5, gt=0, description="steps averaged for the success rate")


class RolloutSection(Section):
    prompts_per_step: int = Field(16, gt=0, description="B: prompts per step (all processes together)")
    group_size: int = Field(8, gt=1, description="G: completions per prompt")
    max_new_tokens: int = Field(48, gt=0, description="longest completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (also divides the logits of the loss)")
    temperature_schedule: list[tuple[int, float]] = Field([], description="[[start_step, T], ...] overrides temperature from each step on")
    top_k: int | None = Field(None, gt=0, description="top-k filtering (None = off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus filtering (1 = off)")
    stop: list[str] = Field([], description="stop strings")
    backend: Literal[tuple(BACKENDS)] = Field("native", description="sampler backend (vllm: refused until weight sync exists)")

    @field_validator("backend")
    @classmethod
    def _vllm_needs_weight_sync(cls, backend: str) -> str:
        if backend == "vllm":
            raise ValueError("vllm cannot sample for GRPO training yet: nothing syncs the trained weights into "
                             "vLLM, so it would keep sampling the initial model; use native or hf")
        return backend
    adaptive_group_size: bool = Field(False, description="larger G where the model is unsure, smaller where confident")
    min_group_size: int = Field(4, gt=1, description="adaptive G: smallest group")
    max_group_size: int = Field(16, gt=1, description="adaptive G: largest group")
    dynamic_sampling: bool = Field(False, description="DAPO dynamic sampling: train only on groups whose rewards "
                                   "differ, drawing more prompts until prompts_per_step such groups are found")
    max_extra_draws: int = Field(3, ge=0, description="dynamic sampling: extra batches of prompts drawn per step "
                                 "at most (a batch still short after them trains as it is, with a warning)")
    overlong_mask: bool = Field(False, description="DAPO overlong filtering: completions cut at max_new_tokens "
                                "are left out of the loss and of their group's statistics")


class GRPORewardSection(RLRewardSection):
    """GRPO's rewards: the RL reward section plus DAPO's soft overlong punishment."""

    overlong_penalty: float = Field(0.0, ge=0, description="DAPO soft overlong punishment weight: the component "
                                    "'overlong' goes from 0 to -weight over the last overlong_cache_tokens tokens "
                                    "before max_new_tokens (0 = off)")
    overlong_cache_tokens: int = Field(0, ge=0, description="DAPO L_cache in tokens: the penalty starts at "
                                       "rollout.max_new_tokens - this many tokens (needs 0 < it <= max_new_tokens)")


class LossSection(Section):
    mu: int = Field(1, gt=0, description="optimizer steps (iterations) per batch of completions")
    micro_batch_size: int = Field(64, gt=0, description="rows per forward pass (any value; changes no number)")
    clip_eps: float = Field(0.2, gt=0, description="clip range 1 +- eps")
    clip_eps_high: float | None = Field(None, gt=0, description="upper clip eps (DAPO clip-higher); None = clip_eps")
    beta: float = Field(0.04, ge=0, description="KL coefficient (0 loads no reference model)")
    beta_final: float | None = Field(None, ge=0, description="linear KL schedule from beta to beta_final over the run")
    kl_target: float | None = Field(None, gt=0, description="adaptive KL: double/halve beta around this measured KL")
    kl_estimator: Literal[KL_ESTIMATORS] = Field("k3", description="per-token KL estimator")
    aggregation: Literal[AGGREGATIONS] = Field("seq_mean_token_mean", description="loss aggregation")
    advantages: Literal[tuple(ADVANTAGE_ESTIMATORS)] = Field(
        "grpo", description="advantage estimator (alignkit.advantages.ADVANTAGE_ESTIMATORS): grpo (group-normalized), "
        "rloo (leave-one-out baseline), reinforce_pp (REINFORCE++ batch-normalized)")
    policy_loss: Literal[tuple(POLICY_LOSSES)] = Field(
        "clip", description="policy term (alignkit.losses.POLICY_LOSSES): clip (PPO/GRPO token ratio), gspo "
        "(sequence-level ratio), cispo (clipped importance-sampling weight)")
    std_ddof: int = Field(0, ge=0, le=1, description="0 = population std (lecture), 1 = sample std (TRL)")
    scale_rewards: bool = Field(True, description="divide by the group std (false = Dr. GRPO)")
    eps: float = Field(1e-8, gt=0, description="added to the group std")
    filter_zero_variance: bool = Field(False, description="leave groups with all-equal rewards out of the loss")
    skip_zero_advantage_rows: bool = Field(True, description="exact fast path of the update: forward and backward "
                                           "only the rows with a nonzero advantage and a response token (a zero-"
                                           "advantage row adds exactly nothing to the gradient: the loss is "
                                           "normalized by the whole batch's counts); no such row: no forward, zero "
                                           "gradients, the optimizer still steps. Taken only where the step's beta "
                                           "is 0, loss.kl_in_reward is off and one process runs; elsewhere (or "
                                           "false) every row is forwarded. train/entropy then covers the forwarded "
                                           "rows, train/active_rows is their share")
    kl_in_reward: bool = Field(False, description="REINFORCE++ (Hu et al. 2025): the KL to the reference as a per-token "
                               "reward -beta * KL_t (loss.kl_estimator; the paper's is k1), summed to the end of the "
                               "completion with the group-baseline reward at its last token, whitened over every "
                               "response token of the batch: token-level advantages, and no KL term in the loss. "
                               "Needs loss.advantages=reinforce_pp")

    @model_validator(mode="after")
    def _kl_in_reward_is_reinforce_pp(self):
        if self.kl_in_reward and self.advantages != "reinforce_pp":
            raise ValueError(f"loss.kl_in_reward=true is REINFORCE++'s token-level KL reward and needs "
                             f"loss.advantages=reinforce_pp, got loss.advantages={self.advantages}")
        return self


class TrainSection(Section):
    steps: int = Field(100, gt=0, description="GRPO steps (batches of completions)")
    seed: int = Field(0, description="seed for prompts, sampling and initialization")
    eval_every: int = Field(25, gt=0, description="evaluate on held-out prompts every N steps (and at the end)")
    time_limit_s: float | None = time_limit_field()
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")


class GRPOConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy (and reference) model")
    data: PromptDataSection = Field(default_factory=PromptDataSection, description="prompts")
    curriculum: CurriculumSection = Field(default_factory=CurriculumSection, description="difficulty curriculum")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="sampling")
    reward: GRPORewardSection = Field(default_factory=GRPORewardSection,
                                    description="rule-based rewards and an optional trained reward model")
    loss: LossSection = Field(default_factory=LossSection, description="GRPO objective")
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=1e-4, warmup_steps=0, schedule="constant"),
                                description="optimizer")
    monitor: MonitorSection = Field(default_factory=lambda: MonitorSection(kl_limit=0.1), description="healthy ranges")
    train: TrainSection = Field(default_factory=TrainSection, description="loop")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="grpo"), description="where results go")

    @model_validator(mode="after")
    def _overlong_penalty_window(self):
        if self.reward.overlong_penalty > 0 and not 0 < self.reward.overlong_cache_tokens <= self.rollout.max_new_tokens:
            raise ValueError(f"reward.overlong_penalty needs 0 < reward.overlong_cache_tokens <= rollout.max_new_tokens "
                             f"({self.rollout.max_new_tokens}), got {self.reward.overlong_cache_tokens}")
        return self


def collect_batch(cfg, life, tokenizer, scorer, sampler, curriculum, adaptive, *, step: int, temperature: float):
    """One step's training batch: a draw of prompts, generated and scored (``draw_and_score``); with DAPO dynamic
    sampling (``rollout.dynamic_sampling``), further draws until the batch holds enough groups whose rewards
    differ (or ``rollout.max_extra_draws`` is spent). Returns (batch, prompts, sizes, scored, valid, raw rewards,
    every draw, the DynamicSampler or None); a RewardFailureError from the scorer propagates."""
    dynamic = DynamicSampler(len(range(life.rank, cfg.rollout.prompts_per_step, life.world)),
                             1 + cfg.rollout.max_extra_draws) if cfg.rollout.dynamic_sampling else None
    drawn, kept = [], []  # every draw of the step; the (part, prompt, size, scores) of each kept group
    while True:
        draw = draw_and_score(cfg, life, tokenizer, scorer, sampler, curriculum, adaptive, step=step,
                              draw=len(drawn), temperature=temperature)
        drawn.append(draw)
        if dynamic is None:
            break
        keep = dynamic.add(draw["raw"], draw["sizes"], draw["valid"])
        kept += [group_of(draw, g) for g in keep]
        if dynamic.done:
            break
    if dynamic is not None:
        if not dynamic.filled:
            log.warning("step %d: dynamic sampling kept %d of %d groups with differing rewards after %d draws "
                        "(rollout.max_extra_draws=%d); training on %s", step + 1, dynamic.groups_kept,
                        dynamic.target_groups, dynamic.draws, cfg.rollout.max_extra_draws,
                        "these" if kept else "the last draw (all advantages zero)")
        if kept:
            with life.timer("generate"):
                parts = [k[0] for k in kept]
                batch = merge_rollouts(parts, tokenizer.pad_token_id)
            prompts, sizes = [k[1] for k in kept], [k[2] for k in kept]
            scored = [s for k in kept for s in k[3]]
            valid = torch.cat([k[4] for k in kept])
        else:
            batch, prompts, sizes, scored, valid = (drawn[-1][k] for k in ("batch", "prompts", "sizes", "scored", "valid"))
        raw = torch.tensor([s.total if s.ok else 0.0 for s in scored], dtype=torch.float32)
    else:
        batch, prompts, sizes, scored, valid, raw = (drawn[0][k] for k in ("batch", "prompts", "sizes", "scored",
                                                                              "valid", "raw"))
    return batch, prompts, sizes, scored, valid, raw, drawn, dynamic


# ----------------------------------------------------------------------------------------------------------
# The loop: sample -> generate -> score -> advantages -> logprobs -> update -> log
# ----------------------------------------------------------------------------------------------------------
def run(cfg: GRPOConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None, reward_funcs=None,
        callbacks=None) -> dict:
    """Train per ``cfg``; writes <output.dir>/<output.name>/ like every recipe; returns a summary.

    Python API (docs/python_api.md): ``model`` + ``tokenizer`` replace ``model.path``; ``train_dataset`` /
    ``eval_dataset`` (prompt rows with their ground-truth fields) replace the data files; ``reward_funcs``
    (callables ``fn(completion, **fields) -> float``, a list or {name: fn}) replace ``reward.weights``;
    ``callbacks``: ``fn(step, metrics)`` for every logged row."""
    from alignkit.models import load_policy
    from alignkit.rewards import RewardFailureError, reward_metrics

    life = Run(cfg, desc="grpo", seed=cfg.train.seed, seed_per_rank=True, callbacks=callbacks)
    world, acc = life.world, life.acc
    life.require_divisible(cfg.rollout.prompts_per_step, "rollout.prompts_per_step", "processes", world)
    if cfg.rollout.dynamic_sampling and world > 1:
        raise ValueError("rollout.dynamic_sampling runs on one process for now (each process would keep a different "
                         "number of groups, hence of micro-batches); run it without accelerate/torchrun")
    if cfg.loss.policy_loss == "gspo" and max(cfg.loss.clip_eps, cfg.loss.clip_eps_high or 0) > 0.01:
        log.warning("loss.policy_loss=gspo clips a sequence-level ratio (a geometric mean over tokens), which moves far "
                    "less than a token ratio: clip_eps=%g (clip_eps_high=%s) will almost never clip; the GSPO paper "
                    "uses 3e-4 (4e-4 high)", cfg.loss.clip_eps, cfg.loss.clip_eps_high)
    if model is None:
        model, tokenizer = load_policy(cfg.model)
    use_ref = cfg.loss.beta > 0 or (cfg.loss.beta_final or 0) > 0
    reference = frozen_copy(model) if use_ref and not cfg.model.lora.enabled else None
    model = prepare_model(model, cfg.model)
    scorer = Scorer(cfg.reward, device=str(acc.device), reward_funcs=reward_funcs)
    pools, held_out, dropped = load_prompts(cfg.data, tokenizer, train_records=train_dataset, eval_records=eval_dataset)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps * cfg.loss.mu)
    sampler = PromptSampler(pools, cfg.train.seed)
    curriculum = Curriculum(sorted(pools), threshold=cfg.curriculum.threshold, window=cfg.curriculum.window)
    adaptive = AdaptiveGroupSize(cfg.rollout.min_group_size, cfg.rollout.max_group_size, default=cfg.rollout.group_size)
    kl_ctl = AdaptiveKLController(cfg.loss.beta, cfg.loss.kl_target) if cfg.loss.kl_target else None
    objects = {"sampler": sampler, "curriculum": curriculum, "adaptive": adaptive, **({"kl": kl_ctl} if kl_ctl else {})}
    model, optimizer = life.setup(model, optimizer, scheduler, objects=objects)
    if not held_out and life.is_main:
        log.warning("no held-out evaluation will run: %s", no_eval_reason(cfg.data))
    life.begin(held_out_evaluation(lambda: life.plain, tokenizer, held_out, max_new_tokens=cfg.rollout.max_new_tokens,
                                   rewards=scorer.rewards if cfg.data.eval_file or eval_dataset is not None else None,
                                   success_key=cfg.reward.success_key), {"data/dropped_prompts": dropped})
    adv_opts = {"std_ddof": cfg.loss.std_ddof, "scale": cfg.loss.scale_rewards} if cfg.loss.advantages == "grpo" else {}

    failure = None
    with GracefulStop() as stop:
        for step in life.steps():
            temperature = piecewise_constant(step, cfg.rollout.temperature_schedule, cfg.rollout.temperature)
            beta = kl_ctl.value if kl_ctl is not None else interpolate(
                step, cfg.train.steps, cfg.loss.beta, cfg.loss.beta if cfg.loss.beta_final is None else cfg.loss.beta_final)
            try:
                batch, prompts, sizes, scored, valid, raw, drawn, dynamic = collect_batch(
                    cfg, life, tokenizer, scorer, sampler, curriculum, adaptive, step=step, temperature=temperature)
            except RewardFailureError as err:
                failure = err
                break
            all_scored = [s for d in drawn for s in d["scored"]]
            with life.timer("advantages"):
                advantages = ADVANTAGE_ESTIMATORS[cfg.loss.advantages](raw, sizes, eps=cfg.loss.eps, valid=valid, **adv_opts)
                flat_groups = zero_variance_groups(advantages, sizes)  # all-equal valid rewards <=> all-zero advantages
                keep = valid & ~torch.repeat_interleave(flat_groups, torch.tensor(sizes)) if cfg.loss.filter_zero_variance else valid
                mask = batch.response_mask * keep[:, None]
            rows_total, micro = len(scored), cfg.loss.micro_batch_size
            slices = [slice(i, min(i + micro, rows_total)) for i in range(0, rows_total, micro)]
            with life.timer("logprobs"):
                refs = [completion_reference(reference, life.plain, batch, sl, temperature=temperature)
                        for sl in slices] if beta > 0 else None
                if cfg.loss.kl_in_reward:  # REINFORCE++: the KL goes into the reward, per token -> advantages [N, C]
                    advantages, shaping_kl = kl_reward_advantages(cfg, life, batch, slices, raw, sizes, valid, mask,
                                                                  refs, beta=beta, temperature=temperature)
            n_seq, n_tok = global_sum(acc, int((mask.sum(-1) > 0).sum())), global_sum(acc, int(mask.sum()))
            # the rows forwarded: all, or (the exact fast path, loss.skip_zero_advantage_rows) those whose advantage
            # is nonzero; n_seq / n_tok stay the whole batch's, so the gradient is the same
            skip_zero = cfg.loss.skip_zero_advantage_rows and beta == 0 and not cfg.loss.kl_in_reward and world == 1
            if skip_zero:
                live = active_rows(advantages, mask)
                fwd_batch, fwd_adv, fwd_mask = select_rows(batch, live), advantages[live.to(advantages.device)], mask[live]
                fwd_slices = [slice(i, min(i + micro, len(live))) for i in range(0, len(live), micro)]
            else:
                fwd_batch, fwd_adv, fwd_mask, fwd_slices = batch, advantages, mask, slices
            with life.timer("update"):
                old, stats = [None] * len(fwd_slices), {}
                for it in range(cfg.loss.mu):  # mu optimizer steps over the whole batch, in micro-batches
                    loss_total = 0.0
                    for k, sl in enumerate(fwd_slices):
                        with no_sync_unless_last(acc, model, k, len(fwd_slices)):
                            if it == 0:  # the behaviour policy: old_logprobs are these, detached (no extra forward)
                                lp, ent = completion_logprobs(model, fwd_batch, sl, temperature=temperature, entropy=True)
                                old[k] = lp.detach()
                                stats.setdefault("entropy", []).append(masked_mean(ent.detach(), fwd_mask[sl]))
                            else:
                                lp = completion_logprobs(model, fwd_batch, sl, temperature=temperature)
                            loss, m = grpo_loss(
                                lp, old[k], refs[k] if refs and not cfg.loss.kl_in_reward else None, fwd_adv[sl],
                                fwd_mask[sl], clip_eps=cfg.loss.clip_eps, clip_eps_high=cfg.loss.clip_eps_high,
                                beta=0.0 if cfg.loss.kl_in_reward else beta,
                                kl_estimator=cfg.loss.kl_estimator, aggregation=cfg.loss.aggregation,
                                policy_loss=cfg.loss.policy_loss, num_sequences=max(n_seq, 1),
                                num_tokens=max(n_tok, 1), max_tokens=cfg.rollout.max_new_tokens)
                            backward(acc, loss)
                        loss_total += loss.item()
                        for key, value in m.items():
                            stats.setdefault(f"{key}@{it}", []).append(value)
                    if not fwd_slices:  # no row forwarded: the full update's gradients, zeros (Adam still steps)
                        zero_gradients(model)
                    grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=life.guard, loss=loss_total,
                                                        max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            success_rate = update_schedules(cfg, all_scored, [p for d in drawn for p in d["prompts"]],
                                            [g for d in drawn for g in d["sizes"]], curriculum, adaptive)
            metrics = {**reward_metrics(all_scored), **step_metrics(stats, cfg.loss.mu - 1, advantages, valid, flat_groups, batch, mask),
                       **({"train/kl": shaping_kl} if cfg.loss.kl_in_reward and shaping_kl is not None else {}),
                       **(dynamic.metrics() if dynamic is not None else {}),
                       **({"samples/overlong_masked": sum(d["overlong"] for d in drawn)} if cfg.rollout.overlong_mask else {}),
                       "train/loss": loss_total, "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                       "train/beta": beta, "train/temperature": temperature, "group_size/mean": sum(sizes) / len(sizes),
                       "curriculum/level": curriculum.level if cfg.curriculum.enabled else None,
                       "samples/failed": sum(not s.ok for s in all_scored), "train/skipped": int(not applied),
                       "train/active_rows": fwd_mask.shape[0] / max(rows_total, 1),
                       "curriculum/success_rate": success_rate}
            metrics = {k: v for k, v in metrics.items() if v is not None}
            components, totals = scorer.columns(scored)  # the trained batch's samples -> completions.jsonl, text checks
            life.log_samples(step + 1, [p[1] for p, g in zip(prompts, sizes) for _ in range(g)], batch.completions,
                             components, (masked_mean(advantages, mask, dim=-1) if advantages.dim() == 2 else advantages).tolist(),
                             total=totals)
            if kl_ctl is not None and "train/kl" in metrics:
                kl_ctl.update(metrics["train/kl"])
            if life.end_step(metrics, stop, postfix={"reward": "reward/total", "success": "curriculum/success_rate",
                                                     "eval_acc": "eval/accuracy"}):
                break
    return life.finish(tokenizer=tokenizer, failure=scorer.close(failure), reward_failures=scorer.monitor.counters(),
                       plots=["reward/total", "reward/success_rate", "eval/accuracy", "eval/format", "train/kl", "train/entropy",
                              "completion/length"],
                       **({} if held_out else {"eval_note": f"no held-out evaluation ran: {no_eval_reason(cfg.data)}"}))


def draw_and_score(cfg: GRPOConfig, life: Run, tokenizer, scorer: Scorer, sampler, curriculum, adaptive, *, step: int,
                   draw: int, temperature: float) -> dict:
    """One draw of the step: prompts (this process's share) -> G completions each -> scores, with DAPO's soft
    overlong penalty added as the component ``overlong`` when ``reward.overlong_penalty`` > 0 -> {prompts,
    sizes, parts, batch, scored, raw [N] (0 where failed), valid [N] (scored, and not truncated under
    ``rollout.overlong_mask``), overlong (rows masked for truncation)}. Raises RewardFailureError."""
    rank, world = life.rank, life.world
    with life.timer("sample"):
        prompts = sampler.draw(cfg.rollout.prompts_per_step, curriculum.level if cfg.curriculum.enabled else None)[rank::world]
        sizes = [adaptive.size(p[1], p[2].get("level")) if cfg.rollout.adaptive_group_size
                 else cfg.rollout.group_size for p in prompts]
    with life.timer("generate"):
        parts = sample_groups(life.plain, tokenizer, prompts, sizes, cfg.rollout, temperature=temperature,
                              seed=cfg.train.seed * 100003 + step * 97 + rank + draw * 1000003)
        batch = merge_rollouts(parts, tokenizer.pad_token_id)
    with life.timer("score"):
        rows_of = [i for i, g in enumerate(sizes) for _ in range(g)]
        scored = scorer(batch.completions, batch.completion_ids, batch.response_mask,
                        [prompts[i][2] for i in rows_of], [prompts[i][1] for i in rows_of])
        if cfg.reward.overlong_penalty > 0:
            penalty = cfg.reward.overlong_penalty * soft_overlong_penalty(
                batch.response_mask.sum(-1), cfg.rollout.max_new_tokens, cfg.reward.overlong_cache_tokens)
            scored = [dataclasses.replace(s, total=s.total + float(p), components={**s.components, "overlong": float(p)})
                      if s.ok else s for s, p in zip(scored, penalty)]
        valid = torch.tensor([s.ok for s in scored], dtype=torch.bool)
        not_cut = overlong_mask(batch.finish_reasons) if cfg.rollout.overlong_mask else torch.ones_like(valid)
        raw = torch.tensor([s.total if s.ok else 0.0 for s in scored], dtype=torch.float32)
    return {"prompts": prompts, "sizes": sizes, "parts": parts, "batch": batch, "scored": scored, "raw": raw,
            "valid": valid & not_cut, "overlong": int((valid & ~not_cut).sum())}


def group_of(draw: dict, g: int) -> tuple:
    """Group ``g`` of a draw: (its rollout part, prompt, size, scored samples, valid [size])."""
    start = sum(draw["sizes"][:g])
    rows = slice(start, start + draw["sizes"][g])
    return draw["parts"][g], draw["prompts"][g], draw["sizes"][g], draw["scored"][rows], draw["valid"][rows]


def update_schedules(cfg: GRPOConfig, scored, prompts, sizes, curriculum, adaptive) -> float:
    """The step's success rate; it advances the curriculum and updates the adaptive group sizes."""
    success = [s.success for s in scored if s.success is not None]
    success_rate = sum(success) / max(len(success), 1)
    if cfg.curriculum.enabled and curriculum.update(success_rate):
        log.warning("curriculum: success rate passed %.2f, moving to level %s", cfg.curriculum.threshold,
                    curriculum.level)
    if cfg.rollout.adaptive_group_size:
        start = 0
        for p, g in zip(prompts, sizes):
            ok = [s.success for s in scored[start:start + g] if s.success is not None]
            start += g
            if ok:
                adaptive.update(p[1], p[2].get("level"), sum(ok) / len(ok))
    return success_rate


def kl_reward_advantages(cfg: GRPOConfig, life: Run, batch, slices, raw, sizes, valid, mask, refs, *, beta: float,
                         temperature: float) -> tuple[torch.Tensor, float | None]:
    """``loss.kl_in_reward``: REINFORCE++'s token-level advantages [N, C] (``reinforce_pp_token_advantages``) from
    the group-baseline x of the raw rewards, the behaviour policy's logprobs (one forward without gradients, only
    when beta > 0) and the reference logprobs ``refs``; whitened over the tokens of ``mask``. Also returns the
    measured KL (mean over those tokens; None when beta == 0), which the adaptive KL controller reads."""
    x = reinforce_pp_baseline(raw, sizes, valid=valid)
    behaviour = ref = None
    if beta > 0:
        with torch.no_grad():
            behaviour = torch.cat([completion_logprobs(life.plain, batch, sl, temperature=temperature) for sl in slices])
        ref = torch.cat(refs).to(behaviour.dtype)
    advantages = reinforce_pp_token_advantages(x, behaviour, ref, mask, beta=beta, estimator=cfg.loss.kl_estimator,
                                               eps=cfg.loss.eps)
    kl = None if behaviour is None else float(masked_mean(kl_divergence(behaviour, ref, estimator=cfg.loss.kl_estimator),
                                                          mask))
    return advantages, kl


def active_rows(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Indices [R] of the rows that can move the gradient: a nonzero advantage (per sequence [N], or on some
    unmasked token of [N, C]; NaN counts as nonzero) and at least one token in ``mask``."""
    live = advantages != 0
    if live.dim() == 2:
        live = (live & mask.bool()).any(-1)
    return (live.to(mask.device) & (mask.sum(-1) > 0)).nonzero().squeeze(-1)


def select_rows(batch, rows: torch.Tensor):
    """The rows ``rows`` (ascending indices) of a GroupBatch, as one: same padding widths, groups still
    contiguous (``group_sizes`` counts the rows kept of each group, empty groups dropped)."""
    idx, sizes = rows.tolist(), batch.group_sizes
    if sum(sizes) == batch.prompt_ids.shape[0]:
        group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
        sizes = [int(n) for n in torch.bincount(group[idx], minlength=len(sizes)) if n > 0]
    return dataclasses.replace(
        batch, **{name: getattr(batch, name)[rows.to(getattr(batch, name).device)]
                  for name in ("prompt_ids", "prompt_mask", "completion_ids", "response_mask")},
        completions=[batch.completions[i] for i in idx], finish_reasons=[batch.finish_reasons[i] for i in idx],
        group_sizes=sizes)


def zero_gradients(model) -> None:
    """Zero gradients (not None) on every trainable parameter without one: an optimizer step with them is the
    step the full update would take when every row's advantage is 0 (AdamW's momentum and decay still act)."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def step_metrics(stats: dict, last: int, advantages, valid, flat_groups, batch, mask=None) -> dict:
    """Loss statistics of the last of the mu iterations (entropy of the first), advantages (per sequence [N]
    over the valid rows, or per token [N, C] over the tokens of ``mask``) and completions."""
    def mean_of(key):
        vals = stats.get(key)
        return float(torch.stack(vals).mean()) if vals else None

    if advantages.dim() == 2:
        advantages = advantages[mask.bool()]
        valid = torch.ones_like(advantages, dtype=torch.bool)
    return {"train/entropy": mean_of("entropy"), "train/kl": mean_of(f"kl@{last}"),
            "train/clip_fraction": mean_of(f"clip_fraction@{last}"),
            "train/clip_fraction/high": mean_of(f"clip_high_fraction@{last}"),
            "train/approx_kl_old": mean_of(f"approx_kl@{last}"),
            "advantage/mean": float(advantages[valid].mean()) if valid.any() else 0.0,
            "advantage/std": float(advantages[valid].std()) if valid.sum() > 1 else 0.0,
            "advantage/abs_max": float(advantages.abs().max()) if advantages.numel() else 0.0,
            "groups/zero_variance": float(flat_groups.float().mean()),
            "completion/length": float(batch.response_mask.sum(-1).float().mean()),
            "completion/truncated": sum(f == "length" for f in batch.finish_reasons) / len(batch.finish_reasons)}
