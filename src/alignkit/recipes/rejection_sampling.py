"""Rejection sampling: sample N completions per prompt, keep the verified ones, write an SFT dataset.

    alignkit rejection-sample -c configs/rejection_sampling/arith_tiny.yaml model.path=runs/x/final

Phases: prompts -> generate N per prompt (alignkit.rollout) -> score (alignkit.rewards) -> select
(reward >= threshold, deduplicated; alignkit.data.curation.select_verified) -> write.

Writes <output.dir>/<output.name>/: ``data.jsonl`` (SFT records {"prompt", "completion", "reward"} plus the
prompt's fields), ``stats.json`` (samples, kept, pass rate, prompts with at least one kept, kept per
prompt, lengths, failed verifications), ``config.yaml``. The lecture keeps rewards of 1.0 (bat-and-ball)
or >= 0.8 (R1 stage 3). A sample whose verifier failed is counted and never kept.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from alignkit.config import ModelSection, RewardSection, Section, to_yaml
from alignkit.data.source import DataSourceFields
from alignkit.infra import progress, seed_everything
from alignkit.infra.rundir import prepare_run_dir


class PromptsSection(DataSourceFields):
    train_file: str | None = Field(None, description="prompt records (prompt + ground-truth fields); None = synthetic arithmetic")
    levels: list[int] = Field([1, 2, 3], description="synthetic: arithmetic levels")
    n_prompts: int = Field(500, gt=0, description="prompts to sample (synthetic: never a held-out question)")
    offset: int = Field(0, ge=0, description="skip this many prompts first (use other prompts than an earlier stage)")
    max_prompt_length: int = Field(64, gt=0, description="longest prompt in tokens; longer ones are dropped and counted")


class SamplingSection(Section):
    num_samples: int = Field(8, gt=0, description="N: completions per prompt")
    temperature: float = Field(1.0, ge=0, description="sampling temperature (0 = greedy, then N should be 1)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus filtering")
    max_new_tokens: int = Field(48, gt=0, description="longest completion")
    batch_prompts: int = Field(64, gt=0, description="prompts per generate call")
    backend: Literal["native", "hf", "vllm"] = Field("native", description="sampler backend (vllm: loads model.path into vLLM; untested without a GPU)")
    seed: int = Field(0, description="sampling seed")


class SelectSection(Section):
    threshold: float = Field(1.0, description="keep completions whose total reward is >= this")
    dedupe: bool = Field(True, description="drop whitespace-normalized duplicates of a prompt's completions")
    max_per_prompt: int | None = Field(None, gt=0, description="keep at most this many per prompt (best first)")
    verify_steps: bool = Field(False, description="also require the <think> steps to check out, grounded in the "
                               "question and reaching the answer (alignkit.rewards.steps.check_steps)")


class OutputSection(Section):
    dir: str = Field("runs", description="parent directory")
    name: str = Field("rejection_sampling", description="outputs go to <dir>/<name>/")
    overwrite: bool = Field(False, description="replace an earlier run's data in <dir>/<name>/ (default: refuse)")


class RejectionSamplingConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection, description="the model that samples")
    prompts: PromptsSection = Field(default_factory=PromptsSection, description="prompts")
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="sampling")
    reward: RewardSection = Field(default_factory=lambda: RewardSection(weights={"accuracy": 0.5, "format": 0.5}),
                                  description="verifiers; with the default weights 1.0 = right answer in the R1 format")
    select: SelectSection = Field(default_factory=SelectSection, description="what is kept")
    output: OutputSection = Field(default_factory=OutputSection, description="where results go")


def load_prompt_records(cfg: PromptsSection) -> list[dict]:
    """Prompt records (dicts with "prompt" and ground-truth fields)."""
    from alignkit.data import load_records
    from alignkit.evaluation import arithmetic_train_problems

    if cfg.train_file is None:
        problems = arithmetic_train_problems(cfg.offset + cfg.n_prompts, cfg.levels)[cfg.offset:]
        return [{"prompt": p.question, "answer": p.answer_text, "level": p.level} for p in problems]
    records = load_records(cfg.train_file, "prompt", split=cfg.split, columns=cfg.columns)[cfg.offset:cfg.offset + cfg.n_prompts]
    return [dict(r.extra, prompt=r.prompt) for r in records]


def run(cfg: RejectionSamplingConfig) -> dict:
    """Sample, verify, select, write; returns the stats."""
    from alignkit.data import render_prompt, write_jsonl
    from alignkit.data.curation import select_verified
    from alignkit.models import load_policy, load_vllm
    from alignkit.rewards import RewardFailureMonitor, build_rewards, score_batch
    from alignkit.rollout import generate
    from alignkit.rollout.types import completion_id_lists

    seed_everything(cfg.sampling.seed)
    out_dir = Path(cfg.output.dir) / cfg.output.name
    prepare_run_dir(out_dir, resume=False, overwrite=cfg.output.overwrite)  # nothing to resume: sampling is redone
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    model, tokenizer = load_policy(cfg.model)
    if cfg.sampling.backend == "vllm":  # vLLM samples the same weights, loaded by path (untested: no GPU CI)
        model = load_vllm(cfg.model, seed=cfg.sampling.seed)
    rewards = build_rewards(cfg.reward.weights, cfg.reward.options, cfg.reward.when)
    records = load_prompt_records(cfg.prompts)
    prompts, dropped = [], 0
    for rec in records:
        ids = render_prompt(tokenizer, rec["prompt"], max_length=cfg.prompts.max_prompt_length, on_overflow="drop")
        if ids is None:
            dropped += 1
        else:
            prompts.append((ids, rec))
    n = cfg.sampling.num_samples
    kept_rows, per_prompt, lengths, failed, samples, passed, step_rejected = [], [], [], 0, 0, 0, 0
    t0 = time.perf_counter()
    monitor = RewardFailureMonitor(cfg.reward.max_failed_share, cfg.reward.failure_window)
    for start in progress(range(0, len(prompts), cfg.sampling.batch_prompts), desc="rejection-sample", unit="batch"):
        chunk = prompts[start:start + cfg.sampling.batch_prompts]
        out = generate(model, tokenizer, [ids for ids, _ in chunk], num_samples=n,
                       max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
                       top_p=cfg.sampling.top_p, seed=cfg.sampling.seed + start, backend=cfg.sampling.backend)
        fields = [{k: v for k, v in rec.items() if k != "prompt"} for _, rec in chunk for _ in range(n)]
        scored = score_batch(out.completions, fields, rewards, success_key=cfg.reward.success_key,
                             workers=cfg.reward.workers,
                             prompts=[rec["prompt"] for _, rec in chunk for _ in range(n)],
                             completion_ids=completion_id_lists(out.completion_ids, out.response_mask))
        monitor.update(scored)
        samples += len(scored)
        failed += sum(not s.ok for s in scored)
        passed += sum(s.ok and s.total >= cfg.select.threshold for s in scored)
        tokens = out.response_mask.sum(-1).tolist()
        for i, (_, rec) in enumerate(chunk):
            group = range(i * n, (i + 1) * n)
            totals = [scored[j].total for j in group]
            if cfg.select.verify_steps:  # a right answer after wrong, missing or unrelated steps is not kept
                from alignkit.rewards.steps import check_steps
                ok = [check_steps(out.completions[j], question=rec.get("question", rec["prompt"]),
                                  answer=rec.get("answer")).ok for j in group]
                step_rejected += sum(t is not None and t >= cfg.select.threshold and not o for t, o in zip(totals, ok))
                totals = [t if o else None for t, o in zip(totals, ok)]
            keep = select_verified([out.completions[j] for j in group], totals,
                                   threshold=cfg.select.threshold, dedupe=cfg.select.dedupe,
                                   max_keep=cfg.select.max_per_prompt)
            per_prompt.append(len(keep))
            for k in keep:
                j = i * n + k
                kept_rows.append({**rec, "completion": out.completions[j], "reward": scored[j].total})
                lengths.append(tokens[j])
    monitor.close()
    write_jsonl(kept_rows, out_dir / "data.jsonl")
    stats = {
        "prompts": len(prompts), "dropped_prompts": dropped, "samples": samples, "kept": len(kept_rows),
        "pass_rate": passed / max(samples, 1),  # samples at or above the threshold, before deduplication
        "prompts_with_kept": sum(k > 0 for k in per_prompt) / max(len(per_prompt), 1),
        "kept_per_prompt_mean": sum(per_prompt) / max(len(per_prompt), 1),
        "kept_per_prompt_histogram": dict(sorted(Counter(per_prompt).items())),
        "kept_length_mean_tokens": sum(lengths) / max(len(lengths), 1), "failed_verifications": failed,
        "threshold": cfg.select.threshold, "step_rejected": step_rejected, "wall_s": time.perf_counter() - t0,
        "data": str(out_dir / "data.jsonl"), "reward_failures": monitor.counters(),
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats
