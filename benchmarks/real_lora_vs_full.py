"""GRPO per step, LoRA vs full fine-tuning (issue 18), in wall AND process CPU seconds, for a shared machine.

    .venv/bin/python benchmarks/real_lora_vs_full.py                          # 4x4, 32 new tokens, 1 + 1 steps
    .venv/bin/python benchmarks/real_lora_vs_full.py --src /tmp/before/src    # another source tree (PYTHONPATH)
    .venv/bin/python benchmarks/real_lora_vs_full.py --model-dir tiny         # plumbing only

The workload and config are `real_grpo_vs_trl.py`'s alignkit side (its ``child_alignkit``: SmolLM2-135M-Instruct,
fp32, word-arithmetic chat prompts, one update per batch, all rows in one micro-batch), sides ``alignkit``
(full fine-tuning) and ``alignkit_lora`` (``model.lora.enabled=true``: r 8, alpha 16, all linear layers),
each in its own subprocess, ``--threads`` (default 1) torch threads. Besides wall seconds per step it records
the process's CPU seconds per step (time.process_time between the same step marks): on a machine shared with
other jobs the wall time mostly measures the scheduler, the CPU time (one thread) the work done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

SIDES = ("alignkit", "alignkit_lora")


def child(args) -> dict:
    import real_grpo_vs_trl as bench

    cpu: list[float] = []

    class Clock:  # the step marks of child_alignkit: wall time as before, CPU time beside it
        @staticmethod
        def perf_counter() -> float:
            cpu.append(time.process_time())
            return time.perf_counter()

    bench.time = Clock
    args.watch = False
    out = bench.child_alignkit(args)
    for i, step in enumerate(out["steps"]):
        step["cpu_s"] = cpu[i + 1] - cpu[i]
    import alignkit

    out["alignkit"] = str(Path(alignkit.__file__).parent)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="4x4")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--src", help="run the children on this source tree (PYTHONPATH)")
    ap.add_argument("--model-dir", default=None, help="default: the real model; 'tiny': the bundled tiny model")
    ap.add_argument("--child-timeout", type=float, default=600, help="seconds before a side is killed")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import real_grpo_vs_trl as bench

    args.shape = bench.parse_shape(args.shape)
    if args.child:
        print(json.dumps(child(args)))
        return
    from _real import word_problems, write_jsonl

    results = {}
    with tempfile.TemporaryDirectory(prefix="real-lora-bench-") as work:
        write_jsonl(word_problems(256, seed=0), Path(work) / "prompts.jsonl")
        load = os.getloadavg()
        print(f"{os.cpu_count()} CPU cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
              f"{args.shape[0]}x{args.shape[1]}, {args.max_new_tokens} new tokens, {args.warmup} warm-up + "
              f"{args.steps} timed steps, {args.threads} thread(s)", flush=True)
        for side in args.sides.split(","):
            cmd = [sys.executable, __file__, "--child", side, "--work", work, "--shape",
                   f"{args.shape[0]}x{args.shape[1]}", "--max-new-tokens", str(args.max_new_tokens), "--warmup",
                   str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads), "--beta",
                   str(args.beta), "--lr", str(args.lr)] + (["--model-dir", args.model_dir] if args.model_dir else [])
            env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads),
                   "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
                   "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            if args.src:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (args.src, env.get("PYTHONPATH")) if p)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
            if proc.returncode:
                sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            timed = r["steps"][args.warmup:] or r["steps"]
            results[side] = r
            phases = {k[5:]: round(statistics.median(s.get(k, 0.0) for s in timed), 2)
                      for k in sorted({k for s in timed for k in s if k.startswith("time/")})}
            print(f"{r['alignkit']} {side:>13}: {statistics.median(s['step_s'] for s in timed):7.2f} s/step wall, "
                  f"{statistics.median(s['cpu_s'] for s in timed):7.2f} s/step CPU, "
                  f"{statistics.median(s['tokens'] for s in timed):.0f} completion tokens; wall phases {phases}",
                  flush=True)
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"src": args.src, "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
