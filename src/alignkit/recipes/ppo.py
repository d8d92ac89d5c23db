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
  log         metrics.jsonl / TensorBoard, and a warning when KL or entropy leave their healthy range

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
  the policy's trunk). Policy and critic gradients are clipped separately.
- Trust region (``loss.kl_stop``, the guard the lecture takes from TRPO): the approximate KL(pi_old || pi)
  of each minibatch is measured in its forward pass; above the limit that step is not applied and the
  iteration's remaining epochs are skipped (Stable-Baselines3's target_kl, without the 1.5 factor).
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

import copy
import json
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from alignkit.advantages import gae, whiten
from alignkit.config import ModelSection, OptimSection, OutputSection, RLRewardSection, Section, to_yaml
from alignkit.data.prompts import PromptDataSection, PromptSampler, load_prompts
from alignkit.infra import PhaseTimer, RunLogger, plot_metrics, progress, seed_everything
from alignkit.infra.checkpoint import (
    GracefulStop,
    apply_optim_settings,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.infra.rundir import prepare_run_dir
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
    lr: float = Field(1e-3, gt=0, description="critic learning rate (same warmup and schedule as the policy)")


class LossSection(Section):
    variant: Literal["clip", "kl_penalty"] = Field("clip", description="clipped surrogate, or the KL-penalty PPO (no clipping)")
    epochs: int = Field(4, gt=0, description="K: passes over each batch")
    minibatch_size: int = Field(8, gt=0, description="rows per optimizer step (the batch is shuffled each epoch)")
    micro_batch_size: int = Field(64, gt=0, description="rows per forward pass (any value; changes no number)")
    clip_eps: float = Field(0.2, gt=0, description="clip range 1 +- eps")
    value_clip: float | None = Field(None, gt=0, description="clip V around the old values by +- this (None = off)")
    vf_coef: float = Field(0.5, ge=0, description="c1: weight of the value loss")
    ent_coef: float = Field(0.01, ge=0, description="c2: weight of the entropy bonus")
    gamma: float = Field(0.99, ge=0, le=1, description="GAE discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(True, description="normalize advantages to mean 0, std 1 over the batch")
    aggregation: Literal[AGGREGATIONS] = Field("token_mean", description="loss aggregation over a minibatch")
    packing: bool = Field(True, description="forward each micro-batch's sequences packed without padding (no "
                          "cross-sequence attention); false = padded rows")
    kl_stop: float | None = Field(None, gt=0, description="trust region: stop the iteration when KL(pi_old || pi) passes this")
    kl_penalty_beta: float = Field(1.0, gt=0, description="kl_penalty variant: initial beta of the KL(pi_old || pi) term")
    kl_penalty_target: float = Field(0.01, gt=0, description="kl_penalty variant: target KL(pi_old || pi) for adapting that beta")


class MonitorSection(Section):
    kl_alarm: float = Field(0.05, gt=0, description="warn when the KL to the reference passes this (lecture: 0.05)")
    entropy_floor: float = Field(0.05, ge=0, description="warn when the mean token entropy falls below this")
    hacking_window: int = Field(10, gt=0, description="reward-hacking check: compare with this many iterations ago")
    entropy_drop: float = Field(0.5, gt=0, lt=1, description="reward-hacking check: warn if reward rose while entropy fell below this share")


class TrainSection(Section):
    steps: int = Field(100, gt=0, description="PPO iterations (batches of completions)")
    seed: int = Field(0, description="seed for prompts, sampling, shuffling and initialization")
    eval_every: int = Field(25, gt=0, description="evaluate on held-out prompts every N iterations (and at the end)")
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
    monitor: MonitorSection = Field(default_factory=MonitorSection, description="healthy ranges")
    train: TrainSection = Field(default_factory=TrainSection, description="loop")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="ppo"), description="where results go")


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------
# The iteration's phases
# ----------------------------------------------------------------------------------------------------------
@dataclass
class PPOBatch:
    """One iteration's rollouts and everything computed from them before the update (B rows, C = longest
    completion; every [B, C] tensor is aligned with ``completion_ids``, 0 where ``response_mask`` is 0).

    prompt_ids, prompt_mask: [B, P] left-padded prompts.  completion_ids, response_mask: [B, C] right-padded
    (the mask covers the EOS; zeroed for samples whose reward failed).  rewards: [B] sequence rewards (raw,
    0 for failed samples).  old_logprobs, ref_logprobs, values: [B, C] before the update (ref None without a
    reference).  kl: [B, C] per-token KL estimate in the reward.  token_rewards, advantages (whitened when
    asked), returns: [B, C].
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def sequences(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [R, P + C] of ``rows``: prompt then completion."""
        return (torch.cat([self.prompt_ids[rows], self.completion_ids[rows]], dim=1),
                torch.cat([self.prompt_mask[rows], self.response_mask[rows]], dim=1))

    def packed(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sequences of ``rows`` without padding, packed into rows of at most P + C tokens (so attention is
        never wider than the padded layout) -> (input_ids, attention_mask, position_ids) [N, P + C] and
        ``index`` [R, C]: the flat position (in N * (P + C)) of each completion token (0 past a row's end).
        Rows with an empty ``response_mask`` are left out. See ``alignkit.data.packing``."""
        from alignkit.data.packing import pack_rows

        idx = torch.arange(self.prompt_ids.shape[0])[rows].tolist()
        P, C = self.prompt_ids.shape[1], self.completion_ids.shape[1]
        width = P + C
        p_len = self.prompt_mask[idx].sum(-1).tolist()
        n_len = self.response_mask[idx].sum(-1).tolist()
        live = [i for i in range(len(idx)) if n_len[i] > 0]
        bins = pack_rows([p_len[i] + n_len[i] for i in live], width) if live else [[]]
        ids = self.prompt_ids.new_zeros(len(bins), width)
        attn, pos = torch.zeros_like(ids), torch.zeros_like(ids)
        index = torch.zeros(len(idx), C, dtype=torch.long)
        for b, group in enumerate(bins):
            col = 0
            for i in (live[k] for k in group):
                r, p, n = idx[i], p_len[i], n_len[i]
                ids[b, col:col + p + n] = torch.cat([self.prompt_ids[r, P - p:], self.completion_ids[r, :n]])
                attn[b, col:col + p + n] = 1
                pos[b, col:col + p + n] = torch.arange(p + n)
                index[i, :n] = b * width + col + p + torch.arange(n)
                col += p + n
            pos[b, col:] = torch.arange(width - col)  # trailing padding: a block of its own
        return ids, attn, pos, index.to(ids.device)


def policy_forward(model, batch: PPOBatch, rows, *, temperature: float, entropy: bool = False, head=None,
                   packing: bool = True):
    """Completion logprobs [R, C] (and entropies, and the shared head's values) of ``rows``; 0 past each
    row's end. ``packing``: one forward over the packed sequences (``PPOBatch.packed``) instead of padded rows."""
    from alignkit.logprobs import sequence_logprobs

    c, mask = batch.completion_ids.shape[1], batch.response_mask[rows]
    if packing:
        ids, attn, pos, index = batch.packed(rows)

        def take(x):  # [N, W] packed -> [R, C] aligned with the completions
            return x.reshape(-1)[index] * mask
    else:
        (ids, attn), pos = batch.sequences(rows), None

        def take(x):
            return x[:, -c:] * mask
    with head.capture(model) if head is not None else ExitStack():
        out = sequence_logprobs(model, ids, attn, temperature=temperature, return_entropy=entropy, position_ids=pos,
                                logits_to_keep=None if packing else c)
    lp, ent = (take(out[0]), take(out[1])) if entropy else (take(out), None)
    values = take(head.values(attn, pos)) if head is not None else None
    return lp, ent, values


def critic_values(critic, batch: PPOBatch, rows, *, packing: bool = True) -> torch.Tensor:
    """V(s_t) [R, C] for each completion token of ``rows`` from a critic with its own trunk (0 past the end)."""
    mask = batch.response_mask[rows]
    if packing:
        ids, attn, pos, index = batch.packed(rows)
        return critic(ids, attn, pos).reshape(-1)[index] * mask
    ids, attn = batch.sequences(rows)
    return critic(ids, attn)[:, -batch.completion_ids.shape[1]:] * mask


def compute_advantages(batch: PPOBatch, *, beta: float, estimator: str, gamma: float, lam: float,
                       whiten_advantages: bool) -> PPOBatch:
    """Fill ``kl``, ``token_rewards``, ``advantages`` and ``returns`` from the rewards, logprobs and values.

        token_rewards_t = -beta * KL_t  (+ rewards[b] at the row's last response token)
        advantages, returns = gae(token_rewards, values, response_mask, gamma, lam);  advantages whitened
    """
    mask = batch.response_mask
    kl = (kl_divergence(batch.old_logprobs, batch.ref_logprobs, estimator=estimator) * mask
          if batch.ref_logprobs is not None else torch.zeros_like(batch.old_logprobs))
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1, keepdim=True)  # last response token of each row
    score = torch.zeros_like(kl).scatter_(1, last, batch.rewards[:, None].to(kl.dtype)) * mask
    batch.kl, batch.token_rewards = kl, -beta * kl + score
    advantages, batch.returns = gae(batch.token_rewards, batch.values, mask, gamma=gamma, lam=lam)
    batch.advantages = whiten(advantages, mask) if whiten_advantages else advantages
    return batch


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


def health_warnings(m: dict, cfg: MonitorSection, history: list) -> list[str]:
    """Lines for metrics outside their healthy range; ``history`` holds [reward, entropy] of past iterations."""
    out = []
    if m.get("kl", 0.0) > cfg.kl_alarm:
        out.append(f"KL to the reference {m['kl']:.4f} > {cfg.kl_alarm}: the policy is drifting (lecture's alarm)")
    if "entropy" in m and m["entropy"] < cfg.entropy_floor:
        out.append(f"entropy {m['entropy']:.4f} < {cfg.entropy_floor}: collapse (samples nearly identical)")
    if len(history) >= cfg.hacking_window and "reward/total" in m and "entropy" in m:
        reward0, entropy0 = history[-cfg.hacking_window]
        if m["reward/total"] > reward0 and m["entropy"] < cfg.entropy_drop * entropy0:
            out.append(f"reward rose ({reward0:.3f} -> {m['reward/total']:.3f}) while entropy collapsed ({entropy0:.3f} "
                       f"-> {m['entropy']:.3f}) over {cfg.hacking_window} iterations: possible reward hacking")
    return out


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
                with ExitStack() as sync:
                    if k + lc.micro_batch_size < len(rows):  # DDP: all-reduce gradients on the last micro-batch only
                        for module in (policy, critic if critic is not None else head):
                            sync.enter_context(acc.no_sync(module))
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
        return None, SharedValueHead.for_policy(policy, seed=cfg.train.seed)
    if cfg.critic.path is None:
        return ValueModel.from_causal_lm(policy, seed=cfg.train.seed), None
    from alignkit.models import resolve_model_path

    return ValueModel.from_pretrained(resolve_model_path(cfg.critic.path), seed=cfg.train.seed,
                                      dtype=DTYPES.get(cfg.model.dtype, torch.float32)), None


def run(cfg: PPOConfig) -> dict:
    """Train per ``cfg``; writes <output.dir>/<output.name>/ like every recipe (plus critic/); returns a summary."""
    from alignkit.evaluation import evaluate_model
    from alignkit.models import load_policy
    from alignkit.rewards import (
        RewardFailureError,
        RewardFailureMonitor,
        build_rewards,
        reward_metrics,
        score_with_model,
    )
    from alignkit.rollout import generate
    from alignkit.rollout.types import completion_id_lists

    acc = setup_accelerator(cfg.train.precision, dtype=cfg.model.dtype)
    world, rank = acc.num_processes, acc.process_index
    if cfg.rollout.prompts_per_step % world:
        raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must divide by the {world} "
                         f"processes; e.g. {world * max(1, cfg.rollout.prompts_per_step // world)}")
    if cfg.critic.shared_trunk and world > 1:
        raise ValueError("critic.shared_trunk runs on one process for now; use a separate critic with several")
    if cfg.kl.controller != "fixed" and cfg.kl.beta <= 0:
        raise ValueError("an adaptive KL controller needs kl.beta > 0 to start from (x2 / /2 of 0 stays 0)")
    seed_everything(cfg.train.seed + rank)
    run_dir = Path(cfg.output.dir) / cfg.output.name
    prepare_run_dir(run_dir, resume=cfg.output.resume, overwrite=cfg.output.overwrite, is_main=acc.is_main_process)
    model, tokenizer = load_policy(cfg.model)
    use_ref = cfg.kl.beta > 0
    reference = copy.deepcopy(model).eval().requires_grad_(False) if use_ref and not cfg.model.lora.enabled else None
    critic, head = build_critic(cfg, model)
    model = prepare_model(model, cfg.model)
    rewards = build_rewards(cfg.reward.weights, cfg.reward.options)
    reward_model = None
    if cfg.reward.model is not None:
        from alignkit.models.reward_fn import ModelReward

        reward_model = ModelReward(cfg.reward.model, device=str(acc.device), batch_size=cfg.reward.model_batch_size)
    pools, held_out, dropped = load_prompts(cfg.data, tokenizer)
    critic_module = critic if critic is not None else head
    optimizer = build_optimizer(model, cfg.optim)
    critic_optim = build_optimizer(critic_module, cfg.optim.model_copy(update={"lr": cfg.critic.lr}))
    rows_per_process = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt // world
    per_iter = cfg.loss.epochs * math.ceil(rows_per_process / cfg.loss.minibatch_size)  # optimizer steps
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps * per_iter)
    critic_sched = build_scheduler(critic_optim, cfg.optim, cfg.train.steps * per_iter)
    sampler = PromptSampler(pools, cfg.train.seed)
    kl_ctl = (AdaptiveKLController(cfg.kl.beta, cfg.kl.target, rule=cfg.kl.controller, horizon=cfg.kl.horizon)
              if cfg.kl.controller != "fixed" else None)
    pen_ctl = AdaptiveKLController(cfg.loss.kl_penalty_beta, cfg.loss.kl_penalty_target)
    history: list = []

    start_step = 0
    ckpt = latest_checkpoint(run_dir) if cfg.output.resume else None
    if ckpt is not None:
        state, tensors = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, optim=cfg.optim,
                                         modules={"critic": critic_module})
        critic_optim.load_state_dict(tensors["critic_optimizer"])
        critic_sched.load_state_dict(tensors["critic_scheduler"])
        apply_optim_settings(critic_optim, critic_sched, cfg.optim.model_copy(update={"lr": cfg.critic.lr}),
                             prefix="critic", run_dir=run_dir)
        start_step, history = state["step"], state["history"]
        sampler.load_state_dict(state["sampler"])
        pen_ctl.load_state_dict(state["kl_penalty"])
        if kl_ctl is not None:
            kl_ctl.load_state_dict(state["kl"])
    model, optimizer, critic_module, critic_optim = acc.prepare(model, optimizer, critic_module, critic_optim)
    plain, plain_critic = acc.unwrap_model(model), acc.unwrap_model(critic_module)
    critic, head = (None, plain_critic) if cfg.critic.shared_trunk else (critic_module, None)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    logger = RunLogger(run_dir, tensorboard=cfg.output.tensorboard, enabled=acc.is_main_process,
                       resume_step=start_step if ckpt else None, wandb_project="alignkit" if cfg.output.wandb else None)
    guard, critic_guard = (NonFiniteGuard(cfg.output.max_bad_steps, run_dir=run_dir) for _ in range(2))
    timer = PhaseTimer()
    opts = (optimizer, scheduler, guard, critic_optim, critic_sched, critic_guard)
    temperature = cfg.rollout.temperature

    monitor = RewardFailureMonitor(cfg.reward.max_failed_share, cfg.reward.failure_window)
    if not held_out and acc.is_main_process:
        log.warning("no held-out evaluation will run: data.train_file is set without data.eval_file")

    def evaluate() -> dict:
        if not held_out:
            return {}
        return {f"eval/{k}": v for k, v in evaluate_model(
            plain, tokenizer, held_out, max_new_tokens=cfg.rollout.max_new_tokens,
            rewards=rewards if cfg.data.eval_file else None, success_key=cfg.reward.success_key).items()}

    def ref_logprobs(batch, rows):
        if reference is not None:
            return policy_forward(reference, batch, rows, temperature=temperature, packing=cfg.loss.packing)[0]
        with plain.disable_adapter():  # LoRA: the reference is the base model
            return policy_forward(plain, batch, rows, temperature=temperature, packing=cfg.loss.packing)[0]

    def checkpoint(step):
        if acc.is_main_process:
            state = {"sampler": sampler.state_dict(), "history": history, "kl_penalty": pen_ctl.state_dict(),
                     "kl": kl_ctl.state_dict() if kl_ctl else None}
            save_checkpoint(run_dir, step, model=acc.unwrap_model(model), optimizer=optimizer, scheduler=scheduler,
                            state=state, keep_last=cfg.output.keep_last, modules={"critic": plain_critic},
                            guards=[guard, critic_guard],
                            tensors={"critic_optimizer": critic_optim.state_dict(),
                                     "critic_scheduler": critic_sched.state_dict()})
        acc.wait_for_everyone()

    start_metrics = evaluate()
    if ckpt is None:
        logger.log(0, {**start_metrics, "data/dropped_prompts": dropped})
    metrics, t0, interrupted, step = dict(start_metrics), time.perf_counter(), False, start_step
    failure = None
    bar = progress(range(start_step, cfg.train.steps), desc="ppo", unit="it", disable=not acc.is_main_process,
                   initial=start_step, total=cfg.train.steps)
    with GracefulStop() as stop:
        for step in bar:
            beta = kl_ctl.value if kl_ctl is not None else cfg.kl.beta
            with timer("sample"):
                prompts = sampler.draw(cfg.rollout.prompts_per_step)[rank::world]
            with timer("generate"):
                out = generate(plain, tokenizer, [p[0] for p in prompts], num_samples=cfg.rollout.samples_per_prompt,
                               max_new_tokens=cfg.rollout.max_new_tokens, temperature=temperature,
                               top_k=cfg.rollout.top_k, top_p=cfg.rollout.top_p, stop=cfg.rollout.stop or None,
                               seed=cfg.train.seed * 100003 + step * 97 + rank, backend=cfg.rollout.backend)
            with timer("score"):
                g = cfg.rollout.samples_per_prompt
                scored = score_with_model(out.completions, [p[2] for p in prompts for _ in range(g)],
                                          [p[1] for p in prompts for _ in range(g)], rewards, reward_model,
                                          model_weight=cfg.reward.model_weight, success_key=cfg.reward.success_key,
                                          completion_ids=completion_id_lists(out.completion_ids, out.response_mask))
                try:
                    monitor.update(scored)
                except RewardFailureError as err:
                    failure = err
                    break
                valid = torch.tensor([s.ok for s in scored])
                batch = PPOBatch(out.prompt_ids, out.prompt_mask, out.completion_ids,
                                 out.response_mask * valid[:, None].to(out.response_mask.device),
                                 torch.tensor([s.total if s.ok else 0.0 for s in scored], dtype=torch.float32))
            rows_total = len(scored)
            slices = [slice(i, min(i + cfg.loss.micro_batch_size, rows_total))
                      for i in range(0, rows_total, cfg.loss.micro_batch_size)]
            with timer("logprobs"), torch.no_grad():
                parts = [policy_forward(plain, batch, sl, temperature=temperature, entropy=True, head=head,
                                        packing=cfg.loss.packing) for sl in slices]
                batch.old_logprobs = torch.cat([p[0] for p in parts])
                rollout_entropy = masked_mean(torch.cat([p[1] for p in parts]), batch.response_mask)
                batch.values = torch.cat([p[2] if head is not None else
                                          critic_values(critic, batch, sl, packing=cfg.loss.packing)
                                          for p, sl in zip(parts, slices)])
                if use_ref:
                    batch.ref_logprobs = torch.cat([ref_logprobs(batch, sl) for sl in slices])
            with timer("advantages"):
                compute_advantages(batch, beta=beta, estimator=cfg.kl.estimator, gamma=cfg.loss.gamma,
                                   lam=cfg.loss.lam, whiten_advantages=cfg.loss.whiten_advantages)
            with timer("update"):
                upd = ppo_update(model, critic, head, batch, cfg, acc=acc, opts=opts, temperature=temperature,
                                 beta_pen=pen_ctl.value, step=step)
            mask = batch.response_mask
            kl_ref = (masked_mean(kl_divergence(batch.old_logprobs, batch.ref_logprobs, estimator="k3"), mask)
                      if use_ref else torch.tensor(0.0))
            metrics = {
                **reward_metrics(scored), **{k: v for k, v in upd.items() if v is not None},
                "entropy": float(rollout_entropy), "kl": float(kl_ref), "kl/penalty_estimate": float(masked_mean(batch.kl, mask)), "beta": beta,
                "kl/sequence": float((batch.kl * mask).sum(-1).mean()),
                "reward/non_score": float((-beta * batch.kl).sum(-1).mean()),
                "value/explained_variance": explained_variance(batch.values, batch.returns, mask),
                "value/mean": float(masked_mean(batch.values, mask)), "returns/mean": float(masked_mean(batch.returns, mask)),
                "lr": scheduler.get_last_lr()[0], "critic_lr": critic_sched.get_last_lr()[0],
                "samples/failed": int((~valid).sum()),
                "completion/length": float(out.response_mask.sum(-1).float().mean()),
                "completion/truncated": sum(f == "length" for f in out.finish_reasons) / rows_total,
            }
            if cfg.loss.variant == "kl_penalty":
                metrics["kl_penalty/beta"] = pen_ctl.value
                pen_ctl.update(upd.get("approx_kl", 0.0))
            if kl_ctl is not None:
                kl_ctl.update(metrics["kl"], n_steps=rows_total)  # n_steps: the proportional rule's (Ziegler: samples)
                kl_ctl.value = min(max(kl_ctl.value, cfg.kl.beta_min), cfg.kl.beta_max or float("inf"))
            done = step + 1
            if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                with timer("eval"):
                    metrics.update(evaluate())
            metrics.update(timer.summary())
            warnings = health_warnings(metrics, cfg.monitor, history)
            history = (history + [[metrics.get("reward/total", 0.0), metrics["entropy"]]])[-cfg.monitor.hacking_window:]
            metrics["warnings"] = len(warnings)
            for w in warnings:
                log.warning("iteration %d: %s", done, w)
            logger.log(done, metrics)
            bar.set_postfix(reward=f"{metrics.get('reward/total', 0):.2f}", kl=f"{metrics['kl']:.4f}",
                            **({"eval_acc": f"{metrics['eval/accuracy']:.2f}"} if "eval/accuracy" in metrics else {}))
            interrupted = stop.requested
            if interrupted or (cfg.output.save_every and done % cfg.output.save_every == 0):
                checkpoint(done)
            if interrupted:
                break
    logger.close()
    if failure is None:
        try:
            monitor.close()
        except RewardFailureError as err:
            failure = err
    summary = eval_summary(start_metrics, metrics,
               steps=step + 1, interrupted=interrupted, non_finite_steps=guard.total + critic_guard.total,
               wall_s=time.perf_counter() - t0, run_dir=str(run_dir), reward_failures=monitor.counters(),
               **({} if held_out else {"eval_note": "no held-out evaluation ran: set data.eval_file"}))
    if failure is not None:
        summary["stopped"] = str(failure)
        if acc.is_main_process:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        raise failure
    if acc.is_main_process and not interrupted:
        save_final(acc.unwrap_model(model), tokenizer, run_dir)
        if critic is not None:
            plain_critic.save_pretrained(run_dir / "critic")
        else:
            from safetensors.torch import save_model

            (run_dir / "critic").mkdir(exist_ok=True)
            save_model(plain_critic, str(run_dir / "critic" / "shared_value_head.safetensors"))
        plot_metrics(logger.path, run_dir / "curves.png",
                     ["reward/total", "reward/model", "eval/accuracy", "kl", "beta", "entropy", "value_loss",
                      "value/explained_variance", "completion/length"], title=cfg.output.name)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
