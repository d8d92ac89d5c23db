"""Direct preference optimization (lecture section 2; Rafailov et al. 2023): train the policy directly on
preference pairs, with the implicit reward r_hat(y) = beta * log(pi(y|x) / pi_ref(y|x)) and the loss
L = -log sigma(r_hat(y_w) - r_hat(y_l)) (``alignkit.losses.dpo_loss``).

    alignkit dpo -c configs/dpo/arith_tiny.yaml ref.mode=copy loss.beta=0.2
    accelerate launch --num_processes 2 -m alignkit.cli dpo -c ...     (or torchrun; same code)

Each step: pairs -> policy logprobs (chosen and rejected in ONE batch through one forward, split after; a
sequence logprob is the SUM over its response tokens, EOS included) -> reference logprobs (the same batch
through the reference, or the cache) -> loss -> backward / step -> log; every ``train.eval_every`` steps:
held-out pair metrics, the policy's KL to the reference on held-out prompts and, for records with an
``answer``, greedy answers scored.

Reference (``ref.mode``):
- ``copy``: a deep copy of the initial policy, eval mode, requires_grad off, one extra forward per step.
- ``adapter``: the policy itself with its LoRA adapters disabled (peft ``disable_adapter()``); needs
  ``model.lora.enabled: true``. No second model in memory.
- ``precomputed``: one no-grad pass over the training and held-out pairs before training; the logprobs are
  cached as tensors keyed by pair index in ``<run>/ref_logprobs.safetensors`` (reused on resume when the
  data and model fingerprint match). No reference model in memory during training steps. The held-out KL
  evaluation still needs reference logprobs of fresh samples: it uses the adapter-disabled policy under
  LoRA, else loads the initial model for the duration of the evaluation (``train.eval_kl_prompts: 0``
  never loads it).
``loss.reference_free: true`` drops the reference from the loss (log pi_ref = 0); no reference is built.

Loss family (``loss.loss_type``, a key of ``alignkit.losses.PREFERENCE_LOSSES``): ``sigmoid`` (DPO), ``ipo``
(Azar et al. 2023), ``simpo`` (Meng et al. 2024: length-normalized logprobs, margin ``loss.gamma``; beta ~2 in
the paper) and ``orpo`` (Hong et al. 2024: chosen NLL + ``loss.lam`` x odds-ratio term; no beta). SimPO and
ORPO read no reference: none is loaded or cached for training. Their length normalization uses each side's
response token count (EOS included). An option the chosen loss does not take (gamma outside simpo, lam
outside orpo, label_smoothing with ipo/orpo, beta or its schedule with orpo, reference_free with a loss that
is reference-free already) is refused when the config loads.

Overfitting: at every evaluation the held-out reward accuracy is compared with the training accuracy (mean
since the previous evaluation); when over the last 3 evaluations the held-out one fell while the training
one rose, ``alignkit.monitoring.dpo_overfitting_warning`` is logged and ``eval/overfitting`` is 1.

Metrics (``train/*`` per step over the global batch, ``eval/*`` on held-out pairs): ``rewards/chosen``,
``rewards/rejected`` (beta x log-ratios), ``rewards/margin`` (r_w - r_l), ``rewards/accuracy``,
``rewards/confidence`` = sigma(margin) (the lecture's "confidence in ranking"), ``rewards/grad_weight`` =
sigma(r_l - r_w) (the sigmoid loss's per-pair gradient weight), ``logps/chosen``, ``logps/rejected``,
``beta`` and ``lr``; ``eval/kl`` = KL(pi || pi_ref) per sequence, estimated on ``train.eval_kl_prompts``
held-out prompts sampled at temperature 1 (sum over response tokens of the k3 estimator, unbiased).

Decisions, stated up front:
- Reward accuracy counts a tie (margin exactly 0, e.g. policy == reference at step 0) as half right, so
  chance is 50%.
- The loss is the sum of per-pair losses divided by the number of pairs in the whole global batch (all
  micro-batches and processes), so 1 x 8 micro-batches, 8 x 1 and 2 processes x 4 train the same.
- ``loss.beta_schedule``: constant, or from ``loss.beta`` at the first step to ``loss.beta_final`` at the
  last, linearly or by cosine. Learning-rate warmup is ``optim.warmup_steps``. IPO uses the summed logprobs
  (no length normalization, unlike TRL's IPO).
- ``train.share_prefix`` (default): chosen and rejected of a pair share ONE row, ``chosen + rejected[S:]``,
  S = their common prefix (the prompt and any common start of the responses), which is computed once; an
  attention mask keeps each continuation from seeing the other and position ids continue at S. Exact (a test
  compares it with the plain concatenated [2B, T] batch, used with ``share_prefix: false`` or attention
  other than eager/sdpa). The lm_head runs only from the first column that predicts a target.
- ``train.bucket``: each process sorts its pairs by length before cutting micro-batches (less padding; the
  step's sum is unchanged).
- Bad input: an empty prompt/chosen/rejected is a DataError from the schema (file, row, field); a pair over
  ``data.max_length`` (prompt included) is a DataError by default, or dropped and counted as
  ``data/dropped`` with ``data.on_overflow: drop`` (never truncated: that would cut the EOS); a pair whose
  chosen and rejected render to the same tokens carries no preference: it is skipped, counted as
  ``data/skipped_identical`` and logged. No pair left is an error.
- ``data.train_file: null`` is the synthetic arithmetic set: the correct R1 trace is preferred over one
  with a wrong answer or a correct answer badly formatted (``data.rejected``); held-out questions never
  occur in training.
- A checkpoint (model, optimizer, scheduler, RNG, data position) is written atomically every
  ``output.save_every`` steps and on SIGTERM, after which the run exits 0; ``output.resume`` continues it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from alignkit.config import ModelSection, OptimSection, OutputSection, Section
from alignkit.data.order import ShuffledOrder
from alignkit.data.pairs import Pair, pair_lengths, row_length
from alignkit.data.pairs import collate_pairs as collate
from alignkit.data.pairs import render_pairs as render_pairs_
from alignkit.data.preferences import (  # noqa: F401  (part of the recipe's API)
    MIXED_KINDS,
    REJECTED_KINDS,
    arithmetic_preferences,
    bad_format_completion,
)
from alignkit.data.source import DataSourceFields
from alignkit.infra.checkpoint import GracefulStop
from alignkit.infra.run import Run, no_sync_unless_last, time_limit_field
from alignkit.infra.train import backward, build_optimizer, build_scheduler, optimizer_step, prepare_model
from alignkit.losses import kl_divergence
from alignkit.losses.preference import PREFERENCE_LOSSES, REFERENCE_FREE_LOSSES, PairLogps
from alignkit.models.forwards import (
    SHARED_PREFIX_ATTENTION,
    attention_implementation,
    fast_paths_enabled,
    pair_logps,
)
from alignkit.models.reference import (
    data_fingerprint,
    eval_reference,
    frozen_copy,
    reference_cache,
    reference_logps,
)

logger = logging.getLogger(__name__)

CACHE_FILE = "ref_logprobs.safetensors"


class DataSection(DataSourceFields):
    train_file: str | None = Field(None, description="preference data (jsonl/json/parquet/csv/datasets dir/Hub name) with "
                                   "prompt, chosen, rejected (strings or chat messages); None = synthetic arithmetic")
    eval_file: str | None = Field(None, description="held-out preference data; None = split eval_fraction off train_file")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="held-out fraction of train_file when no eval_file")
    n_train: int = Field(2000, gt=0, description="synthetic: training pairs")
    n_eval: int = Field(64, gt=0, description="synthetic: held-out pairs (distinct questions)")
    level: int = Field(2, ge=1, le=5, description="synthetic: arithmetic difficulty level (1-5)")
    max_offset: int = Field(5, ge=1, description="synthetic: a wrong answer is off by 1..max_offset (either sign)")
    rejected: Literal["mixed", "wrong_answer", "wrong_trace", "bad_format"] = Field(
        "mixed", description="synthetic: the rejected side: a wrong answer in the R1 format (wrong_answer: the "
        "trace is right; wrong_trace: trace and answer wrong), the right answer badly formatted (bad_format), "
        "or each pair wrong_answer or bad_format at random (mixed)")
    max_length: int = Field(128, gt=0, description="max tokens of a chosen or rejected sequence (prompt included)")
    on_overflow: Literal["error", "drop"] = Field("error", description="a pair with a side over max_length")


class ReferenceSection(Section):
    mode: Literal["copy", "adapter", "precomputed"] = Field(
        "precomputed", description="copy: frozen copy of the initial policy; adapter: the policy with its LoRA "
        "adapters disabled (needs model.lora.enabled); precomputed: logprobs cached once before training")
    batch_size: int = Field(64, gt=0, description="pairs per no-grad forward when precomputing")


class LossSection(Section):
    loss_type: Literal[tuple(PREFERENCE_LOSSES)] = Field(
        "sigmoid", description="a key of alignkit.losses.PREFERENCE_LOSSES: sigmoid (DPO), ipo ((h - 1/(2 beta))^2), "
        "simpo (SimPO: length-normalized, margin gamma, no reference; beta ~2), orpo (ORPO: NLL + lam x "
        "odds-ratio term, no reference, no beta)")
    beta: float = Field(0.1, gt=0, description="KL strength beta (the start value under a schedule); SimPO's "
                        "reward scale (the paper: 2.0-2.5); not used by orpo")
    gamma: float | None = Field(None, ge=0, description="simpo only: target reward margin (None = 0.5)")
    lam: float | None = Field(None, gt=0, description="orpo only: weight of the odds-ratio term (None = 0.1)")
    beta_final: float | None = Field(None, gt=0, description="beta at the last step under a schedule")
    beta_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="beta over training: constant, or from beta to beta_final linearly / by cosine")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO: assumed label-flip rate")
    reference_free: bool = Field(False, description="log pi_ref = 0 in the loss: no reference model")

    @model_validator(mode="after")
    def _schedule_has_target(self):
        if self.beta_schedule != "constant" and self.beta_final is None:
            raise ValueError(f"beta_schedule={self.beta_schedule!r} needs beta_final")
        return self

    @model_validator(mode="after")
    def _options_apply_to_the_loss(self):
        t = self.loss_type
        refused = [(self.gamma is not None and t != "simpo", "gamma (the SimPO margin) applies to loss_type=simpo only"),
                   (self.lam is not None and t != "orpo", "lam (the ORPO weight) applies to loss_type=orpo only"),
                   (self.label_smoothing > 0 and t in ("ipo", "orpo"), f"label_smoothing does not apply to loss_type={t}"),
                   (self.reference_free and t in REFERENCE_FREE_LOSSES,
                    f"reference_free: loss_type={t} reads no reference already; leave reference_free unset"),
                   (t == "orpo" and (self.beta != type(self).model_fields["beta"].default or self.beta_final is not None
                                     or self.beta_schedule != "constant"),
                    "loss_type=orpo has no beta (its odds-ratio weight is lam); leave beta and its schedule unset")]
        for bad, why in refused:
            if bad:
                raise ValueError(why)
        return self

    @property
    def uses_reference(self) -> bool:
        """False for reference_free and for the reference-free losses (simpo, orpo): no reference is built."""
        return not self.reference_free and self.loss_type not in REFERENCE_FREE_LOSSES

    def loss_options(self, beta: float) -> dict:
        """The keyword options of ``PREFERENCE_LOSSES[loss_type]`` (only those it takes)."""
        t = self.loss_type
        if t == "orpo":
            return {"lam": 0.1 if self.lam is None else self.lam}
        opts = {"beta": beta}
        if t == "simpo":
            opts["gamma"] = 0.5 if self.gamma is None else self.gamma
        else:
            opts["reference_free"] = self.reference_free
        if self.label_smoothing:  # sigmoid and simpo; refused above for the others
            opts["label_smoothing"] = self.label_smoothing
        return opts


class TrainSection(Section):
    steps: int = Field(200, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="pairs per optimizer step (global, all processes)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per step and process")
    bucket: bool = Field(True, description="sort each process's pairs by length before cutting micro-batches")
    share_prefix: bool = Field(True, description="one row per pair: the common prefix of chosen and rejected "
                               "(prompt and any common response start) is computed once; exact; needs 'eager' or "
                               "'sdpa' attention (else the plain [2B, T] batch)")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision on GPUs")
    seed: int = Field(0, description="seed for data order and initialization")
    eval_every: int = Field(50, gt=0, description="evaluate every N steps (and at the end)")
    eval_generate: int = Field(64, ge=0, description="held-out prompts with an 'answer' field answered greedily")
    eval_kl_prompts: int = Field(32, ge=0, description="held-out prompts sampled (T=1) to estimate KL to the reference")
    max_new_tokens: int = Field(48, gt=0, description="evaluation: max tokens per generated completion")
    time_limit_s: float | None = time_limit_field()


class DPOConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="policy (and initial reference)")
    ref: ReferenceSection = Field(default_factory=ReferenceSection, description="where reference logprobs come from")
    loss: LossSection = Field(default_factory=LossSection, description="DPO loss and beta")
    data: DataSection = Field(default_factory=DataSection, description="preference data")
    optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=1e-3), description="optimizer and schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="loop sizes")
    output: OutputSection = Field(default_factory=lambda: OutputSection(name="dpo"), description="where results go")


# --------------------------------------------------------------------------------------------------------
# Data: synthetic pairs, rendering with the bad-input policy, collation.
# --------------------------------------------------------------------------------------------------------

def render_pairs(tokenizer, records, cfg: DataSection) -> tuple[list[Pair], list, dict]:
    """Records -> (pairs, their parsed records, {"dropped": over-long, "skipped_identical": chosen == rejected})."""
    return render_pairs_(tokenizer, records, max_length=cfg.max_length, on_overflow=cfg.on_overflow)


def load_data(cfg: DataSection, seed: int, train_dataset=None, eval_dataset=None) -> tuple[list, list]:
    """-> (train records, eval records). Files (or a Python caller's datasets) are validated at load time
    (DataError names file/row/field)."""
    from alignkit.data import load_records, make_split, split_records
    from alignkit.data.objects import as_records

    if train_dataset is not None:
        records = as_records(train_dataset, "preference")
        if eval_dataset is not None:
            return records, as_records(eval_dataset, "preference", name="eval_dataset")
        return split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)
    if cfg.train_file is None:
        train_p, eval_p = make_split(cfg.n_train, cfg.n_eval, level=cfg.level, seed=seed)
        kw = dict(rejected=cfg.rejected, max_offset=cfg.max_offset)
        return arithmetic_preferences(train_p, seed=seed, **kw), arithmetic_preferences(eval_p, seed=seed + 1, **kw)
    records = load_records(cfg.train_file, "preference", split=cfg.split, columns=cfg.columns)
    if cfg.eval_file is not None:
        return records, load_records(cfg.eval_file, "preference", split=cfg.eval_split or cfg.split,
                                     columns=cfg.columns)
    return split_records(records, eval_fraction=cfg.eval_fraction, seed=seed)


# --------------------------------------------------------------------------------------------------------
# The loss path and its metrics.
# --------------------------------------------------------------------------------------------------------

def beta_at(step: int, total: int, cfg: LossSection) -> float:
    """beta at 0-based ``step`` of ``total``: constant, or ``beta`` -> ``beta_final`` (reached at the last step)."""
    if cfg.beta_schedule == "constant" or cfg.beta_final is None:
        return cfg.beta
    progress_ = min(1.0, step / max(1, total - 1))
    shape = 1.0 - progress_ if cfg.beta_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress_))
    return cfg.beta_final + (cfg.beta - cfg.beta_final) * shape


STAT_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "rewards/confidence",
             "rewards/grad_weight", "logps/chosen", "logps/rejected")


def pair_loss(logps: torch.Tensor, ref_logps: torch.Tensor | None, *, beta: float, cfg: LossSection,
              lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Concatenated [2B] policy and reference logprobs (chosen first; reference None for the reference-free
    losses) and response token counts ``lengths`` [2B] (needed by simpo and orpo) -> (losses [B], per-pair
    stats [B]).

    margin = r_w - r_l with each loss's own implicit reward (DPO: r = beta * (log pi - log pi_ref));
    accuracy = 1[margin > 0] + 0.5 * 1[margin = 0]; confidence = sigma(margin); grad_weight = sigma(r_l - r_w)
    = 1 - confidence (the sigmoid loss's per-pair gradient weight).
    """
    pc, pr = logps.chunk(2)
    rc, rr = ref_logps.chunk(2) if ref_logps is not None and cfg.uses_reference else (None, None)
    if lengths is None:
        if cfg.loss_type in REFERENCE_FREE_LOSSES:
            raise ValueError(f"loss_type={cfg.loss_type} normalizes by length: pass lengths")
        lengths = torch.ones_like(logps)  # unused by the reference-based losses
    lc, lr = lengths.to(logps.dtype).chunk(2)
    if rc is None and cfg.loss_type not in REFERENCE_FREE_LOSSES:  # reference_free DPO / IPO: log pi_ref = 0
        rc = rr = torch.zeros_like(pc)
    losses, m = PREFERENCE_LOSSES[cfg.loss_type](PairLogps(pc, pr, lc, lr, rc, rr), **cfg.loss_options(beta))
    chosen_rewards, rejected_rewards = m["rewards/chosen"], m["rewards/rejected"]
    margin = chosen_rewards - rejected_rewards
    stats = dict(zip(STAT_KEYS, (chosen_rewards, rejected_rewards, margin,
                                 (margin > 0).float() + 0.5 * (margin == 0).float(), torch.sigmoid(margin),
                                 torch.sigmoid(-margin), pc.detach(), pr.detach())))
    return losses, stats


def batch_loss(model, batch: dict, ref_logps: torch.Tensor, *, num_pairs: int, beta: float, cfg: LossSection
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the batch's pair losses / ``num_pairs`` (the global batch's pairs), per-stat sums [len(STAT_KEYS)])."""
    losses, stats = pair_loss(pair_logps(model, batch), ref_logps, beta=beta, cfg=cfg, lengths=pair_lengths(batch))
    return losses.sum() / num_pairs, torch.stack([stats[k].sum() for k in STAT_KEYS]).double()


# --------------------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def held_out_kl(policy, reference_ctx, tokenizer, prompts: list, *, max_new_tokens: int, seed: int) -> float:
    """Mean over prompts of KL(pi || pi_ref) of a completion sampled from the policy at T = 1: the sum over its
    tokens of the k3 estimator r - 1 - log r, r = pi_ref / pi (unbiased for the sequence KL)."""
    from alignkit.logprobs import sequence_logprobs
    from alignkit.rollout import generate

    out = generate(policy, tokenizer, prompts, num_samples=1, max_new_tokens=max_new_tokens, temperature=1.0,
                   seed=seed)
    P = out.prompt_ids.shape[1]
    with reference_ctx as ref:
        ref_lp = sequence_logprobs(ref, out.input_ids, out.attention_mask)[:, P:]
    kl = kl_divergence(out.rollout_logprobs, ref_lp, estimator="k3") * out.response_mask
    return float(kl.sum(-1).mean())


@torch.no_grad()
def greedy_answers(policy, tokenizer, records: list, *, max_new_tokens: int) -> dict:
    """Greedy completions of held-out prompts with an ``answer``: accuracy, strict R1 format, and the
    preferred style (both), scored with the same reward functions RL uses."""
    from alignkit.data import render_prompt
    from alignkit.rewards import accuracy_reward, format_reward
    from alignkit.rollout import generate

    prompts = [render_prompt(tokenizer, r.prompt) for r in records]
    texts = generate(policy, tokenizer, prompts, num_samples=1, max_new_tokens=max_new_tokens,
                     temperature=0.0).completions
    acc = [accuracy_reward(t, answer=str(r.extra["answer"])) for t, r in zip(texts, records)]
    fmt = [format_reward(t) for t in texts]
    n = len(records)
    return {"eval/answer_accuracy": sum(acc) / n, "eval/format": sum(fmt) / n,
            "eval/preferred": sum(a * f for a, f in zip(acc, fmt)) / n}


@torch.no_grad()
def evaluate(policy, tokenizer, pairs: list[Pair], records: list, ref_cache: dict, *, beta: float,
             loss_cfg: LossSection, kl_reference, train_cfg: TrainSection, share_prefix: bool,
             batch_size: int = 64) -> dict:
    """Held-out pair metrics (loss and STAT_KEYS means), KL to the reference on held-out prompts, and greedy
    answers for records that carry an ``answer``. ``policy`` is the plain (unwrapped) model."""
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    sums, loss_sum = torch.zeros(len(STAT_KEYS), dtype=torch.float64), 0.0
    for i in range(0, len(pairs), batch_size):
        group = collate(pairs[i:i + batch_size], tokenizer.pad_token_id, share_prefix=share_prefix)
        batch = {k: v.to(device) for k, v in group.items()}
        ref = reference_logps(batch, mode="precomputed", cache=ref_cache, split="eval")
        losses, stats = pair_loss(pair_logps(policy, batch), ref, beta=beta, cfg=loss_cfg, lengths=pair_lengths(batch))
        loss_sum += float(losses.sum())
        sums += torch.stack([stats[k].sum() for k in STAT_KEYS]).double().cpu()
    out = {"eval/loss": loss_sum / len(pairs), **{f"eval/{k}": float(v) / len(pairs) for k, v in zip(STAT_KEYS, sums)}}
    if train_cfg.eval_kl_prompts:
        from alignkit.data import render_prompt

        prompts = [render_prompt(tokenizer, r.prompt) for r in records[:train_cfg.eval_kl_prompts]]
        out["eval/kl"] = held_out_kl(policy, kl_reference(), tokenizer, prompts,
                                     max_new_tokens=train_cfg.max_new_tokens, seed=train_cfg.seed)
    answered = [r for r in records if "answer" in r.extra][:train_cfg.eval_generate]
    if answered:
        out.update(greedy_answers(policy, tokenizer, answered, max_new_tokens=train_cfg.max_new_tokens))
    policy.train(was_training)
    return out


# --------------------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------------------

class OverfittingCheck:
    """Wraps the evaluation: pairs each held-out reward accuracy with the mean training accuracy since the
    previous evaluation and adds ``eval/overfitting`` (1 when ``alignkit.monitoring.dpo_overfitting_warning``
    fires over the last 3 evaluations, which it also logs). The evaluation before training only starts it."""

    def __init__(self, window: int = 3):
        self.window, self.train_accuracy = window, []
        self.train_means: list[float] = []
        self.eval_accuracy: list[float] = []

    def __call__(self, out: dict) -> dict:
        from alignkit.monitoring import dpo_overfitting_warning

        if "eval/rewards/accuracy" not in out or not self.train_accuracy:
            self.train_accuracy.clear()
            return out
        self.train_means.append(sum(self.train_accuracy) / len(self.train_accuracy))
        self.eval_accuracy.append(out["eval/rewards/accuracy"])
        self.train_accuracy.clear()
        warning = dpo_overfitting_warning(self.train_means, self.eval_accuracy, window=self.window)
        if warning:
            logger.warning(warning)
        return {**out, "eval/overfitting": float(warning is not None)}


def setup_reference(cfg: DPOConfig, acc, model, ref_model, tokenizer, train: list[Pair], held_out: list[Pair],
                    run_dir: Path, share_prefix: bool, model_key: str) -> tuple[dict, bool]:
    """-> (cache {train_*, eval_*} [N], reused from the run directory?). Call with the policy at its INITIAL
    weights (before a checkpoint is loaded). The held-out reference logprobs are cached in every mode (the
    reference never changes); the training ones only in mode 'precomputed'."""
    lora = cfg.model.lora.enabled
    with (model.disable_adapter() if lora else nullcontext()):  # LoRA starts as the identity, but be exact
        reference = ref_model if ref_model is not None else model
        cached = train if cfg.ref.mode == "precomputed" and cfg.loss.uses_reference else []
        return reference_cache(acc, run_dir / CACHE_FILE, data_fingerprint(model_key, cached, held_out),
                               reference.to(acc.device), cached, held_out, tokenizer.pad_token_id, cfg.ref.batch_size,
                               share_prefix)


def run(cfg: DPOConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None, callbacks=None) -> dict:
    """Train per ``cfg``; returns a summary. Writes under <output.dir>/<output.name>/: config.yaml,
    metrics.jsonl, tensorboard/, ref_logprobs.safetensors, checkpoints/, final/ (plain transformers),
    curves.png, summary.json.

    Python API (docs/python_api.md): ``model`` + ``tokenizer`` (a transformers causal LM; the reference is its
    initial weights) replace ``model.path``; ``train_dataset`` / ``eval_dataset`` (preference rows) replace
    the data files; ``callbacks``: ``fn(step, metrics)`` for every logged row."""
    from alignkit.models import load_policy

    life = Run(cfg, desc="dpo", seed=cfg.train.seed, callbacks=callbacks)
    world, rank, B, acc = life.world, life.rank, cfg.train.batch_size, life.acc
    life.require_divisible(B, "train.batch_size", "processes x grad_accum", world, cfg.train.grad_accum)
    if cfg.ref.mode == "adapter" and not cfg.model.lora.enabled:
        raise ValueError("ref.mode=adapter uses the policy with its LoRA adapters disabled: set "
                         "model.lora.enabled=true, or use ref.mode=copy or precomputed")
    user_model = model is not None
    if model is None:
        model, tokenizer = load_policy(cfg.model)
    initial = frozen_copy(model) if user_model and not cfg.model.lora.enabled else None  # held-out KL reference
    ref_model = frozen_copy(model).to(acc.device) if cfg.ref.mode == "copy" and cfg.loss.uses_reference else None
    model_key = json.dumps(cfg.model.model_dump(mode="json"), sort_keys=True)
    if user_model:
        model_key += f"|{type(model).__name__}|{sum(float(p.double().sum()) for p in model.parameters()):.10e}"
    model = prepare_model(model, cfg.model).to(acc.device)
    train_records, eval_records = load_data(cfg.data, cfg.train.seed, train_dataset, eval_dataset)
    train, _, counts = render_pairs(tokenizer, train_records, cfg.data)
    held_out, held_out_records, _ = render_pairs(tokenizer, eval_records, cfg.data)
    if len(train) < B or not held_out:
        raise ValueError(f"{len(train)} training and {len(held_out)} held-out pairs left (after {counts}): need "
                         f"at least train.batch_size={B} and 1")
    pad_id, t_setup = tokenizer.pad_token_id, time.perf_counter()
    share = cfg.train.share_prefix and fast_paths_enabled() and attention_implementation(model) in SHARED_PREFIX_ATTENTION
    if cfg.train.share_prefix and fast_paths_enabled() and not share:
        logger.warning("train.share_prefix: attention %r takes no custom mask; using the plain [2B, T] batch",
                       attention_implementation(model))
    cache, reused = setup_reference(cfg, acc, model, ref_model, tokenizer, train, held_out, life.run_dir, share,
                                    model_key)
    t_setup = time.perf_counter() - t_setup
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    order = ShuffledOrder(len(train), cfg.train.seed)
    model, optimizer = life.setup(model, optimizer, scheduler, objects={"data": order})
    mode = "none" if not cfg.loss.uses_reference else cfg.ref.mode
    load_initial = (lambda: initial) if initial is not None else (lambda: load_policy(cfg.model)[0])
    overfit = OverfittingCheck()
    life.begin(lambda step: overfit(evaluate(
        life.plain, tokenizer, held_out, held_out_records, cache, beta=beta_at(step, cfg.train.steps, cfg.loss),
        loss_cfg=cfg.loss, train_cfg=cfg.train, share_prefix=share,
        kl_reference=lambda: eval_reference(life.plain, ref_model, load_initial, acc.device))),
        {**{f"data/{k}": v for k, v in counts.items()}, "time/reference_setup": t_setup,
         "data/reference_cache_reused": int(reused)})

    micro_n = B // (world * cfg.train.grad_accum)
    with GracefulStop() as stop:
        for step in life.steps():
            with life.timer("data"):
                local = [train[i] for i in order.take(B)][rank::world]
                if cfg.train.bucket:
                    local.sort(key=lambda p: row_length(p, share))
                beta = beta_at(step, cfg.train.steps, cfg.loss)
            with life.timer("forward_backward"):
                sums, loss_sum = torch.zeros(len(STAT_KEYS), dtype=torch.float64), 0.0
                for m in range(cfg.train.grad_accum):
                    group = collate(local[m * micro_n:(m + 1) * micro_n], pad_id, share_prefix=share)
                    batch = {k: v.to(acc.device) for k, v in group.items()}
                    ref = (None if mode == "none" else
                           reference_logps(batch, mode=mode, ref_model=ref_model, policy=life.plain, cache=cache))
                    with no_sync_unless_last(acc, model, m, cfg.train.grad_accum):
                        loss, stat_sums = batch_loss(model, batch, ref, num_pairs=B, beta=beta, cfg=cfg.loss)
                        backward(acc, loss)
                    loss_sum += loss.item()
                    sums += stat_sums.cpu()
                totals = acc.reduce(torch.cat([torch.tensor([loss_sum], dtype=torch.float64), sums]).to(acc.device),
                                    reduction="sum").tolist()
            with life.timer("update"):
                grad_norm, applied = optimizer_step(model, optimizer, scheduler, guard=life.guard, loss=totals[0],
                                                    max_grad_norm=cfg.optim.max_grad_norm, step=step + 1)
            metrics = {"train/loss": totals[0], **{f"train/{k}": v / B for k, v in zip(STAT_KEYS, totals[1:])},
                       "train/beta": beta, "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                       "train/skipped": int(not applied)}
            overfit.train_accuracy.append(metrics["train/rewards/accuracy"])
            if life.end_step(metrics, stop, postfix={"loss": "train/loss", "acc": "train/rewards/accuracy"}):
                break
    return life.finish(tokenizer=tokenizer, plots=["train/loss", "train/rewards/accuracy", "eval/rewards/accuracy",
                                                   "eval/kl", "eval/preferred"],
                       data=counts, share_prefix=share, reference_cache_reused=reused,
                       setup_s=life.loop_started - life.started, reference_setup_s=t_setup,
                       cpu_s=time.process_time() - life.cpu_started)
