"""DPO side by side: ``alignkit dpo`` vs TRL's ``DPOTrainer`` on the same tiny model, pairs, batch, max length
and steps, on CPU. Results go in docs/benchmarks.md (DPO section).

    .venv/bin/python benchmarks/dpo_vs_trl.py                       # both sides, both reference modes
    .venv/bin/python benchmarks/dpo_vs_trl.py --steps 20 --repeats 1   # quicker

TRL runs in its own virtual environment (it must not change the pinned packages of .venv):

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 "trl==1.16.*" && .venv-trl/bin/pip install -e .

What is compared (each run is its own subprocess, so the peak-memory reading, the child's own ru_maxrss, is
clean; the sides alternate, ``--repeats`` times, and the median is reported):

- (i)  alignkit ``ref.mode=precomputed``  vs TRL ``precompute_ref_log_probs=True``
- (ii) alignkit ``ref.mode=copy`` (live frozen reference) vs TRL's default (live reference model)

Workload: the tiny model built once with ``alignkit.models.build_tiny`` and saved to a temporary directory
(both sides load it from there), ``steps x batch_size`` synthetic arithmetic pairs (one epoch, every pair
once), the same chat template, sigmoid loss, beta 0.1, AdamW lr 1e-3 with 10 warmup steps and cosine decay,
max_grad_norm 1, fp32, no gradient checkpointing (TRL 1.x turns on bf16 and gradient checkpointing by
default: both are switched off), no evaluation, no checkpoints. ``pairs/s`` = pairs trained / wall time from
loading the model to the end of training, with library imports done before and nothing saved after (alignkit's
``run`` reports that span as ``setup_s + wall_s``, leaving out its final export and plot); it includes
tokenization and the reference pre-pass (TRL does it in ``DPOTrainer.__init__``, alignkit in ``run``).
``loop pairs/s`` leaves the setup out (TRL: ``train_runtime``; alignkit: ``wall_s``). Both report the tokens
they train on: they must match (same rendering).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_workload(work: Path, n_pairs: int, args) -> None:
    from alignkit.data import make_split, write_jsonl
    from alignkit.models import build_tiny
    from alignkit.recipes.dpo import arithmetic_preferences

    build_tiny(work / "model", hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads)
    train_p, eval_p = make_split(n_pairs, 8, level=2, seed=0)
    write_jsonl(arithmetic_preferences(train_p, seed=0), work / "train.jsonl")
    write_jsonl(arithmetic_preferences(eval_p, seed=1), work / "eval.jsonl")


def child_alignkit(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    # The libraries run() imports lazily, imported here (untimed) as TRL's side imports its own before timing.
    import accelerate  # noqa: F401
    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401

    import alignkit.data.preferences  # noqa: F401
    import alignkit.logprobs  # noqa: F401
    import alignkit.models  # noqa: F401
    from alignkit.config import load_config
    from alignkit.recipes import dpo

    work = Path(args.work)
    cfg = load_config(dpo.DPOConfig, None, [
        f"model.path={work / 'model'}", f"data.train_file={work / 'train.jsonl'}",
        f"data.eval_file={work / 'eval.jsonl'}", f"data.max_length={args.max_length}",
        f"ref.mode={'precomputed' if args.ref == 'precomputed' else 'copy'}", "ref.batch_size=64",
        f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", "train.eval_every=1000000",
        "train.eval_kl_prompts=0", "train.eval_generate=0", "loss.beta=0.1", "optim.lr=1e-3",
        "optim.warmup_steps=10", "optim.schedule=cosine", "optim.weight_decay=0.0", "output.tensorboard=false",
        f"train.share_prefix={args.share_prefix}",
        f"output.dir={work / 'runs'}", f"output.name=alignkit-{args.ref}-{os.getpid()}",  # fresh: no cache reuse
    ])
    summary = dpo.run(cfg)
    from alignkit.models import load_tokenizer

    tok = load_tokenizer(work / "model")
    train, _, _ = dpo.render_pairs(tok, dpo.load_data(cfg.data, 0)[0], cfg.data)
    return {"total_s": summary["setup_s"] + summary["wall_s"], "loop_s": summary["wall_s"], "cpu_s": summary["cpu_s"],
            "tokens": sum(len(p.chosen) + len(p.rejected) for p in train)}


def child_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    work = Path(args.work)
    rows = [json.loads(line) for line in (work / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(work / "model")
    config = DPOConfig(
        output_dir=str(work / "runs" / f"trl-{args.ref}-{os.getpid()}"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-3, lr_scheduler_type="cosine",
        warmup_steps=10, weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
        max_length=args.max_length, precompute_ref_log_probs=args.ref == "precomputed", precompute_ref_batch_size=64,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, save_strategy="no", report_to="none",
        logging_steps=10, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok)
    out = trainer.train()
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0  # nothing is saved (save_strategy="no")
    ds = trainer.train_dataset
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    return {"total_s": total, "loop_s": out.metrics["train_runtime"], "cpu_s": cpu, "tokens": tokens}


def run_child(side: str, ref: str, args) -> dict:
    python = str(TRL_PYTHON) if side == "trl" else sys.executable
    cmd = [python, __file__, "--child", side, "--ref", ref, "--work", args.work, "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads),
           "--share-prefix", args.share_prefix]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(Path(args.work) / "hf-cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side}/{ref} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of each side")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side and mode (median reported)")
    ap.add_argument("--refs", default="precomputed,live")
    ap.add_argument("--share-prefix", default="true", choices=["true", "false"],
                    help="alignkit's train.share_prefix (false: the plain [2B, T] concatenated batch)")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--child", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--ref", choices=["precomputed", "live"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = (child_trl if args.child == "trl" else child_alignkit)(args)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"TRL's environment is missing: {TRL_PYTHON} (see this file's docstring)")
    import torch

    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as work:
        args.work = work
        n_pairs = args.steps * args.batch_size
        write_workload(Path(work), n_pairs, args)
        trl_version = subprocess.run([str(TRL_PYTHON), "-c", "import trl; print(trl.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
              f"{torch.__version__}, {args.threads} thread(s) per side; TRL {trl_version}")
        print(f"workload: {n_pairs} pairs, batch {args.batch_size}, max_length {args.max_length}, {args.steps} steps; "
              f"tiny llama hidden {args.hidden_size}, {args.num_layers} layers; alignkit share_prefix={args.share_prefix}")
        results = {}
        for ref in args.refs.split(","):
            runs = {"alignkit": [], "trl": []}
            for _ in range(args.repeats):
                for side in ("trl", "alignkit"):
                    runs[side].append(run_child(side, ref, args))
            row = {}
            for side, rs in runs.items():
                row[side] = {
                    "pairs_per_s": statistics.median(n_pairs / r["total_s"] for r in rs),
                    "loop_pairs_per_s": statistics.median(n_pairs / r["loop_s"] for r in rs),
                    "pairs_per_cpu_s": statistics.median(n_pairs / r["cpu_s"] for r in rs),
                    "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                    "tokens": rs[0]["tokens"], "runs_total_s": [round(r["total_s"], 2) for r in rs],
                }
            row["ratio"] = row["alignkit"]["pairs_per_s"] / row["trl"]["pairs_per_s"]
            row["loop_ratio"] = row["alignkit"]["loop_pairs_per_s"] / row["trl"]["loop_pairs_per_s"]
            row["cpu_ratio"] = row["alignkit"]["pairs_per_cpu_s"] / row["trl"]["pairs_per_cpu_s"]
            results[ref] = row
            a, t = row["alignkit"], row["trl"]
            print(f"\nreference {ref}: tokens trained alignkit {a['tokens']} / TRL {t['tokens']}")
            print(f"  {'':10} {'pairs/s':>9} {'loop pairs/s':>13} {'pairs/CPU-s':>12} {'peak RSS MiB':>13}  runs (s)")
            for side in ("alignkit", "trl"):
                r = row[side]
                print(f"  {side:10} {r['pairs_per_s']:9.1f} {r['loop_pairs_per_s']:13.1f} {r['pairs_per_cpu_s']:12.1f} "
                      f"{r['peak_rss_mib']:13.0f}  {r['runs_total_s']}")
            print(f"  ratio alignkit / TRL: {row['ratio']:.2f}x end to end, {row['loop_ratio']:.2f}x loop only, "
                  f"{row['cpu_ratio']:.2f}x per CPU-second")
        if args.out:
            args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"},
                                            "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
