"""Child-process side of `benchmarks/sft_rm_vs_trl.py`: ONE training run, measured, per process.

    python benchmarks/_sft_rm_workers.py SPEC.json RESULT.json

SPEC (written by the parent) names the runner (`alignkit_sft`, `alignkit_sft_padded`, `trl_sft`,
`trl_sft_packed`, `alignkit_rm`, `trl_rm`) and the shared workload (model dir, data files, batch size, max
length, warm-up and timed steps, lr, threads). The alignkit runners import alignkit's recipes, the TRL
runners import trl: run each with the interpreter of the venv that has it.

Measurement, identical on both sides:
- a step ends when its optimizer step returns (alignkit: the recipe's "update" phase exits; TRL: the
  `on_step_end` callback, which transformers calls right after `optimizer.step()` / `zero_grad()`);
- timed window = end of step `warmup` -> end of step `warmup + steps`: everything the training loop does
  in those steps (data, collation, forward, backward, clipping, optimizer, the library's own per-step
  bookkeeping). Model loading, data preparation, evaluation and saving fall outside it;
- tokens of a step = real (non-padding) tokens of the sequences the step trained on: prompt + completion
  (RM: chosen and rejected sequences, each with its prompt), counted from the batch the library built
  (alignkit: the rendered examples handed to its collate; TRL: `attention_mask.sum()`, or the flattened
  length for padding-free batches, which hold no padding). `padded_tokens` = what the model processed.
The instrumentation wraps functions by attribute (no file is changed) and adds O(1) work per step.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def _rss_mb() -> float:
    """Current resident set size of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StepLog:
    """Per-step end times and token counts, filled by the hooks below."""

    def __init__(self):
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.tokens: list[int] = []
        self.padded: list[int] = []
        self.examples: list[int] = []
        self._tok = self._pad = self._ex = 0
        self.rss_after_first_step: float | None = None
        self.rss_last_step = self.rss_max_steps = 0.0

    def add(self, tokens: int, padded: int, examples: int) -> None:
        self._tok += tokens
        self._pad += padded
        self._ex += examples

    def end_step(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.tokens.append(self._tok)
        self.padded.append(self._pad)
        self.examples.append(self._ex)
        self._tok = self._pad = self._ex = 0
        self.rss_last_step = _rss_mb()  # one /proc read per step (~20 us)
        self.rss_max_steps = max(self.rss_max_steps, self.rss_last_step)
        if self.rss_after_first_step is None:
            self.rss_after_first_step = self.rss_last_step

    def summary(self, warmup: int, steps: int) -> dict:
        if len(self.ends) < warmup + steps:
            raise RuntimeError(f"only {len(self.ends)} steps ran; expected {warmup + steps}")
        lo, hi = warmup, warmup + steps  # steps lo+1 .. hi (1-based) are timed: ends[lo] .. ends[hi-1]
        start = self.ends[lo - 1] if lo > 0 else None
        if start is None:
            raise ValueError("warmup must be >= 1 (the window starts at the end of a step)")
        wall = self.ends[hi - 1] - start
        cpu = self.cpu_ends[hi - 1] - self.cpu_ends[lo - 1]
        tok, pad, ex = (sum(x[lo:hi]) for x in (self.tokens, self.padded, self.examples))
        step_s = [b - a for a, b in zip(self.ends[lo - 1:hi - 1], self.ends[lo:hi])]
        ms = sorted(step_s)
        return {"timed_steps": steps, "wall_s": wall, "cpu_s": cpu, "tokens": tok, "padded_tokens": pad,
                "examples": ex,
                "tokens_per_s": tok / wall, "examples_per_s": ex / wall, "tokens_per_cpu_s": tok / cpu,
                "cpu_share": cpu / wall,  # ~threads on an idle machine; less = the run waited for a core
                "padding_fraction": 1 - tok / max(pad, 1),
                "step_ms_median": 1000 * ms[len(ms) // 2], "step_ms_min": 1000 * ms[0],
                # robust to background-load spikes: mean tokens per step / median step time
                "tokens_per_s_median_step": tok / steps / ms[len(ms) // 2],
                "step_ms": [round(1000 * x, 2) for x in step_s], "steps_run": len(self.ends)}


# ---------------------------------------------------------------------------------------------------------
# alignkit
# ---------------------------------------------------------------------------------------------------------

def _instrument_recipe(module, log: StepLog, count) -> dict:
    """Patch the lifecycle's ``PhaseTimer`` (``alignkit.infra.run``, whose ``Run.timer`` the recipes time their
    phases with; end of "update" = end of step), ``module.collate`` (count tokens of the batches built inside
    "forward_backward"; evaluation batches are not counted) and ``module.prepare_model`` (record the model's
    settings). -> the dict the settings are written to."""
    from alignkit.infra import run as lifecycle

    base_timer, base_collate, base_prepare = lifecycle.PhaseTimer, module.collate, module.prepare_model
    state = {"in_fb": False}
    facts: dict = {}

    class TimedPhases(base_timer):
        @contextmanager
        def __call__(self, name):
            state["in_fb"] = name == "forward_backward"
            with super().__call__(name):
                yield
            state["in_fb"] = False
            if name == "update":
                log.end_step()

    def collate(items, *args, **kwargs):
        batch = base_collate(items, *args, **kwargs)
        if state["in_fb"]:
            log.add(*count(items, batch))
        return batch

    def prepare_model(model, cfg, **kwargs):
        model = base_prepare(model, cfg, **kwargs)
        facts.update(attn_implementation=model.config._attn_implementation,
                     dtype=str(next(model.parameters()).dtype),
                     gradient_checkpointing=bool(getattr(model, "is_gradient_checkpointing", False)), bf16=False,
                     optim="torch.optim.AdamW")
        return model

    lifecycle.PhaseTimer, module.collate, module.prepare_model = TimedPhases, collate, prepare_model
    return facts


def _alignkit_overrides(spec: dict, run_dir: Path) -> list[str]:
    return [f"model.path={spec['model_dir']}", f"data.train_file={spec['train_file']}",
            f"data.eval_file={spec['eval_file']}", f"data.max_length={spec['max_length']}",
            f"train.steps={spec['warmup'] + spec['steps']}", f"train.batch_size={spec['batch_size']}",
            f"train.eval_every={10 * (spec['warmup'] + spec['steps'])}", f"train.seed={spec['seed']}",
            f"optim.lr={spec['lr']}", "optim.warmup_steps=0", "optim.schedule=constant", "optim.weight_decay=0.0",
            "optim.max_grad_norm=1.0", "model.dtype=float32", "model.gradient_checkpointing=false",
            f"output.dir={run_dir}", "output.name=run", "output.tensorboard=false", "output.save_every=0"]


def alignkit_sft(spec: dict, log: StepLog) -> dict:
    from alignkit.config import load_config
    from alignkit.infra.logging import read_metrics
    from alignkit.recipes import sft

    def count(examples, batch):
        return sum(len(e) for e in examples), batch["input_ids"].numel(), len(examples)

    facts = _instrument_recipe(sft, log, count)
    packing = spec["runner"] == "alignkit_sft"
    run_dir = Path(spec["workdir"]) / spec["runner"]
    cfg = load_config(sft.SFTConfig, None, _alignkit_overrides(spec, run_dir) + [
        "train.eval_generate=0", f"train.packing={str(packing).lower()}", "data.on_overflow=error"])
    sft.run(cfg)
    losses = [r["train/loss"] for r in read_metrics(run_dir / "run" / "metrics.jsonl") if "train/loss" in r]
    return {"mean_train_loss": sum(losses) / len(losses), "packing": packing, **facts}


def alignkit_rm(spec: dict, log: StepLog) -> dict:
    from alignkit.config import load_config
    from alignkit.infra.logging import read_metrics
    from alignkit.recipes import reward_model

    def count(pairs, batch):
        return sum(len(p.chosen) + len(p.rejected) for p in pairs), batch["input_ids"].numel(), len(pairs)

    facts = _instrument_recipe(reward_model, log, count)
    run_dir = Path(spec["workdir"]) / spec["runner"]
    cfg = load_config(reward_model.RMConfig, None, _alignkit_overrides(spec, run_dir) + ["data.on_overflow=error"])
    reward_model.run(cfg)
    losses = [r["train/loss"] for r in read_metrics(run_dir / "run" / "metrics.jsonl") if "train/loss" in r]
    return {"mean_train_loss": sum(losses) / len(losses), **facts}


# ---------------------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------------------

def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _trl_common_args(spec: dict) -> dict:
    """TrainingArguments shared by SFTConfig and RewardConfig: fp32, no gradient checkpointing (TRL 1.x turns
    both on by default), torch AdamW like alignkit, constant lr, no logging / eval / saving."""
    return dict(output_dir=str(Path(spec["workdir"]) / spec["runner"]),
                per_device_train_batch_size=spec["batch_size"],
                gradient_accumulation_steps=1, max_steps=spec["warmup"] + spec["steps"], learning_rate=spec["lr"],
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
                report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
                dataloader_num_workers=0, disable_tqdm=True, seed=spec["seed"], max_length=spec["max_length"])


def _step_callback(log: StepLog):
    from transformers import TrainerCallback

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            log.end_step()

    return StepEnd()


def _trl_facts(trainer) -> dict:
    model = trainer.model
    return {"bf16": bool(trainer.args.bf16),
            "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
            "attn_implementation": model.config._attn_implementation, "optim": str(trainer.args.optim),
            "dtype": str(next(model.parameters()).dtype)}


def trl_sft(spec: dict, log: StepLog) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    packed = spec["runner"] == "trl_sft_packed"
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = _read_jsonl(spec["train_file"])
    # Conversational prompt/completion: TRL renders with the tokenizer's chat template (the same tokens
    # alignkit renders; checked below) and trains on the completion only.
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    kw = _trl_common_args(spec)
    if packed:  # rows of max_length tokens: as many rows per step as alignkit's step has tokens on average
        kw["per_device_train_batch_size"] = spec["trl_packed_rows"]
    args = SFTConfig(**kw, packing=packed, completion_only_loss=True, dataset_num_proc=None)

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            if "attention_mask" in inputs:
                log.add(int(inputs["attention_mask"].sum()), ids.numel(), ids.shape[0])
            else:  # padding-free: one flattened row, no padding; an example starts where position_ids == 0
                log.add(ids.numel(), ids.numel(), int((inputs["position_ids"] == 0).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Counting(model=model, args=args, train_dataset=ds, processing_class=tok,
                       callbacks=[_step_callback(log)])
    facts = {**_trl_facts(trainer), "packing": packed, "padding_free": bool(trainer.padding_free),
             "rows_per_step": kw["per_device_train_batch_size"],
             "tokens_match_alignkit": _sft_tokens_match(trainer, tok, rows)}
    out = trainer.train()
    return {"mean_train_loss": out.training_loss, **facts}


def _sft_tokens_match(trainer, tok, rows, n: int = 64):
    """Whether TRL's tokenization of the first n rows equals alignkit's rendering (ids and loss mask);
    None when the dataset is packed (rows no longer map to examples)."""
    if trainer.args.packing:
        return None
    from alignkit.data import render_sft

    ds = trainer.train_dataset
    for i in range(min(n, len(rows))):
        ours = render_sft(tok, rows[i])
        theirs = ds[i]
        if list(theirs["input_ids"]) != ours.input_ids:
            return False
        if "completion_mask" in theirs and list(theirs["completion_mask"])[1:] != ours.response_mask[1:]:
            return False
    return True


def trl_rm(spec: dict, log: StepLog) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    torch.manual_seed(spec["seed"])  # the new score head's init: the same in every repeat
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    rows = _read_jsonl(spec["train_file"])
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    args = RewardConfig(**_trl_common_args(spec), dataset_num_proc=None)

    class Counting(RewardTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            log.add(int(inputs["attention_mask"].sum()), ids.numel(), ids.shape[0] // 2)
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Counting(model=model, args=args, train_dataset=ds, processing_class=tok,
                       callbacks=[_step_callback(log)])
    facts = {**_trl_facts(trainer), "tokens_match_alignkit": _rm_tokens_match(trainer, tok, rows)}
    out = trainer.train()
    return {"mean_train_loss": out.training_loss, **facts}


def _rm_tokens_match(trainer, tok, rows, n: int = 64) -> bool:
    from alignkit.data import render_preference

    ds = trainer.train_dataset
    for i in range(min(n, len(rows))):
        chosen, rejected = render_preference(tok, rows[i])
        if list(ds[i]["chosen_ids"]) != chosen.input_ids or list(ds[i]["rejected_ids"]) != rejected.input_ids:
            return False
    return True


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("transformers", "trl", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


RUNNERS = {"alignkit_sft": alignkit_sft, "alignkit_sft_padded": alignkit_sft, "trl_sft": trl_sft,
           "trl_sft_packed": trl_sft, "alignkit_rm": alignkit_rm, "trl_rm": trl_rm}


def main(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    log = StepLog()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    extra = RUNNERS[spec["runner"]](spec, log)
    result = {"runner": spec["runner"], **log.summary(spec["warmup"], spec["steps"]), **extra,
              "process_wall_s": time.perf_counter() - t0, "rss_after_import_torch_mb": rss0,
              "rss_after_first_step_mb": log.rss_after_first_step, "rss_max_at_step_ends_mb": log.rss_max_steps,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "torch": torch.__version__, "threads": torch.get_num_threads(), **_versions()}
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
