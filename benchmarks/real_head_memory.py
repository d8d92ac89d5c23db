"""Peak memory of one GRPO-shaped micro-batch (issue 18): the LM head chunked vs full [rows, tokens, V] logits.

    .venv/bin/python benchmarks/real_head_memory.py                         # fast and slow paths, full and LoRA
    .venv/bin/python benchmarks/real_head_memory.py --src /tmp/before/src   # the same on another source tree
    .venv/bin/python benchmarks/real_head_memory.py --model-dir tiny --quick  # plumbing only (bundled tiny model)

Each variant runs in a fresh subprocess: load SmolLM2-135M-Instruct (fp32, train mode; ``lora``: peft LoRA r 8
on all linear layers, as ``model.lora.enabled=true``), build 4 prompts x G 4 = 16 rows of ``--prompt`` (24)
prompt + ``--completion`` (64) completion tokens (random ids, every completion token real), then ONE
``completion_logprobs(..., entropy=True)`` (GRPO's first-iteration call, temperature 1) and the backward of a
GRPO-like loss (advantage-weighted logprobs + entropy mean). Measured around that step only: the peak resident
set (VmHWM, reset through /proc/self/clear_refs after loading) minus the resident set before it; the
process's ru_maxrss; the step's wall time. ``slow`` = ``ALIGNKIT_SLOW_PATHS=1`` (the full-logits twins).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("fast", "slow", "lora_fast", "lora_slow")


def _status(key: str) -> float:
    """A /proc/self/status field in MiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def child(args) -> dict:
    import gc
    from types import SimpleNamespace

    import torch

    torch.set_num_threads(args.threads)
    from alignkit.config import LoraSection, ModelSection
    from alignkit.models import load_policy
    from alignkit.models.forwards import completion_logprobs

    lora = args.child.startswith("lora")
    cfg = ModelSection(path=args.model_dir, dtype="float32")
    model, _ = load_policy(cfg)
    if lora:
        from alignkit.infra.train import apply_lora

        model = apply_lora(model, LoraSection(enabled=True))
    model.train()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts, group = 4, 4
    prompt_ids = torch.randint(100, vocab, (prompts, args.prompt), generator=g).repeat_interleave(group, 0)
    completion_ids = torch.randint(100, vocab, (prompts * group, args.completion), generator=g)
    batch = SimpleNamespace(prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids),
                            completion_ids=completion_ids, response_mask=torch.ones_like(completion_ids))
    advantages = torch.randn(prompts * group, 1, generator=g)
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    times = []
    for _ in range(args.steps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        lp, ent = completion_logprobs(model, batch, slice(0, prompts * group), temperature=1.0, entropy=True)
        loss = -(lp * advantages).mean() - 0.01 * ent.mean()
        loss.backward()
        times.append(time.perf_counter() - start)
        del lp, ent, loss
    seconds = statistics.median(times[1:] or times)  # after the first step (allocations, warm-up)
    import alignkit

    return {"variant": args.child, "alignkit": str(Path(alignkit.__file__).parent), "rss_before_mib": before, "peak_mib": _status("VmHWM"),
            "step_peak_extra_mib": _status("VmHWM") - before,
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_s": seconds,
            "steps_s": times,
            "rows": prompts * group, "tokens": args.prompt + args.completion, "vocab": vocab}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {VARIANTS}")
    ap.add_argument("--src", help="run the children on this source tree (PYTHONPATH), e.g. an older commit's src/")
    ap.add_argument("--model-dir", default=None, help="model directory (default: the real-model cache); 'tiny': "
                    "the bundled tiny model")
    ap.add_argument("--prompt", type=int, default=24)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="forward+backward steps per variant (default 1); the step "
                    "time is the median after the first, the peak is over all of them")
    ap.add_argument("--quick", action="store_true", help="8 + 8 tokens")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.prompt, args.completion = 8, 8
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _real import resolve_model_dir

    args.model_dir = str(resolve_model_dir(args.model_dir))
    results = []
    for variant in args.variants.split(","):
        env = dict(os.environ)
        env.pop("ALIGNKIT_SLOW_PATHS", None)
        if variant.endswith("slow"):
            env["ALIGNKIT_SLOW_PATHS"] = "1"
        if args.src:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (args.src, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, __file__, "--child", variant, "--model-dir", args.model_dir, "--prompt",
               str(args.prompt), "--completion", str(args.completion), "--threads", str(args.threads),
               "--steps", str(args.steps)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{variant} failed:\n{out.stderr[-4000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['alignkit']} {variant:>9}: step peak +{r['step_peak_extra_mib']:7.0f} MiB over "
              f"{r['rss_before_mib']:.0f} MiB (ru_maxrss {r['ru_maxrss_mib']:.0f} MiB), {r['step_s']:.2f} s/step, "
              f"{r['rows']} rows x {r['tokens']} tokens, V {r['vocab']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"src": args.src, "load": os.getloadavg(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
