"""Rollout throughput: alignkit's native backend vs HF `model.generate`, same model, prompts and lengths.

    python benchmarks/rollout.py --out rollout.json                 # CPU: tiny + ~4M model, two batch sizes
    python benchmarks/rollout.py --device cuda --models qwen0.5b    # GPU: ~0.5B random-weight Qwen2, bf16

Speed: for each (model, workload) ONE process builds the model (random weights, seed 0), warms every runner
up once (the warm-up also compiles, for `native+compile`), then runs `--repeats` rounds, each round timing
every runner once, interleaved, so load changes on a shared machine hit all runners alike; tokens/s is the
median over rounds. Peak memory: each runner again in its own subprocess (build, warm-up, one call), so the
peak is that runner's alone. Runners:

- `hf_generate`: plain `model.generate(do_sample=True, num_return_sequences=G)`, what a TRL user runs.
- `native`: `alignkit.rollout.generate(backend="native")`, end to end (logprobs, decoded text, Rollout).
- `native+compile`: the same with `compile=True` (the decode step through torch.compile).
- `alignkit_hf`: `generate(backend="hf")` (model.generate plus the same post-processing as native).

Equal work (workloads `default`, `large_batch`): EOS never ends a row (`ignore_eos=True` for alignkit,
`eos_token_id=[]` for generate), so every row generates exactly `--max-new-tokens` tokens in every runner,
all of them counted. Workload `early_eos` instead shows rows ending at different steps, as in RL: 16 token
ids are EOS (about 6% per step on the random model, so lengths are roughly geometric, capped at
`--max-new-tokens`); only tokens up to and including each row's EOS count, for every runner. Sampling: T = 1, no
top-k / top-p. Memory: CPU peak RSS during generation (VmHWM, reset after the model is built) and its
rise over the RSS after the build; CUDA `max_memory_allocated`. On CUDA the report adds the fraction of the memory-bandwidth limit reached: each
decode step must read all weights and the KV cache once, so the limit is bandwidth / bytes-per-step.
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
import time

MODELS = {  # name -> build_tiny kwargs (the tiny tokenizer: 267 ids)
    "tiny": {},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 8},
    "qwen0.5b": {"arch": "qwen2", "hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2,
                 "intermediate_size": 4864, "max_position_embeddings": 2048, "vocab_size": 151_936},
}
WORKLOADS = {"default": (8, 8), "large_batch": (32, 8), "early_eos": (8, 8)}  # name -> (prompts, G)
EARLY_EOS_IDS = list(range(40, 56))  # 16 ordinary byte tokens made EOS for the early_eos workload
RUNNERS = ("hf_generate", "native", "native+compile", "alignkit_hf")
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0, "A10": 600.0}
WORDS = "the quick brown fox jumps over a lazy dog while seven bright stars fade into morning light".split()


def _prompts(n: int) -> list[str]:
    """n deterministic prompts of 3 to 12 words (different lengths, so left padding is exercised)."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i % 10)) for i in range(n)]


def _setup(args_or_spec: dict):
    """Threads, model, tokenizer, prompts, EOS ids (None: ignored) for one (model, workload)."""
    import torch

    from alignkit.models import build_tiny, build_tiny_model, build_tiny_tokenizer

    if args_or_spec.get("threads"):
        torch.set_num_threads(args_or_spec["threads"])
    kwargs = dict(MODELS[args_or_spec["model"]])
    vocab = kwargs.pop("vocab_size", None)
    if vocab is None:
        model, tok = build_tiny(**kwargs)
    else:  # a real-size vocabulary (ids the tokenizer never emits are fine)
        tok = build_tiny_tokenizer(model_max_length=kwargs["max_position_embeddings"])
        model = build_tiny_model(vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kwargs)
    device = args_or_spec["device"]
    model = model.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()
    eos = None
    if args_or_spec["workload"] == "early_eos":
        eos = [tok.eos_token_id, *EARLY_EOS_IDS]
        model.generation_config.eos_token_id = eos
    return model, tok, _prompts(WORKLOADS[args_or_spec["workload"]][0]), eos


def _call(runner: str, model, tok, prompts, group: int, new_tokens: int, eos: list[int] | None) -> int:
    """One rollout, synchronized; returns the number of generated tokens (up to and including EOS).

    eos None: EOS ignored (equal work); else the EOS ids (set as the model's generation_config EOS)."""
    import torch

    from alignkit.rollout import generate

    if runner == "hf_generate":
        enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt", padding_side="left")
        enc = enc.to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=group, max_new_tokens=new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=eos or [])
        completion = out[:, enc["input_ids"].shape[1]:]
        if eos:  # tokens up to and including the first EOS of each row
            hit = torch.isin(completion, torch.tensor(eos, device=completion.device))
            first = torch.where(hit.any(-1), hit.int().argmax(-1) + 1, completion.shape[1])
            tokens = int(first.sum())
        else:
            tokens = completion.numel()
    else:
        rollout = generate(model, tok, prompts, num_samples=group, max_new_tokens=new_tokens, temperature=1.0,
                           seed=0, backend="hf" if runner == "alignkit_hf" else "native",
                           compile=runner == "native+compile", ignore_eos=not eos)
        tokens = int(rollout.response_mask.sum())
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return tokens


def _time_workload(spec: dict, runners: list[str]) -> list[dict]:
    """Interleaved timing of all runners on one (model, workload), in this process."""
    import torch

    model, tok, prompts, eos = _setup(spec)
    group, new_tokens = WORKLOADS[spec["workload"]][1], spec["new_tokens"]
    warmup = {}
    for runner in runners:
        t0 = time.perf_counter()
        _call(runner, model, tok, prompts, group, new_tokens, eos)
        warmup[runner] = time.perf_counter() - t0
    rates = {r: [] for r in runners}
    tokens = {}
    for _ in range(spec["repeats"]):
        for runner in runners:
            t0 = time.perf_counter()
            tokens[runner] = _call(runner, model, tok, prompts, group, new_tokens, eos)
            rates[runner].append(tokens[runner] / (time.perf_counter() - t0))
    params = sum(p.numel() for p in model.parameters())
    out = []
    for runner in runners:
        r = {**spec, "runner": runner, "params": params, "threads": torch.get_num_threads(),
             "tokens_per_call": tokens[runner], "tokens_per_s": statistics.median(rates[runner]),
             "tokens_per_s_all": rates[runner], "warmup_s": warmup[runner]}
        if spec["device"] == "cuda":
            r.update(_bandwidth(model, len(prompts) * group, max(len(tok(p)["input_ids"]) for p in prompts), r))
        out.append(r)
    return out


def _vm_hwm_mib() -> float:
    """Peak RSS of this process (VmHWM) in MiB; resettable through /proc/self/clear_refs."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _memory_worker(spec: dict) -> dict:
    """In a fresh subprocess: peak memory of one runner (warm-up plus one call).

    After the model is built the kernel's peak-RSS mark is reset (`5 > /proc/self/clear_refs`), so the
    rise is the generation's own, not an import or model-building transient."""
    import psutil
    import torch

    model, tok, prompts, eos = _setup(spec)
    rss_setup = psutil.Process().memory_info().rss / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak = _vm_hwm_mib
    except OSError:  # not Linux, or not allowed: lifetime peak
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        _call(spec["runner"], model, tok, prompts, WORKLOADS[spec["workload"]][1], spec["new_tokens"], eos)
    out = {"peak_rss_mib": peak(), "rss_setup_mib": rss_setup, "rss_rise_mib": peak() - rss_setup}
    if spec["device"] == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _bandwidth(model, batch: int, prompt_len: int, result: dict) -> dict:
    """Fraction of the memory-bandwidth limit: bytes each decode step must read (weights + mean KV cache)."""
    import torch

    cfg = model.config
    elem = next(model.parameters()).element_size()
    weight_bytes = sum(p.numel() for p in model.parameters()) * elem
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    mean_len = prompt_len + result["new_tokens"] / 2
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * mean_len * batch * elem
    name = torch.cuda.get_device_name()
    peak = result.get("peak_gbs") or next((v for k, v in PEAK_GBS.items() if k in name), None)
    achieved = result["tokens_per_s"] / batch * (weight_bytes + kv_bytes) / 1e9
    return {"gpu": name, "achieved_gbs": achieved, "peak_gbs": peak,
            "bandwidth_fraction": achieved / peak if peak else None}


def _subprocess(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--memory-worker", json.dumps(spec)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        sys.exit(f"{spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_row(r: dict, results: list[dict]) -> None:
    base = next(x for x in results if x["model"] == r["model"] and x["workload"] == r["workload"]
                and x["runner"] == "hf_generate") if "hf_generate" in {x["runner"] for x in results} else None
    ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
    n, g = WORKLOADS[r["workload"]]
    extra = f"  bw {r['bandwidth_fraction']:.1%}" if r.get("bandwidth_fraction") else ""
    mem = f"peak RSS {r['peak_rss_mib']:6.0f} MiB (+{r['rss_rise_mib']:4.0f})" if "peak_rss_mib" in r else ""
    print(f"{r['model']:>8} {r['params'] / 1e6:6.2f}M {r['workload']:<11} {n:>3}x{g} x{r['new_tokens']}  {r['runner']:<15}"
          f"{r['tokens_per_s']:>9.0f} tok/s  x{ratio:5.2f}  {mem}  warm-up {r['warmup_s']:.1f}s{extra}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,small", help=f"comma list of {sorted(MODELS)}")
    parser.add_argument("--workloads", default="default,large_batch,early_eos", help=f"comma list of {sorted(WORKLOADS)}")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma list of {RUNNERS}")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-runner memory subprocesses")
    parser.add_argument("--peak-gbs", type=float, default=None, help="GPU memory bandwidth (GB/s) if not known")
    parser.add_argument("--out", default="rollout_benchmark.json", help="JSON results path")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(_memory_worker(json.loads(args.memory_worker))))
        return
    runners = args.runners.split(",")
    results = []
    for model in args.models.split(","):
        for workload in args.workloads.split(","):
            spec = {"model": model, "workload": workload, "device": args.device, "new_tokens": args.max_new_tokens,
                    "repeats": args.repeats, "peak_gbs": args.peak_gbs, "threads": args.threads}
            rows = _time_workload(spec, runners)
            for row in rows:
                if not args.no_memory:
                    row.update(_subprocess({**spec, "runner": row["runner"]}))
                results.append(row)
                _print_row(row, results)
    import torch

    meta = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "load_avg_at_end": os.getloadavg()}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
