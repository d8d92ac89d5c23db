"""SFT, DPO and reward-model training at real size (issue 18): alignkit vs TRL's SFTTrainer / DPOTrainer /
RewardTrainer on SmolLM2-135M-Instruct, same data, batch, max length and steps, on CPU, in one invocation.

    .venv/bin/python benchmarks/real_train_vs_trl.py                       # sft, dpo (copy, precomputed, adapter), rm
    .venv/bin/python benchmarks/real_train_vs_trl.py --tasks dpo --refs copy --repeats 2 --out dpo_real.json
    .venv/bin/python benchmarks/real_train_vs_trl.py --quick               # smoke: tiny model, batch 4, 1+1 steps

TRL runs in its own virtual environment (benchmarks/_real.py: TRL_VENV_HINT); without it the TRL runs are
skipped with a message and alignkit's still run.

Workload (every run its own subprocess, so peak RSS, the child's ru_maxrss, is its own; the two sides alternate,
ABBA over ``--repeats``):

- model: SmolLM2-135M-Instruct, fp32, ``--threads`` (2), no gradient checkpointing (TRL 1.x turns on bf16 and
  gradient checkpointing by default: both off); the RM is the trunk plus a fresh 1-output score head on both sides.
- data: ``_real.word_problems`` questions ("What is 47 plus 18? Answer with the number."). SFT completion
  "47 plus 18 is 65."; preference pairs chosen = that, rejected = the same sentence with a wrong answer. alignkit
  reads JSONL with string prompt / completion; TRL gets the same as conversational messages, so the model's chat
  template renders both alike.
- per step ``--batch-size`` examples (SFT) or pairs (DPO, RM), max length ``--max-length``, AdamW constant lr,
  weight decay 0, grad clip 1; DPO sigmoid loss, beta 0.1. DPO reference modes (``--refs``): ``copy`` (a frozen
  copy: TRL's default), ``precomputed`` (TRL ``precompute_ref_log_probs=True``), ``adapter`` (LoRA r 8, alpha 16,
  all linear layers on both sides; the reference is the model with adapters off: TRL's ``peft_config`` form).
- no evaluation while timed, no checkpoints.

Measured: step boundaries (alignkit: its per-step callback, also called for row 0 right before the loop; TRL:
``on_step_begin`` / ``on_step_end``); ``--warmup + --steps + 1`` steps run, the first ``--warmup`` and the last
(alignkit evaluates after its last step, inside that step) left out; s/step is the median of the rest. tokens/step
= the batch's real tokens by one rule for both (SFT: prompt + completion of each example; DPO and RM: the chosen
and the rejected sequence, each with its prompt), counted from the model's chat template; tokens/s = tokens/step /
s/step. Floor: 6N per trained token (+ 2N per token for a live reference forward: copy, adapter) at the CPU's
matmul rate; the RM's N leaves out the embedding (no LM head matmul).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _real import (
    TRL_PYTHON,
    TRL_VENV_HINT,
    floor_flops,
    floor_seconds,
    matmul_rate,
    peak_rss_mib,
    resolve_model_dir,
    word_problems,
)

TASKS = ("sft", "dpo", "rm")
REFS = ("copy", "precomputed", "adapter")
BARS = {"sft": 2.0, "dpo": 2.0, "rm": 1.5}
MEMORY_BAR = 0.6


def records(n: int, *, seed: int) -> tuple[list[dict], list[dict]]:
    """(SFT records, preference records) from the word problems: string prompt / completion / chosen / rejected.

    >>> sft, pref = records(2, seed=0)
    >>> sft[0]["completion"].endswith(sft[0]["answer"] + "."), pref[1]["chosen"] != pref[1]["rejected"]
    (True, True)
    """
    import random

    rng = random.Random(seed + 1)
    sft, pref = [], []
    for row in word_problems(n, seed=seed):
        question = row["prompt"][0]["content"]
        words = question.split()  # "What is A plus|minus B? Answer with the number."
        stem = f"{words[2]} {words[3]} {words[4].rstrip('?')} is"
        wrong = int(row["answer"]) + rng.choice([-10, -2, -1, 1, 2, 10])
        sft.append({"prompt": question, "completion": f"{stem} {row['answer']}.", "answer": row["answer"]})
        pref.append({"prompt": question, "chosen": f"{stem} {row['answer']}.", "rejected": f"{stem} {wrong}.",
                     "answer": row["answer"]})
    return sft, pref


def conversational(rows: list[dict]) -> list[dict]:
    """String records -> TRL's conversational form (user prompt, assistant completion / chosen / rejected)."""
    out = []
    for r in rows:
        c = {"prompt": [{"role": "user", "content": r["prompt"]}]}
        for key in ("completion", "chosen", "rejected"):
            if key in r:
                c[key] = [{"role": "assistant", "content": r[key]}]
        out.append(c)
    return out


def sequence_tokens(tok, prompt: str, reply: str) -> int:
    """Tokens of prompt + reply rendered as a user / assistant exchange by the model's chat template."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                                   tokenize=False)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def tokens_per_item(task: str, model_dir: Path, rows: list[dict]) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if task == "sft":
        counts = [sequence_tokens(tok, r["prompt"], r["completion"]) for r in rows]
    else:
        counts = [sequence_tokens(tok, r["prompt"], r["chosen"]) + sequence_tokens(tok, r["prompt"], r["rejected"])
                  for r in rows]
    return statistics.mean(counts)


def step_times(marks: list[float], warmup: int, steps: int) -> list[float]:
    """Durations of steps warmup .. warmup+steps-1 from step-boundary marks (marks[i] = start of step i).

    >>> step_times([0.0, 5.0, 6.0, 8.0, 11.0, 20.0], 1, 3)
    [1.0, 2.0, 3.0]
    """
    durations = [b - a for a, b in zip(marks, marks[1:])]
    if len(durations) < warmup + steps:
        raise RuntimeError(f"{len(durations)} steps ran; expected at least {warmup + steps}")
    return durations[warmup:warmup + steps]


# ----------------------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------------------
def child_alignkit(args) -> list[float]:
    import torch

    torch.set_num_threads(args.threads)
    import accelerate  # noqa: F401  (imported untimed, as TRL's side imports its libraries)
    import transformers  # noqa: F401

    from alignkit.config import load_config
    from alignkit.recipes import dpo, reward_model, sft

    work, marks = Path(args.work), []
    total = args.warmup + args.steps + 1
    common = [f"model.path={args.model_path}", "model.dtype=float32", "model.gradient_checkpointing=false",
              f"data.max_length={args.max_length}", f"train.steps={total}", f"train.batch_size={args.batch_size}",
              f"train.eval_every={10 * total}", "train.seed=0", f"optim.lr={args.lr}", "optim.warmup_steps=0",
              "optim.schedule=constant", "optim.weight_decay=0.0", "optim.max_grad_norm=1.0",
              "output.tensorboard=false", f"output.dir={work / 'runs'}",
              f"output.name={args.child}-{args.task}-{args.ref}-{os.getpid()}"]
    if args.task == "sft":
        module, cls = sft, sft.SFTConfig
        extra = [f"data.train_file={work / 'sft_train.jsonl'}", f"data.eval_file={work / 'sft_eval.jsonl'}",
                 "train.eval_generate=0"]
    elif args.task == "rm":
        module, cls = reward_model, reward_model.RMConfig
        extra = [f"data.train_file={work / 'pref_train.jsonl'}", f"data.eval_file={work / 'pref_eval.jsonl'}"]
    else:
        module, cls = dpo, dpo.DPOConfig
        extra = [f"data.train_file={work / 'pref_train.jsonl'}", f"data.eval_file={work / 'pref_eval.jsonl'}",
                 f"ref.mode={args.ref}", "loss.beta=0.1", "train.eval_generate=0", "train.eval_kl_prompts=0"]
        if args.ref == "adapter":
            extra += ["model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16",
                      "model.lora.target_modules=all-linear"]
    cfg = load_config(cls, None, common + extra)
    module.run(cfg, callbacks=[lambda step, row: marks.append(time.perf_counter())])
    return marks


def child_trl(args) -> list[float]:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )

    work, marks = Path(args.work), []

    class Marks(TrainerCallback):
        def on_step_begin(self, a, state, control, **k):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, a, state, control, **k):
            marks.append(time.perf_counter())

    tok = AutoTokenizer.from_pretrained(args.model_path)
    total = args.warmup + args.steps + 1
    common = dict(output_dir=str(work / "runs" / f"trl-{args.task}-{args.ref}-{os.getpid()}"), max_steps=total,
                  per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                  learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=1.0, optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False,
                  use_cpu=True, report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
                  dataloader_num_workers=0, disable_tqdm=True, seed=0, max_length=args.max_length)
    name = "sft_train.jsonl" if args.task == "sft" else "pref_train.jsonl"
    rows = [json.loads(line) for line in (work / name).read_text().splitlines()]
    ds = Dataset.from_list(conversational(rows))
    if args.task == "sft":
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, completion_only_loss=True, dataset_num_proc=None),
                             train_dataset=ds, processing_class=tok, callbacks=[Marks()])
    elif args.task == "rm":
        from trl import RewardConfig, RewardTrainer

        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(args.model_path, num_labels=1,
                                                                   dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common, dataset_num_proc=None), train_dataset=ds,
                                processing_class=tok, callbacks=[Marks()])
    else:
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
        peft_config = None
        if args.ref == "adapter":
            from peft import LoraConfig

            peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM")
        config = DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=args.ref == "precomputed",
                           precompute_ref_batch_size=64)
        trainer = DPOTrainer(model=model, args=config, train_dataset=ds, processing_class=tok, callbacks=[Marks()],
                             peft_config=peft_config)
    trainer.train()
    return marks


def run_child(side: str, task: str, ref: str, args) -> dict:
    python = str(TRL_PYTHON) if side == "trl" else sys.executable
    cmd = [python, __file__, "--child", side, "--task", task, "--ref", ref, "--work", args.work,
           "--model-path", str(args.model_path), "--batch-size", str(args.batch_size), "--max-length",
           str(args.max_length), "--warmup", str(args.warmup), "--steps", str(args.steps), "--lr", str(args.lr),
           "--threads", str(args.threads)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(Path(args.work) / "hf")}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} {task}/{ref} failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    out["step_s"] = step_times(out["marks"], args.warmup, args.steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="sft,dpo,rm", help=f"comma-separated of {TASKS} (default all)")
    ap.add_argument("--refs", default="copy,precomputed,adapter", help=f"DPO reference modes of {REFS} (default all)")
    ap.add_argument("--batch-size", type=int, default=8, help="examples (SFT) or pairs per step (default 8)")
    ap.add_argument("--max-length", type=int, default=128, help="max tokens per sequence (default 128)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (default 1)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    ap.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate, constant (default 1e-5)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per side, ABBA order (default 1)")
    ap.add_argument("--sides", default="trl,alignkit", help="comma-separated: trl, alignkit (default both)")
    ap.add_argument("--model-dir", help="'real' (default), 'tiny' (the bundled tiny base: a plumbing check) or a dir")
    ap.add_argument("--quick", action="store_true", help="smoke: --batch-size 4 --warmup 1 --steps 1 --repeats 1, "
                    "--model-dir tiny unless given")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--child", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    ap.add_argument("--ref", default="copy", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        marks = (child_trl if args.child == "trl" else child_alignkit)(args)
        print(json.dumps({"marks": marks, "peak_rss_mib": peak_rss_mib()}))
        return
    if args.quick:
        args.batch_size, args.warmup, args.steps, args.repeats = 4, 1, 1, 1
        args.model_dir = args.model_dir or "tiny"
    tasks = [t for t in args.tasks.split(",") if t]
    refs = [r for r in args.refs.split(",") if r]
    if set(tasks) - set(TASKS) or set(refs) - set(REFS):
        sys.exit(f"tasks are {TASKS}, refs {REFS}")
    sides = [s for s in args.sides.split(",") if s]
    if "trl" in sides and not TRL_PYTHON.exists():
        print(f"TRL runs SKIPPED: {TRL_PYTHON} is missing; create it with: {TRL_VENV_HINT}", flush=True)
        sides.remove("trl")
    import torch
    import transformers

    args.model_path = resolve_model_dir(args.model_dir)
    config = json.loads((args.model_path / "config.json").read_text())
    with torch.device("meta"):
        n_lm = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(args.model_path)).parameters())
    n_rm = n_lm - config["vocab_size"] * config["hidden_size"]  # no LM head matmul; the score head is negligible
    plan = [(t, r) for t in tasks for r in (refs if t == "dpo" else ["-"])]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="real-train-bench-") as work:
        args.work = work
        n_items = args.batch_size * (args.warmup + args.steps + 1)
        sft_rows, pref_rows = records(n_items + 8, seed=0)
        for name, rows in (("sft_train", sft_rows[:n_items]), ("sft_eval", sft_rows[n_items:]),
                           ("pref_train", pref_rows[:n_items]), ("pref_eval", pref_rows[n_items:])):
            (Path(work) / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        tokens = {"sft": tokens_per_item("sft", args.model_path, sft_rows[:n_items]),
                  "pref": tokens_per_item("dpo", args.model_path, pref_rows[:n_items])}
        load = os.getloadavg()
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, torch {torch.__version__}, {args.threads} thread(s) per run")
        print(f"workload: {args.model_path.name}{'' if args.model_dir in (None, 'real') else ' (NOT the issue-18 model)'}"
              f", fp32, batch {args.batch_size}, max length {args.max_length}, {args.warmup} warm-up + {args.steps} "
              f"timed steps; {tokens['sft']:.1f} tokens per SFT example, {tokens['pref']:.1f} per pair", flush=True)
        for task, ref in plan:
            runs = {s: [] for s in sides}
            for rep in range(args.repeats):
                for side in (sides if rep % 2 == 0 else sides[::-1]):
                    r = run_child(side, task, ref, args)
                    runs[side].append(r)
                    print(f"  {task}{'/' + ref if ref != '-' else ''} run {rep + 1} {side}: "
                          f"{statistics.median(r['step_s']):.2f} s/step, peak RSS {r['peak_rss_mib']:.0f} MiB "
                          f"({r['process_s']:.0f} s process)", flush=True)
            per_step = args.batch_size * (tokens["sft"] if task == "sft" else tokens["pref"])
            row = {}
            for side, rs in runs.items():
                s = statistics.median(statistics.median(r["step_s"]) for r in rs)
                row[side] = {"s_per_step": s, "tokens_per_step": per_step, "tokens_per_s": per_step / s,
                             "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                             "step_s_all": [r["step_s"] for r in rs]}
            results[f"{task}/{ref}" if ref != "-" else task] = row
    load_after = os.getloadavg()
    rate = matmul_rate(config, args.threads)
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; matmul rate "
          f"{rate:.1f} GFLOP/s on the model's shapes; N = {n_lm / 1e6:.1f}M (RM trunk {n_rm / 1e6:.1f}M)")
    print(f"{'':18} {'side':9} {'s/step':>8} {'tok/s':>8} {'peak RSS MiB':>13} {'floor s':>8} {'floor share':>12}")
    for key, row in results.items():
        task = key.split("/")[0]
        live_ref = key in ("dpo/copy", "dpo/adapter")
        for side, r in row.items():
            t = r["tokens_per_step"]
            flops = floor_flops(n_rm if task == "rm" else n_lm, trained_tokens=t, forward_tokens=t if live_ref else 0)
            r["floor_s"] = floor_seconds(flops, rate)
            r["floor_share"] = r["floor_s"] / r["s_per_step"]
            print(f"{key:18} {side:9} {r['s_per_step']:8.2f} {r['tokens_per_s']:8.1f} {r['peak_rss_mib']:13.0f} "
                  f"{r['floor_s']:8.2f} {r['floor_share']:12.1%}")
        if "trl" in row and "alignkit" in row:
            a, t = row["alignkit"], row["trl"]
            row["ratio"] = a["tokens_per_s"] / t["tokens_per_s"]
            row["memory_ratio"] = a["peak_rss_mib"] / t["peak_rss_mib"]
            bar = BARS[task]
            print(f"{'':18} alignkit / TRL: {row['ratio']:.2f}x tokens/s (bar {bar:g}x: "
                  f"{'MET' if row['ratio'] >= bar else 'NOT met'}), peak RSS {row['memory_ratio']:.2f}x (bar <= "
                  f"{MEMORY_BAR}: {'MET' if row['memory_ratio'] <= MEMORY_BAR else 'NOT met'})")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load_before": load,
                                        "load_after": load_after, "rate_gflops": rate, "n_params": n_lm,
                                        "n_params_rm": n_rm, "results": results}, indent=1))


if __name__ == "__main__":
    main()
