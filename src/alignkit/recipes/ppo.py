"""PPO for RLHF (lecture section 1; Schulman et al. 2017, Ziegler et al. 2019, InstructGPT 2022).

    alignkit ppo -c configs/ppo/arith_tiny.yaml                         rule-based reward (accuracy + format)
    alignkit ppo -c configs/ppo/classic_ppo.yaml       SFT model vs a reward model (configs/ppo/README.md)

One iteration, as named and timed phases:
  sample      B prompts
  generate    G completions per prompt through alignkit.rollout, at the sampling temperature
  score       the sequence reward: rule-based components (alignkit.rewards) and/or a reward model's score
  logprobs    old logprobs, values V(s_t) and reference logprobs, once per batch, without gradients
  advantages  token_rewards = -beta * KL_t (+ the sequence reward at the last response token); GAE (gamma,
              lambda) -> advantages and returns; advantages whitened                    alignkit.advantages
  update      K epochs of shuffled minibatches: -L^CLIP + c1 L^VF - c2 S              alignkit.losses
  log         metrics.jsonl / TensorBoard, the sampled completions to completions.jsonl, and a warning line
              when a metric leaves its healthy range (alignkit.infra.monitor)

The frame around these phases (resume, checkpoints with the critic and its optimizer, SIGTERM, time limit,
evaluation cadence, callbacks, final save) is the shared lifecycle, ``alignkit.infra.run.Run``; the batch
(``PPOBatch``), the forwards, the reference and the scorer come from rollout/, models/ and advantages.py.

Decisions, stated up front:
- KL to the reference is per-token reward shaping (InstructGPT): r_t = -beta * (logprob_t - ref_logprob_t)
  (``kl.estimator`` k1; k2/k3 available), plus the sequence reward at the last response token (the EOS, or
  the last token of a truncated completion). beta is fixed (``kl.controller: fixed``), or adapted once per
  iteration toward ``kl.target`` by the lecture's doubling/halving rule (``ppo``) or Ziegler's proportional
  rule. The KL the controller, the metrics and the alarm read is the mean per-token k3 estimate of
  KL(pi || pi_ref) over response tokens (non-negative, low variance). The controller updates once per
  iteration; in the first iterations, where KL is ~0, the doubling/halving rule halves beta every time and
  then needs as many doublings to catch up when KL rises: ``kl.beta_min`` / ``kl.beta_max`` bound it (off by
  default).
- Old logprobs and values are computed once per batch (no grad) before the K epochs, so the first
  minibatch has ratio 1 exactly. Logprobs are taken at the sampling temperature.
- Losses are token means over each minibatch (``loss.aggregation``), normalized by the minibatch's token
  count, so ``loss.micro_batch_size`` changes no number. Value loss (V - R)^2 without 1/2 (lecture), clipped
  PPO2-style with ``loss.value_clip``. The total is -ppo_objective(L^CLIP, L^VF, S; c1, c2).
- Critic: its own trunk (a copy of the policy's starting weights, or ``critic.path``: a model, a reward
  model -- its score weights start the head -- or a saved critic) with its own optimizer and LR; or
  ``critic.shared_trunk``: a value head on the policy's last hidden state (the value loss then also trains
  the policy's trunk). Policy and critic gradients are clipped separately. A new value head starts at zero
  (``critic.head_init_std``): values start at 0 and the first advantages come from the rewards alone. The
  critic's LR defaults to the policy's (``critic.lr``).
- Trust region (``loss.kl_stop``, the guard the lecture takes from TRPO; on by default at 0.02): the
  approximate KL(pi_old || pi) of each minibatch is measured in its forward pass; above the limit that step
  is not applied and the iteration's remaining epochs are skipped (Stable-Baselines3's target_kl, without the
  1.5 factor; Spinning Up's PPO stops at 0.015 by default).
- Safe on a real model at a new user's learning rate. With a random value head, a critic at 1e-3, the entropy
  bonus c2 = 0.01 over a 49k-token vocabulary and no trust region, PPO at lr 1e-5 on SmolLM2-135M moved the
  policy far in every iteration (approximate KL(pi_old || pi) 0.05-0.20, clip fraction 0.35-0.55) on advantages
  from a critic that began at explained variance -7 (docs/benchmarks.md, "Real-model learning"). So the
  defaults are a zero head, the policy's LR for the critic, no entropy bonus (``loss.ent_coef``) and the trust
  region; the tiny presets set the values they were measured with explicitly.
- ``loss.variant: kl_penalty`` is the lecture's alternative: no clipping, loss -(r_t A_t - beta_pen KL_t)
  with beta_pen adapted after each iteration by the doubling/halving rule toward ``loss.kl_penalty_target``.
- Advantage whitening uses the statistics of this process's batch (with several processes, of its share).
- Every forward (old / reference logprobs, values, the update) runs on the sequences packed without padding
  (``loss.packing``; rows of at most the padded width, no attention across sequences); it changes no number.
- A sample whose reward failed is counted, logged and left out of the loss (its mask is zeroed).
- beta = 0 with a fixed controller loads no reference model. With LoRA the reference is the policy with its
  adapters disabled.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from pydantic import Field, field_validator

from alignkit.advantages import gae, kl_shaped_token_rewards, whiten
from alignkit.config import ModelSection, OptimSection, OutputSection, RLRewardSection, Section
from alignkit.data.prompts import PromptDataSection, PromptSampler, load_prompts, no_eval_reason
from alignkit.evaluation import held_out_evaluation
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.monitor import MonitorSection, health_warnings  # noqa: F401  (part of the recipe's API)
from alignkit.infra.run import Run, no_sync_unless_last, time_limit_field
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
    AdaptiveKLController,
    aggregate_loss,
    kl_divergence,
    masked_mean,
    ppo_kl_penalty_loss,
    ppo_objective,
    ppo_policy_loss,
    value_loss,
)
from alignkit.models.forwards import critic_values, policy_forward
from alignkit.models.reference import completion_reference, frozen_copy
from alignkit.rollout.batches import PPOBatch, sample_rollout
from alignkit.rollout.scoring import Scorer

__all__ = ["PPOConfig", "PPOBatch", "MonitorSection", "compute_advantages", "critic_values", "explained_variance",
           "health_warnings", "minibatch_order", "policy_forward", "ppo_update", "run"]

log = logging.getLogger("alignkit.ppo")


class RolloutSection(Section):
    prompts_per_step: int = Field(32, gt=0, description="B: prompts per iteration (all processes together)")
    samples_per_prompt: int = Field(1, gt=0, description="G: completions per prompt (PPO needs no groups: 1)")
    max_new_tokens: int = Field(40, gt=0, description="longest completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (also divides the logits of the loss)")
    top_k: int | None = Field(None, gt=0, description="top-k filtering (None = off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus filtering (1 = off)")
    stop: list[str] = Field([], description="stop strings")
    backend: Literal["native", "hf", "vllm"] = Field("native", description="sampler backend (vllm: refused until weight sync exists)")

    @field_validator("backend")
    @classmethod
    def _vllm_needs_weight_sync(cls, backend: str) -> str:
        if backend == "vllm":
            raise ValueError("vllm cannot sample for PPO training yet: nothing syncs the trained weights into "
                             "vLLM, so it would keep sampling the initial model; use native or hf")
        return backend


class KLSection(Section):
    beta: float = Field(0.02, ge=0, description="initial / fixed coefficient of the per-token KL penalty in the reward")
    controller: Literal["fixed", "ppo", "proportional"] = Field(
        "fixed", description="fixed beta; 'ppo': the lecture's rule (KL > 1.5 target: x2, < target/1.5: /2); 'proportional': Ziegler et al.")
    target: float = Field(0.01, gt=0, description="adaptive controllers: target mean per-token KL to the reference")
    horizon: int = Field(10000, gt=0, description="proportional controller: horizon")
    beta_min: float = Field(0.0, ge=0, description="adaptive controllers: beta never goes below this")
    beta_max: float | None = Field(None, gt=0, description="adaptive controllers: beta never goes above this (None = no bound)")
    estimator: Literal[KL_ESTIMATORS] = Field("k1", description="per-token KL in the reward: k1 = logprob - ref_logprob (InstructGPT)")


class CriticSection(Section):
    path: str | None = Field(None, description="critic trunk: None = the policy's starting model; else a model, "
                             "reward-model (score weights start the head) or saved-critic directory")
    shared_trunk: bool = Field(False, description="value head on the policy's last hidden state instead of its own trunk")
    lr: float | None = Field(None, gt=0, description="critic learning rate (same warmup and schedule as the "
                             "policy); None = optim.lr")
    head_init_std: float = Field(0.0, ge=0, description="std of a new value head's weights; 0 = zeros: values start "
                                 "at 0, so the first advantages come from the rewards alone (a random head on a real "
                                 "model's hidden states starts far from the returns)")


class LossSection(Section):
    variant: Literal["clip", "kl_penalty"] = Field("clip", description="clipped surrogate, or the KL-penalty PPO (no clipping)")
    epochs: int = Field(4, gt=0, description="K: passes over each batch")
    minibatch_size: int = Field(8, gt=0, description="rows per optimizer step (the batch is shuffled each epoch)")
    micro_batch_size: int = Field(64, gt=0, description="rows per forward pass (any value; changes no number)")
    clip_eps: float = Field(0.2, gt=0, description="clip range 1 +- eps")
    value_clip: float | None = Field(None, gt=0, description="clip V around the old values by +- this (None = off)")
    vf_coef: float = Field(0.5, ge=0, description="c1: weight of the value loss")
    ent_coef: float = Field(0.0, ge=0, description="c2: weight of the entropy bonus (the lecture's 0.01 suits small "
                            "vocabularies; over a real model's tens of thousands of tokens it feeds the junk tail)")
    gamma: float = Field(0.99, ge=0, le=1, description="GAE discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(True, description="normalize advantages to mean 0, std 1 over the batch")
    aggregation: Literal[AGGREGATIONS] = Field("token_mean", description="loss aggregation over a minibatch")
    packing: bool = Field(True, description="forward each micro-batch's sequences packed without padding (no "
                          "cross-sequence attention); false = padded rows")
    kl_stop: float | None = Field(0.02, gt=0, description="trust region: stop the iteration's epochs when a "
                                  "minibatch's KL(pi_old || pi) passes this (None = off)")
    kl_penalty_beta: float = Field(1.0, gt=0, description="kl_penalty variant: initial beta of the KL(pi_old || pi) term")
    kl_penalty_target: float = Field(0.01, gt=0, description="kl_penalty variant: target KL(pi_old || pi) for adapting that beta")


class TrainSection(Section):
    steps: int = Field(100, gt=0, description="PPO iterations (batches of completions)")
    seed: int = Field(0, description="seed for prompts, sampling, shuffling and initialization")
    eval_every: int = Field(25, gt=0, description="evaluate on held-out prompts every N iterations (and at the end)")
    time_limit_s: float | None = time_limit_field()
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")


class PPOConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy (and reference) model")
    critic: CriticSection = Field(default_factory=CriticSection, description="value model")
    data: PromptDataSection = Field(default_factory=PromptDataSection, description="prompts")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="sampling")
    reward: RLRewardSection = Field(default_factory=RLRewardSection, description="sequence reward")
    kl: KLSection = Field(default_factory=KLSection, description="KL penalty to the reference in the reward")
    loss: LossSection = Field(default_factory=LossSection, description="PPO objective and epochs")
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=2e-4, warmup_steps=0, schedule="constant"),
                                description="policy optimizer (the critic's uses critic.lr)")
    monitor: MonitorSection = Field(default_factory=lambda: MonitorSection(kl_limit=0.05), description="healthy ranges")
    train: TrainSection = Field(default_factory=TrainSection, description="loop")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="ppo"), description="where results go")


# ----------------------------------------------------------------------------------------------------------
# The iteration's phases
# ----------------------------------------------------------------------------------------------------------
def compute_advantages(batch: PPOBatch, *, beta: float, estimator: str, gamma: float, lam: float,
                       whiten_advantages: bool) -> PPOBatch:
    """Fill ``kl``, ``token_rewards``, ``advantages`` and ``returns`` from the rewards, logprobs and values.

        token_rewards_t = -beta * KL_t  (+ rewards[b] at the row's last response token)   kl_shaped_token_rewards
        advantages, returns = gae(token_rewards, values, response_mask, gamma, lam);  advantages whitened
    Without a reference (``ref_logprobs`` None) KL is 0: the policy is its own reference.
    """
    mask = batch.response_mask
    ref = batch.ref_logprobs if batch.ref_logprobs is not None else batch.old_logprobs
    batch.kl = kl_divergence(batch.old_logprobs, ref, estimator=estimator) * mask
    batch.token_rewards = kl_shaped_token_rewards(batch.rewards, batch.old_logprobs, ref, mask, beta=beta,
                                                  estimator=estimator)
    advantages, batch.returns = gae(batch.token_rewards, batch.values, mask, gamma=gamma, lam=lam)
    batch.advantages = whiten(advantages, mask) if whiten_advantages else advantages
    return batch


@torch.no_grad()
def rollout_forwards(policy, critic, head, reference, batch: PPOBatch, *, temperature: float, micro: int,
                     packing: bool) -> float:
    """The logprobs phase, once per batch and without gradients: ``old_logprobs``, ``values`` (the critic's, or
    the shared head's from the same forward) and ``ref_logprobs`` (with a reference), in micro-batches of
    ``micro`` rows; returns the rollout's mean token entropy."""
    n = batch.response_mask.shape[0]
    slices = [slice(i, min(i + micro, n)) for i in range(0, n, micro)]
    parts = [policy_forward(policy, batch, sl, temperature=temperature, entropy=True, head=head, packing=packing)
             for sl in slices]
    batch.old_logprobs = torch.cat([p[0] for p in parts])
    batch.values = torch.cat([p[2] if head is not None else critic_values(critic, batch, sl, packing=packing)
                              for p, sl in zip(parts, slices)])
    if reference is not False:  # False: no reference at all (beta 0); None: the adapter-disabled policy
        def forward(model, b, rows, temperature):
            return policy_forward(model, b, rows, temperature=temperature, packing=packing)[0]

        batch.ref_logprobs = torch.cat([completion_reference(reference, policy, batch, sl, temperature=temperature,
                                                             forward=forward) for sl in slices])
    return float(masked_mean(torch.cat([p[1] for p in parts]), batch.response_mask))


def minibatch_order(n: int, *, seed: int, step: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch (a pure function of seed, iteration and epoch: resumable)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over response tokens: 1 = perfect critic, 0 = no better than a constant."""
    var_r = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)).square(), mask)
    return float(1 - var_d / var_r) if var_r > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------
# The update: K epochs of shuffled minibatches
# ----------------------------------------------------------------------------------------------------------
def ppo_update(policy, critic, head, batch: PPOBatch, cfg: PPOConfig, *, acc, opts, temperature: float,
               beta_pen: float, step: int) -> dict:
    """K epochs over ``batch``; returns the minibatch-averaged metrics of the last epoch and counters.

    ``opts``: (policy optimizer, policy scheduler, policy guard, critic optimizer, critic scheduler, critic
    guard). ``critic`` is None with a shared head (``head`` then gives the values in the policy's forward).
    """
    lc = cfg.loss
    mask = batch.response_mask
    n = mask.shape[0]
    stats: dict[str, list] = {}
    steps_done, stopped_early = 0, False
    for epoch in range(lc.epochs):
        order = minibatch_order(n, seed=cfg.train.seed, step=step, epoch=epoch)
        for start in range(0, n, lc.minibatch_size):
            rows = order[start:start + lc.minibatch_size]
            n_tok = max(global_sum(acc, int(mask[rows].sum())), 1.0)
            n_seq = max(global_sum(acc, int((mask[rows].sum(-1) > 0).sum())), 1.0)
            sums: dict[str, float] = {}
            for k in range(0, len(rows), lc.micro_batch_size):
                r = rows[k:k + lc.micro_batch_size]
                m = mask[r]
                with no_sync_unless_last(acc, [policy, critic if critic is not None else head],
                                         k // lc.micro_batch_size, math.ceil(len(rows) / lc.micro_batch_size)):
                    lp, ent, v = policy_forward(policy, batch, r, temperature=temperature, entropy=True, head=head,
                                                packing=lc.packing)
                    if critic is not None:
                        v = critic_values(critic, batch, r, packing=lc.packing)
                    if lc.variant == "clip":
                        pol_tok, pm = ppo_policy_loss(lp, batch.old_logprobs[r], batch.advantages[r], m,
                                                      clip_eps=lc.clip_eps)
                    else:
                        pol_tok, pm = ppo_kl_penalty_loss(lp, batch.old_logprobs[r], batch.advantages[r], m,
                                                          beta=beta_pen)
                    vf_tok, vm = value_loss(v, batch.returns[r], m, old_values=batch.values[r],
                                            clip_range=lc.value_clip)
                    agg = dict(mode=lc.aggregation, num_sequences=n_seq, num_tokens=n_tok,
                               max_tokens=cfg.rollout.max_new_tokens)
                    pg = aggregate_loss(pol_tok, m, **agg)
                    vf = aggregate_loss(vf_tok, m, **agg)
                    entropy = aggregate_loss(ent, m, **agg)
                    loss = -ppo_objective(-pg, vf, entropy, c1=lc.vf_coef, c2=lc.ent_coef)
                    backward(acc, loss)
                share = float(m.sum()) / n_tok  # token-weighted means of the per-micro-batch metrics
                values = {"loss": loss.item(), "policy_loss": pg.item(), "value_loss": vf.item(),
                          "entropy_bonus": entropy.item(), **{k2: float(x) * share for k2, x in {**pm, **vm}.items()}}
                for key, val in values.items():
                    sums[key] = sums.get(key, 0.0) + val
            kl_old = global_sum(acc, sums.get("approx_kl", 0.0))  # the minibatch's token mean, all processes
            if lc.kl_stop is not None and kl_old > lc.kl_stop:
                for opt in (opts[0], opts[3]):
                    opt.zero_grad(set_to_none=True)
                stopped_early = True
                log.info("iteration %d: KL(old||new) %.4f > kl_stop %.4f at epoch %d: stopping the iteration",
                         step + 1, kl_old, lc.kl_stop, epoch)
                break
            p_opt, p_sched, p_guard, c_opt, c_sched, c_guard = opts
            gn, applied = optimizer_step(policy, p_opt, p_sched, guard=p_guard, loss=sums["loss"],
                                         max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            cgn, c_applied = optimizer_step(critic if critic is not None else head, c_opt, c_sched, guard=c_guard,
                                            loss=sums["loss"], max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            sums.update(grad_norm=gn, critic_grad_norm=cgn, skipped=float(not (applied and c_applied)))
            steps_done += 1
            for key, val in sums.items():
                stats.setdefault(f"{key}@{epoch}", []).append(val)
        if stopped_early:
            break
    last = max((int(k.rsplit("@", 1)[1]) for k in stats), default=0)
    out = {k.rsplit("@", 1)[0]: sum(v) / len(v) for k, v in stats.items() if k.endswith(f"@{last}")}
    out.update(optimizer_steps=steps_done, early_stopped=int(stopped_early), epochs_done=last + 1,
               skipped_steps=int(sum(sum(v) for k, v in stats.items() if k.startswith("skipped@"))))
    return out


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
def build_critic(cfg: PPOConfig, policy):
    """-> (critic with its own trunk or None, shared head or None)."""
    from alignkit.models.loading import DTYPES
    from alignkit.models.value import SharedValueHead, ValueModel

    if cfg.critic.shared_trunk:
        if cfg.critic.path is not None:
            raise ValueError("critic.path and critic.shared_trunk exclude each other: a shared head reads the policy")
        return None, SharedValueHead.for_policy(policy, seed=cfg.train.seed, std=cfg.critic.head_init_std)
    if cfg.critic.path is None:
        return ValueModel.from_causal_lm(policy, seed=cfg.train.seed, std=cfg.critic.head_init_std), None
    from alignkit.models import resolve_model_path

    return ValueModel.from_pretrained(resolve_model_path(cfg.critic.path), seed=cfg.train.seed,
                                      dtype=DTYPES.get(cfg.model.dtype, torch.float32),
                                      std=cfg.critic.head_init_std), None


def check_config(cfg: PPOConfig, world: int) -> None:
    if cfg.critic.shared_trunk and world > 1:
        raise ValueError("critic.shared_trunk runs on one process for now; use a separate critic with several")
    if cfg.kl.controller != "fixed" and cfg.kl.beta <= 0:
        raise ValueError("an adaptive KL controller needs kl.beta > 0 to start from (x2 / /2 of 0 stays 0)")


def save_critic(critic, head):
    """``final/``'s companion ``critic/``: the critic's trunk and head, or the shared value head."""
    def save(run_dir):
        if critic is not None:
            critic.save_pretrained(run_dir / "critic")
        else:
            from safetensors.torch import save_model

            (run_dir / "critic").mkdir(exist_ok=True)
            save_model(head, str(run_dir / "critic" / "shared_value_head.safetensors"))
    return save


def step_metrics(batch: PPOBatch, upd: dict, beta: float, rollout_entropy: float, raw_mask) -> dict:
    """The iteration's metrics besides the rewards: KL to the reference (mean per-token k3; 0 without one), the
    KL in the reward, value-function fit, completions (``raw_mask``: before failed samples were zeroed)."""
    mask = batch.response_mask
    kl_ref = (masked_mean(kl_divergence(batch.old_logprobs, batch.ref_logprobs, estimator="k3"), mask)
              if batch.ref_logprobs is not None else torch.tensor(0.0))
    return {**{f"train/{k}": v for k, v in upd.items() if v is not None},
            "train/entropy": rollout_entropy, "train/kl": float(kl_ref),
            "train/kl/penalty_estimate": float(masked_mean(batch.kl, mask)),
            "train/beta": beta, "train/kl/sequence": float((batch.kl * mask).sum(-1).mean()),
            "reward/non_score": float((-beta * batch.kl).sum(-1).mean()),
            "value/explained_variance": explained_variance(batch.values, batch.returns, mask),
            "value/mean": float(masked_mean(batch.values, mask)), "returns/mean": float(masked_mean(batch.returns, mask)),
            "completion/length": float(raw_mask.sum(-1).float().mean()),
            "completion/truncated": sum(f == "length" for f in batch.finish_reasons) / len(batch.finish_reasons)}


# ----------------------------------------------------------------------------------------------------------
# The loop: sample -> generate -> score -> logprobs -> advantages -> update -> log
# ----------------------------------------------------------------------------------------------------------
def run(cfg: PPOConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None, reward_funcs=None,
        callbacks=None) -> dict:
    """Train per ``cfg``; writes <output.dir>/<output.name>/ like every recipe (plus critic/); returns a summary.

    Python API (docs/python_api.md): ``model`` + ``tokenizer`` replace ``model.path``; ``train_dataset`` /
    ``eval_dataset`` (prompt rows with their ground-truth fields) replace the data files; ``reward_funcs``
    (callables ``fn(completion, **fields) -> float``, a list or {name: fn}) replace ``reward.weights``;
    ``callbacks``: ``fn(step, metrics)`` for every logged row."""
    from alignkit.models import load_policy
    from alignkit.rewards import RewardFailureError, reward_metrics

    life = Run(cfg, desc="ppo", seed=cfg.train.seed, seed_per_rank=True, unit="it", callbacks=callbacks)
    world, rank, acc = life.world, life.rank, life.acc
    life.require_divisible(cfg.rollout.prompts_per_step, "rollout.prompts_per_step", "processes", world)
    check_config(cfg, world)
    if model is None:
        model, tokenizer = load_policy(cfg.model)
    reference = (frozen_copy(model) if not cfg.model.lora.enabled else None) if cfg.kl.beta > 0 else False
    critic, head = build_critic(cfg, model)
    model = prepare_model(model, cfg.model)
    scorer = Scorer(cfg.reward, device=str(acc.device), reward_funcs=reward_funcs)
    pools, held_out, dropped = load_prompts(cfg.data, tokenizer, train_records=train_dataset, eval_records=eval_dataset)
    critic_optim_cfg = cfg.optim.model_copy(update={"lr": cfg.critic.lr or cfg.optim.lr})
    optimizer = build_optimizer(model, cfg.optim)
    critic_optim = build_optimizer(critic if critic is not None else head, critic_optim_cfg)
    rows_per_process = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt // world
    total = cfg.train.steps * cfg.loss.epochs * math.ceil(rows_per_process / cfg.loss.minibatch_size)
    scheduler, critic_sched = build_scheduler(optimizer, cfg.optim, total), build_scheduler(critic_optim, cfg.optim, total)
    sampler = PromptSampler(pools, cfg.train.seed)
    kl_ctl = (AdaptiveKLController(cfg.kl.beta, cfg.kl.target, rule=cfg.kl.controller, horizon=cfg.kl.horizon)
              if cfg.kl.controller != "fixed" else None)
    pen_ctl = AdaptiveKLController(cfg.loss.kl_penalty_beta, cfg.loss.kl_penalty_target)
    model, optimizer, critic_module, critic_optim = life.setup(
        model, optimizer, scheduler, objects={"sampler": sampler, "kl_penalty": pen_ctl, **({"kl": kl_ctl} if kl_ctl else {})},
        extras={"critic": (critic if critic is not None else head, critic_optim, critic_sched, critic_optim_cfg)})
    critic, head = (None, acc.unwrap_model(critic_module)) if cfg.critic.shared_trunk else (critic_module, None)
    opts = (optimizer, scheduler, life.guard, critic_optim, critic_sched, life.add_guard())
    if not held_out and life.is_main:
        log.warning("no held-out evaluation will run: %s", no_eval_reason(cfg.data))
    life.begin(held_out_evaluation(lambda: life.plain, tokenizer, held_out, max_new_tokens=cfg.rollout.max_new_tokens,
                                   rewards=scorer.rewards if cfg.data.eval_file or eval_dataset is not None else None,
                                   success_key=cfg.reward.success_key), {"data/dropped_prompts": dropped})
    temperature, g = cfg.rollout.temperature, cfg.rollout.samples_per_prompt

    failure = None
    with GracefulStop() as stop:
        for step in life.steps():
            beta = kl_ctl.value if kl_ctl is not None else cfg.kl.beta
            with life.timer("sample"):
                prompts = sampler.draw(cfg.rollout.prompts_per_step)[rank::world]
            with life.timer("generate"):
                out = sample_rollout(life.plain, tokenizer, [p[0] for p in prompts], g, cfg.rollout,
                                     temperature=temperature, seed=cfg.train.seed * 100003 + step * 97 + rank)
            with life.timer("score"):
                try:
                    scored = scorer(out.completions, out.completion_ids, out.response_mask,
                                    [p[2] for p in prompts for _ in range(g)], [p[1] for p in prompts for _ in range(g)])
                except RewardFailureError as err:
                    failure = err
                    break
                valid = torch.tensor([s.ok for s in scored])
                batch = PPOBatch.from_rollout(out, torch.tensor([s.total if s.ok else 0.0 for s in scored]), valid)
            with life.timer("logprobs"):
                entropy = rollout_forwards(life.plain, critic, head, reference, batch, temperature=temperature,
                                           micro=cfg.loss.micro_batch_size, packing=cfg.loss.packing)
            with life.timer("advantages"):
                compute_advantages(batch, beta=beta, estimator=cfg.kl.estimator, gamma=cfg.loss.gamma,
                                   lam=cfg.loss.lam, whiten_advantages=cfg.loss.whiten_advantages)
            with life.timer("update"):
                upd = ppo_update(model, critic, head, batch, cfg, acc=acc, opts=opts, temperature=temperature,
                                 beta_pen=pen_ctl.value, step=step)
            metrics = {**reward_metrics(scored), **step_metrics(batch, upd, beta, entropy, out.response_mask),
                       "train/lr": scheduler.get_last_lr()[0], "train/critic_lr": critic_sched.get_last_lr()[0],
                       "samples/failed": int((~valid).sum())}
            if cfg.loss.variant == "kl_penalty":
                metrics["train/kl_penalty/beta"] = pen_ctl.value
                pen_ctl.update(upd.get("approx_kl", 0.0))
            if kl_ctl is not None:
                kl_ctl.update(metrics["train/kl"], n_steps=len(scored))  # n_steps: the proportional rule's (Ziegler: samples)
                kl_ctl.value = min(max(kl_ctl.value, cfg.kl.beta_min), cfg.kl.beta_max or float("inf"))
            components, totals = scorer.columns(scored)
            life.log_samples(step + 1, [p[1] for p in prompts for _ in range(g)], batch.completions, components,
                             total=totals)
            if life.end_step(metrics, stop, postfix={"reward": "reward/total", "kl": "train/kl", "eval_acc": "eval/accuracy"}):
                break
    return life.finish(tokenizer=tokenizer, failure=scorer.close(failure), reward_failures=scorer.monitor.counters(),
                       save=save_critic(acc.unwrap_model(critic) if critic is not None else None, head),
                       plots=["reward/total", "reward/model", "eval/accuracy", "train/kl", "train/beta", "train/entropy",
                              "train/value_loss",
                              "value/explained_variance", "completion/length"],
                       **({} if held_out else {"eval_note": f"no held-out evaluation ran: {no_eval_reason(cfg.data)}"}))
