"""GRPO with verifiable rewards (lecture section 3; Shao et al. 2024, DeepSeek-R1).

    alignkit grpo -c configs/grpo/arith_tiny.yaml rollout.group_size=8

One step, as named and timed phases:
  sample      B prompts (the curriculum's current level, when on)
  generate    G completions per prompt through alignkit.rollout, at the scheduled temperature
  score       every reward component (alignkit.rewards; a trained reward model with ``reward.model``);
              a failed verifier leaves the sample out
  advantages  group-normalized: (r - mean_g) / (std_g + eps)            alignkit.advantages
  logprobs    reference logprobs (only when beta > 0)
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
"""

from __future__ import annotations

import copy
import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from alignkit.advantages import group_advantages, zero_variance_groups
from alignkit.config import ModelSection, OptimSection, OutputSection, RLRewardSection, Section, to_yaml
from alignkit.data.prompts import PromptDataSection, PromptSampler, load_prompts
from alignkit.infra import PhaseTimer, RunLogger, plot_metrics, progress, seed_everything
from alignkit.infra.checkpoint import GracefulStop, latest_checkpoint, load_checkpoint, save_checkpoint
from alignkit.infra.rundir import prepare_run_dir
from alignkit.infra.schedules import AdaptiveGroupSize, Curriculum, interpolate, piecewise_constant
from alignkit.infra.train import (
    NonFiniteGuard,
    backward,
    build_optimizer,
    build_scheduler,
    eval_summary,
    global_sum,
    optimizer_step,
    prepare_model,
    save_final,
    setup_accelerator,
)
from alignkit.losses import AGGREGATIONS, KL_ESTIMATORS, AdaptiveKLController, grpo_loss, masked_mean

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
    backend: Literal["native", "hf", "vllm"] = Field("native", description="sampler backend (vllm: refused until weight sync exists)")

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
    std_ddof: int = Field(0, ge=0, le=1, description="0 = population std (lecture), 1 = sample std (TRL)")
    scale_rewards: bool = Field(True, description="divide by the group std (false = Dr. GRPO)")
    eps: float = Field(1e-8, gt=0, description="added to the group std")
    filter_zero_variance: bool = Field(False, description="leave groups with all-equal rewards out of the loss")


class MonitorSection(Section):
    kl_limit: float = Field(0.1, gt=0, description="warn when the KL to the reference passes this")
    entropy_floor: float = Field(0.05, ge=0, description="warn when the mean token entropy falls below this")


class TrainSection(Section):
    steps: int = Field(100, gt=0, description="GRPO steps (batches of completions)")
    seed: int = Field(0, description="seed for prompts, sampling and initialization")
    eval_every: int = Field(25, gt=0, description="evaluate on held-out prompts every N steps (and at the end)")
    time_limit_s: float | None = Field(None, gt=0, description="end after the step that passes this many seconds "
                                       "since the run started (loading and evaluations included); None = no limit")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")


class GRPOConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy (and reference) model")
    data: PromptDataSection = Field(default_factory=PromptDataSection, description="prompts")
    curriculum: CurriculumSection = Field(default_factory=CurriculumSection, description="difficulty curriculum")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="sampling")
    reward: RLRewardSection = Field(default_factory=RLRewardSection,
                                    description="rule-based rewards and an optional trained reward model")
    loss: LossSection = Field(default_factory=LossSection, description="GRPO objective")
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=1e-4, warmup_steps=0, schedule="constant"),
                                description="optimizer")
    monitor: MonitorSection = Field(default_factory=MonitorSection, description="healthy ranges")
    train: TrainSection = Field(default_factory=TrainSection, description="loop")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="grpo"), description="where results go")


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------
# The step's phases
# ----------------------------------------------------------------------------------------------------------
def sample_completions(model, tokenizer, prompts, sizes, cfg: RolloutSection, *, temperature: float, seed: int):
    """Generate sizes[i] completions for prompt i (bucketed by size) -> (rows in prompt order, merged tensors)."""
    from alignkit.rollout import generate

    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(sizes):
        by_size.setdefault(g, []).append(i)
    parts = {}
    for g, idx in sorted(by_size.items()):
        out = generate(model, tokenizer, [prompts[i][0] for i in idx], num_samples=g,
                       max_new_tokens=cfg.max_new_tokens, temperature=temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, stop=cfg.stop or None, seed=seed + g, backend=cfg.backend)
        for j, i in enumerate(idx):
            parts[i] = (out, slice(j * g, (j + 1) * g))
    return [parts[i] for i in range(len(prompts))]


def merge_rollouts(parts, pad_id: int) -> dict:
    """Per-prompt slices of (possibly several) Rollouts -> one group-contiguous batch of padded tensors."""
    def cat(name, side):
        chunks = [getattr(out, name)[sl] for out, sl in parts]
        width = max(c.shape[1] for c in chunks)
        fill = pad_id if name.endswith("_ids") else 0
        padded = [torch.nn.functional.pad(c, (width - c.shape[1], 0) if side == "left" else (0, width - c.shape[1]),
                                          value=fill) for c in chunks]
        return torch.cat(padded)

    return {
        "prompt_ids": cat("prompt_ids", "left"), "prompt_mask": cat("prompt_mask", "left"),
        "completion_ids": cat("completion_ids", "right"), "response_mask": cat("response_mask", "right"),
        "completions": [c for out, sl in parts for c in out.completions[sl]],
        "finish_reasons": [f for out, sl in parts for f in out.finish_reasons[sl]],
    }


def completion_logprobs(model, batch: dict, rows: slice, *, temperature: float, entropy: bool = False):
    """Logprobs [R, C] (and entropies) of the completion tokens of ``rows``, prompt as context.

    Llama-family models (plain, unwrapped) take `alignkit.models.grouped`: each distinct prompt of the
    group-contiguous rows is computed once; others the plain forward over prompt + completion."""
    from alignkit.logprobs import sequence_logprobs
    from alignkit.models import grouped

    if grouped.supports(model):
        return grouped.grouped_completion_logprobs(
            model, batch["prompt_ids"][rows], batch["prompt_mask"][rows], batch["completion_ids"][rows],
            batch["response_mask"][rows], temperature=temperature, return_entropy=entropy)
    c = batch["completion_ids"].shape[1]
    ids = torch.cat([batch["prompt_ids"][rows], batch["completion_ids"][rows]], dim=1)
    attn = torch.cat([batch["prompt_mask"][rows], batch["response_mask"][rows]], dim=1)
    out = sequence_logprobs(model, ids, attn, temperature=temperature, logits_to_keep=c, return_entropy=entropy)
    return (out[0][:, -c:], out[1][:, -c:]) if entropy else out[:, -c:]


def health_warnings(m: dict, cfg: MonitorSection) -> list[str]:
    """Lines for metrics outside their healthy range."""
    out = []
    if m.get("kl", 0.0) > cfg.kl_limit:
        out.append(f"KL to the reference {m['kl']:.4f} > {cfg.kl_limit}: the policy is drifting")
    if "entropy" in m and m["entropy"] < cfg.entropy_floor:
        out.append(f"entropy {m['entropy']:.4f} < {cfg.entropy_floor}: collapse (samples nearly identical)")
    if m.get("groups/zero_variance", 0.0) >= 1.0:
        out.append("every group has all-equal rewards: no learning signal this step")
    if m.get("skipped"):
        out.append(f"non-finite loss or gradient norm (loss={m.get('loss')}, grad_norm={m.get('grad_norm')}): "
                   "the optimizer step was skipped")
    return out


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
def run(cfg: GRPOConfig) -> dict:
    """Train per ``cfg``; writes <output.dir>/<output.name>/ like every recipe; returns a summary."""
    from alignkit.evaluation import evaluate_model
    from alignkit.models import load_policy
    from alignkit.rewards import (
        RewardFailureError,
        RewardFailureMonitor,
        build_rewards,
        reward_metrics,
        score_with_model,
    )
    from alignkit.rollout.types import completion_id_lists

    started = time.perf_counter()
    acc = setup_accelerator(cfg.train.precision, dtype=cfg.model.dtype)
    world, rank = acc.num_processes, acc.process_index
    if cfg.rollout.prompts_per_step % world:
        raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must divide by the {world} "
                         f"processes; e.g. {world * max(1, cfg.rollout.prompts_per_step // world)}")
    seed_everything(cfg.train.seed + rank)
    run_dir = Path(cfg.output.dir) / cfg.output.name
    prepare_run_dir(run_dir, resume=cfg.output.resume, overwrite=cfg.output.overwrite, is_main=acc.is_main_process)
    model, tokenizer = load_policy(cfg.model)
    use_ref = cfg.loss.beta > 0 or (cfg.loss.beta_final or 0) > 0
    reference = None
    if use_ref and not cfg.model.lora.enabled:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    model = prepare_model(model, cfg.model)
    rewards = build_rewards(cfg.reward.weights, cfg.reward.options)
    reward_model = None
    if cfg.reward.model is not None:  # a trained reward model (alignkit rm): component "model"
        from alignkit.rewards.model_reward import ModelReward

        reward_model = ModelReward(cfg.reward.model, device=str(acc.device), batch_size=cfg.reward.model_batch_size)
    pools, held_out, dropped = load_prompts(cfg.data, tokenizer)
    optimizer = build_optimizer(model, cfg.optim)
    total_updates = cfg.train.steps * cfg.loss.mu
    scheduler = build_scheduler(optimizer, cfg.optim, total_updates)
    sampler = PromptSampler(pools, cfg.train.seed)
    levels = sorted(pools)
    curriculum = Curriculum(levels, threshold=cfg.curriculum.threshold, window=cfg.curriculum.window)
    adaptive = AdaptiveGroupSize(cfg.rollout.min_group_size, cfg.rollout.max_group_size, default=cfg.rollout.group_size)
    kl_ctl = AdaptiveKLController(cfg.loss.beta, cfg.loss.kl_target) if cfg.loss.kl_target else None

    start_step = 0
    ckpt = latest_checkpoint(run_dir) if cfg.output.resume else None
    if ckpt is not None:
        state, _ = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, optim=cfg.optim)
        start_step = state["step"]
        for obj, key in ((sampler, "sampler"), (curriculum, "curriculum"), (adaptive, "adaptive")):
            obj.load_state_dict(state[key])
        if kl_ctl is not None:
            kl_ctl.load_state_dict(state["kl"])
    model, optimizer = acc.prepare(model, optimizer)
    plain = acc.unwrap_model(model)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    logger = RunLogger(run_dir, tensorboard=cfg.output.tensorboard, enabled=acc.is_main_process,
                       resume_step=start_step if ckpt else None, wandb_project="alignkit" if cfg.output.wandb else None)
    guard, timer = NonFiniteGuard(cfg.output.max_bad_steps, run_dir=run_dir), PhaseTimer()

    monitor = RewardFailureMonitor(cfg.reward.max_failed_share, cfg.reward.failure_window)
    if not held_out and acc.is_main_process:
        log.warning("no held-out evaluation will run: data.train_file is set without data.eval_file")

    def evaluate() -> dict:
        if not held_out:
            return {}
        return {f"eval/{k}": v for k, v in evaluate_model(
            plain, tokenizer, held_out, max_new_tokens=cfg.rollout.max_new_tokens,
            rewards=rewards if cfg.data.eval_file else None, success_key=cfg.reward.success_key).items()}

    def ref_logprobs(batch, rows, temperature):
        if reference is not None:
            return completion_logprobs(reference, batch, rows, temperature=temperature)
        with plain.disable_adapter():  # LoRA: the reference is the base model
            return completion_logprobs(plain, batch, rows, temperature=temperature)

    def checkpoint(step):
        if acc.is_main_process:
            state = {"sampler": sampler.state_dict(), "curriculum": curriculum.state_dict(),
                     "adaptive": adaptive.state_dict(), "kl": kl_ctl.state_dict() if kl_ctl else None}
            save_checkpoint(run_dir, step, model=acc.unwrap_model(model), optimizer=optimizer, scheduler=scheduler,
                            state=state, keep_last=cfg.output.keep_last, guards=[guard])
        acc.wait_for_everyone()

    start_metrics = evaluate()
    if ckpt is None:
        logger.log(0, {**start_metrics, "data/dropped_prompts": dropped})
    metrics, t0, interrupted, time_up, step = dict(start_metrics), time.perf_counter(), False, False, start_step
    failure = None
    bar = progress(range(start_step, cfg.train.steps), desc="grpo", unit="step", disable=not acc.is_main_process,
                   initial=start_step, total=cfg.train.steps)
    with GracefulStop() as stop:
        for step in bar:
            temperature = piecewise_constant(step, cfg.rollout.temperature_schedule, cfg.rollout.temperature)
            if kl_ctl is not None:
                beta = kl_ctl.value
            else:
                beta = interpolate(step, cfg.train.steps, cfg.loss.beta,
                                   cfg.loss.beta if cfg.loss.beta_final is None else cfg.loss.beta_final)
            with timer("sample"):
                level = curriculum.level if cfg.curriculum.enabled else None
                prompts = sampler.draw(cfg.rollout.prompts_per_step, level)[rank::world]
                sizes = [adaptive.size(p[1], p[2].get("level")) if cfg.rollout.adaptive_group_size
                         else cfg.rollout.group_size for p in prompts]
            with timer("generate"):
                parts = sample_completions(plain, tokenizer, prompts, sizes, cfg.rollout, temperature=temperature,
                                           seed=cfg.train.seed * 100003 + step * 97 + rank)
                batch = merge_rollouts(parts, tokenizer.pad_token_id)
            with timer("score"):
                examples = [prompts[i][2] for i, g in enumerate(sizes) for _ in range(g)]
                scored = score_with_model(batch["completions"], examples,
                                          [prompts[i][1] for i, g in enumerate(sizes) for _ in range(g)], rewards,
                                          reward_model, model_weight=cfg.reward.model_weight,
                                          success_key=cfg.reward.success_key,
                                          completion_ids=completion_id_lists(batch["completion_ids"], batch["response_mask"]))
                try:
                    monitor.update(scored)
                except RewardFailureError as err:
                    failure = err
                    break
                valid = torch.tensor([s.ok for s in scored])
                raw = torch.tensor([s.total if s.ok else 0.0 for s in scored], dtype=torch.float32)
            with timer("advantages"):
                advantages = group_advantages(raw, sizes, eps=cfg.loss.eps, std_ddof=cfg.loss.std_ddof,
                                              scale=cfg.loss.scale_rewards, valid=valid)
                flat_groups = zero_variance_groups(advantages, sizes)  # all-equal valid rewards <=> all-zero advantages
                keep = valid.clone()
                if cfg.loss.filter_zero_variance:
                    keep &= ~torch.repeat_interleave(flat_groups, torch.tensor(sizes))
                mask = batch["response_mask"] * keep[:, None]
            rows_total = len(scored)
            micro = cfg.loss.micro_batch_size
            slices = [slice(i, min(i + micro, rows_total)) for i in range(0, rows_total, micro)]
            with timer("logprobs"):
                refs = None
                if beta > 0:
                    with torch.no_grad():
                        refs = [ref_logprobs(batch, sl, temperature) for sl in slices]
            n_seq = global_sum(acc, int((mask.sum(-1) > 0).sum()))
            n_tok = global_sum(acc, int(mask.sum()))
            with timer("update"):
                old, loss_stats = [None] * len(slices), {}
                for it in range(cfg.loss.mu):
                    loss_total = 0.0
                    for k, sl in enumerate(slices):
                        sync = acc.no_sync(model) if k < len(slices) - 1 else nullcontext()
                        with sync:
                            if it == 0:
                                lp, ent = completion_logprobs(model, batch, sl, temperature=temperature, entropy=True)
                                old[k] = lp.detach()
                                loss_stats.setdefault("entropy", []).append(masked_mean(ent.detach(), mask[sl]))
                            else:
                                lp = completion_logprobs(model, batch, sl, temperature=temperature)
                            loss, m = grpo_loss(
                                lp, old[k], refs[k] if refs else None, advantages[sl], mask[sl],
                                clip_eps=cfg.loss.clip_eps, clip_eps_high=cfg.loss.clip_eps_high, beta=beta,
                                kl_estimator=cfg.loss.kl_estimator, aggregation=cfg.loss.aggregation,
                                num_sequences=max(n_seq, 1), num_tokens=max(n_tok, 1),
                                max_tokens=cfg.rollout.max_new_tokens)
                            backward(acc, loss)
                        loss_total += loss.item()
                        for key, value in m.items():
                            loss_stats.setdefault(f"{key}@{it}", []).append(value)
                    grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=guard, loss=loss_total,
                                                        max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            success = [s.success for s in scored if s.success is not None]
            success_rate = sum(success) / max(len(success), 1)
            if cfg.curriculum.enabled and curriculum.update(success_rate):
                log.warning("curriculum: success rate passed %.2f, moving to level %s", cfg.curriculum.threshold,
                            curriculum.level)
            if cfg.rollout.adaptive_group_size:
                for i, (p, g) in enumerate(zip(prompts, sizes)):
                    ok = [s.success for s in scored[sum(sizes[:i]):sum(sizes[:i]) + g] if s.success is not None]
                    if ok:
                        adaptive.update(p[1], p[2].get("level"), sum(ok) / len(ok))

            last = cfg.loss.mu - 1

            def mean_of(key, stats=loss_stats):
                vals = stats.get(key)
                return float(torch.stack(vals).mean()) if vals else None

            metrics = {
                **reward_metrics(scored), "loss": loss_total, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                "beta": beta, "temperature": temperature, "entropy": mean_of("entropy"),
                "kl": mean_of(f"kl@{last}"), "clip_fraction": mean_of(f"clip_fraction@{last}"),
                "clip_fraction/high": mean_of(f"clip_high_fraction@{last}"), "approx_kl_old": mean_of(f"approx_kl@{last}"),
                "advantage/mean": float(advantages[valid].mean()) if valid.any() else 0.0,
                "advantage/std": float(advantages[valid].std()) if valid.sum() > 1 else 0.0,
                "advantage/abs_max": float(advantages.abs().max()),
                "groups/zero_variance": float(flat_groups.float().mean()), "samples/failed": int((~valid).sum()),
                "completion/length": float(batch["response_mask"].sum(-1).float().mean()),
                "completion/truncated": sum(f == "length" for f in batch["finish_reasons"]) / rows_total,
                "group_size/mean": sum(sizes) / len(sizes), "curriculum/level": curriculum.level if cfg.curriculum.enabled else None,
                "skipped": int(not applied),
            }
            metrics = {k: v for k, v in metrics.items() if v is not None}
            if kl_ctl is not None and "kl" in metrics:
                kl_ctl.update(metrics["kl"])
            done = step + 1
            time_up = cfg.train.time_limit_s is not None and time.perf_counter() - started >= cfg.train.time_limit_s
            time_up = bool(global_sum(acc, int(time_up)))  # every process stops at the same step
            if done % cfg.train.eval_every == 0 or done == cfg.train.steps or time_up:
                with timer("eval"):
                    metrics.update(evaluate())
            metrics.update(timer.summary())
            warnings = health_warnings(metrics, cfg.monitor)
            metrics["warnings"] = len(warnings)
            for w in warnings:
                log.warning("step %d: %s", done, w)
            logger.log(done, metrics)
            bar.set_postfix(reward=f"{metrics.get('reward/total', 0):.2f}", success=f"{success_rate:.2f}",
                            **({"eval_acc": f"{metrics['eval/accuracy']:.2f}"} if "eval/accuracy" in metrics else {}))
            interrupted = stop.requested
            if interrupted or (cfg.output.save_every and done % cfg.output.save_every == 0):
                checkpoint(done)
            if interrupted:
                break
            if time_up:
                log.warning("time limit of %.0f s reached after step %d of %d", cfg.train.time_limit_s, done,
                            cfg.train.steps)
                break
    logger.close()
    if failure is None:
        try:
            monitor.close()
        except RewardFailureError as err:
            failure = err
    summary = eval_summary(start_metrics, metrics,
               steps=step + 1, interrupted=interrupted, time_limit_reached=time_up, non_finite_steps=guard.total,
               wall_s=time.perf_counter() - t0, run_dir=str(run_dir), reward_failures=monitor.counters(),
               **({} if held_out else {"eval_note": "no held-out evaluation ran: set data.eval_file"}))
    if failure is not None:
        summary["stopped"] = str(failure)
        if acc.is_main_process:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        raise failure
    if acc.is_main_process and not interrupted:
        save_final(acc.unwrap_model(model), tokenizer, run_dir)
        plot_metrics(logger.path, run_dir / "curves.png",
                     ["reward/total", "reward/success_rate", "eval/accuracy", "eval/format", "kl", "entropy",
                      "completion/length"], title=cfg.output.name)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
