"""SFT and reward-model training throughput: `alignkit sft` / `alignkit rm` vs TRL's SFTTrainer / RewardTrainer.

    python benchmarks/sft_rm_vs_trl.py --threads 1 --repeats 3 --out /tmp/sft_rm.json   # full run (~15 min)
    python benchmarks/sft_rm_vs_trl.py --quick                                # smoke run (seconds of training)
    python benchmarks/sft_rm_vs_trl.py --tasks sft --runners alignkit_sft,trl_sft --repeats 3

Same workload on both sides, in one invocation: the same model weights (the bundled tiny base model,
`src/alignkit/assets/tiny-base`, loaded from disk by each side; the RM gets a fresh 1-output score head on
both sides), the same data (synthetic arithmetic written once to JSONL that both sides read: SFT
prompt/completion, RM prompt/chosen/rejected, all levels 1-5 mixed so lengths vary, 17-53 tokens for SFT),
rendered with the same chat template (the TRL runner checks that its token ids equal alignkit's), the same
global batch (examples or pairs per optimizer step), max length, number of steps, torch AdamW with constant
lr and grad clipping 1.0, fp32, no gradient checkpointing (TRL 1.x defaults bf16 and gradient checkpointing
ON; both are turned off), SFT loss on completion tokens only, and no evaluation, logging or saving while
timed. Each (runner, repeat) is its own subprocess, so its peak RSS is its own; alignkit runners use
`--alignkit-python`, TRL runners `--trl-python` (a venv with trl and alignkit installed).

Runners: `alignkit_sft` (packing on: the default), `alignkit_sft_padded` (train.packing=false, to separate
packing from everything else), `trl_sft` (TRL default: padded batches), `trl_sft_packed` (packing=True: TRL
packs the dataset into rows of max_length tokens, best-fit decreasing, then trains padding-free; a step is
`round(batch_size x mean length / max_length)` such rows, so it holds about as many tokens as an alignkit
step), `alignkit_rm`, `trl_rm`.

Metric (defined in `benchmarks/_sft_rm_workers.py`, identical on both sides): tokens/s = real (non-pad)
prompt + completion tokens trained on in steps warmup+1 .. warmup+steps, divided by the wall time from the
end of optimizer step `warmup` to the end of step `warmup + steps`. Model loading, data preparation,
evaluation and saving are outside it. tokens/CPU-s divides the same tokens by the process CPU time of the
same window: with `--threads 1` it is what tokens/s would be on an idle core, and it stays put when other
jobs share the machine, which wall time does not (`cpu_share` = CPU time / wall time of the window: ~1.0
with one thread on an idle core; lower means the run waited for a core and its wall-clock tokens/s are
too low). Memory: peak = ru_maxrss of the runner's process (whole run: imports, data preparation,
training, final save); RSS@1 = resident set size right after the first optimizer step.
Repeats run interleaved (a, b, c, a, b, c) so background load hits all runners alike; the table shows the
best and the median of the repeats; the ratios are given for tokens/s (best, median) and tokens/CPU-s (best).
On a shared machine use `--threads 1` (an oversubscribed multi-threaded run spends time spin-waiting).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_sft_rm_workers.py"
TASK_RUNNERS = {"sft": ["alignkit_sft", "alignkit_sft_padded", "trl_sft", "trl_sft_packed"],
                "rm": ["alignkit_rm", "trl_rm"]}
BARS = {("sft", "alignkit_sft", "trl_sft"): 2.0, ("sft", "alignkit_sft", "trl_sft_packed"): 2.0,
        ("rm", "alignkit_rm", "trl_rm"): 1.0}  # (task, ours, theirs) -> target ratio of tokens/s


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "alignkit_bench_sft_rm.json"),
                   help="JSON file for the results (every repeat of every runner, the summary and the workload)")
    p.add_argument("--tasks", default="sft,rm", help="comma-separated: sft, rm")
    p.add_argument("--runners", default=None, help="comma-separated subset of " + ", ".join(
        r for rs in TASK_RUNNERS.values() for r in rs) + "; None = all runners of --tasks")
    p.add_argument("--batch-size", type=int, default=32, help="examples (SFT) or pairs (RM) per optimizer step")
    p.add_argument("--max-length", type=int, default=128, help="max tokens per sequence (and packed-row length)")
    p.add_argument("--steps", type=int, default=150, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed optimizer steps before the timed ones (>= 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each runner (interleaved)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (constant, no warmup)")
    p.add_argument("--levels", default="1,2,3,4,5", help="arithmetic levels of the synthetic data (mixed)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads per runner (use 1 on a machine shared with other jobs)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--model-dir", default=None,
                   help="model directory both sides load; None = alignkit's bundled tiny base model")
    p.add_argument("--alignkit-python", default=sys.executable, help="interpreter for the alignkit runners")
    p.add_argument("--trl-python", default=str(REPO / ".venv-trl" / "bin" / "python"),
                   help="interpreter for the TRL runners (a venv with trl and alignkit)")
    p.add_argument("--workdir", default=None,
                   help="scratch directory, kept; None = a temporary one, removed after")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per runner process")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 8, 1 warm-up + 3 timed steps, 1 repeat (overrides those options)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.repeats = 8, 3, 1, 1
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the timed window starts at the end of a step)")
    return args


def _runners(args) -> list[tuple[str, str]]:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASK_RUNNERS]
    if bad:
        raise SystemExit(f"unknown task(s) {bad}; choose from {list(TASK_RUNNERS)}")
    chosen = None if args.runners is None else {r.strip() for r in args.runners.split(",") if r.strip()}
    known = {r for t in tasks for r in TASK_RUNNERS[t]}
    if chosen is not None and chosen - known:
        raise SystemExit(f"unknown runner(s) {sorted(chosen - known)} for tasks {tasks}; "
                         f"choose from {sorted(known)}")
    return [(t, r) for t in tasks for r in TASK_RUNNERS[t] if chosen is None or r in chosen]


def prepare_data(args, workdir: Path, tasks: set[str]) -> dict:
    """Write the shared JSONL files once; -> paths and data facts (lengths in tokens)."""
    import alignkit
    from alignkit.data import make_split, render_many, to_sft_records, write_jsonl
    from alignkit.data.preferences import to_preference_records
    from alignkit.models.loading import load_tokenizer

    model_dir = Path(args.model_dir or Path(alignkit.__file__).parent / "assets" / "tiny-base").resolve()
    tok = load_tokenizer(model_dir)
    levels = [int(x) for x in args.levels.split(",")]
    n_train = math.ceil(1.25 * (args.warmup + args.steps) * args.batch_size)  # no epoch boundary while timed
    train_p, eval_p = make_split(n_train, 16, level=levels, seed=args.seed)
    facts: dict = {"model_dir": str(model_dir), "n_train": n_train, "levels": levels}
    if "sft" in tasks:
        sft_train, sft_eval = to_sft_records(train_p), to_sft_records(eval_p)
        rendered, _ = render_many(tok, sft_train, max_length=args.max_length)
        lengths = [len(e) for e in rendered]
        mean = sum(lengths) / len(lengths)
        facts["sft"] = {"train_file": str(write_jsonl(sft_train, workdir / "sft_train.jsonl")),
                        "eval_file": str(write_jsonl(sft_eval, workdir / "sft_eval.jsonl")),
                        "tokens_min": min(lengths), "tokens_mean": mean, "tokens_max": max(lengths),
                        "trl_packed_rows": max(1, round(args.batch_size * mean / args.max_length))}
    if "rm" in tasks:
        rm_train = to_preference_records(train_p, seed=args.seed)
        rm_eval = to_preference_records(eval_p, seed=args.seed + 1)
        rendered, _ = render_many(tok, rm_train, kind="preference", max_length=args.max_length)
        lengths = [len(c) + len(r) for c, r in rendered]
        facts["rm"] = {"train_file": str(write_jsonl(rm_train, workdir / "rm_train.jsonl")),
                       "eval_file": str(write_jsonl(rm_eval, workdir / "rm_eval.jsonl")),
                       "pair_tokens_min": min(lengths), "pair_tokens_mean": sum(lengths) / len(lengths),
                       "pair_tokens_max": max(lengths)}
    return facts


def run_one(args, task: str, runner: str, data: dict, workdir: Path, tag: str) -> dict:
    spec = {"runner": runner, "model_dir": data["model_dir"], "batch_size": args.batch_size,
            "max_length": args.max_length, "warmup": args.warmup, "steps": args.steps, "lr": args.lr,
            "threads": args.threads, "seed": args.seed, "workdir": str(workdir / tag), **data[task]}
    spec_path, result_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    python = args.trl_python if runner.startswith("trl") else args.alignkit_python
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    log_path = workdir / f"{tag}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([python, str(WORKER), str(spec_path), str(result_path)], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=args.timeout)
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}); log tail:\n{tail}")
    result = json.loads(result_path.read_text())
    result["subprocess_wall_s"] = time.perf_counter() - t0
    return result


def summarize(results: dict[str, list[dict]]) -> dict:
    """Per runner: best / median over repeats of tokens/s (wall) and tokens per CPU-second, and the rest."""
    out = {}
    for runner, reps in results.items():
        def col(key, reps=reps):
            return [r[key] for r in reps]

        tps, cps, robust = col("tokens_per_s"), col("tokens_per_cpu_s"), col("tokens_per_s_median_step")
        out[runner] = {"tokens_per_s_best": max(tps), "tokens_per_s_median": statistics.median(tps),
                       "tokens_per_s_all": tps, "tokens_per_cpu_s_best": max(cps), "tokens_per_cpu_s_all": cps,
                       "tokens_per_s_median_step_best": max(robust), "tokens_per_s_median_step_all": robust,
                       "examples_per_s_best": max(col("examples_per_s")),
                       "step_ms_median": statistics.median(col("step_ms_median")),
                       "step_ms_min": min(col("step_ms_min")), "cpu_share_all": col("cpu_share"),
                       "padding_fraction": reps[0]["padding_fraction"],
                       "tokens_per_step": reps[0]["tokens"] / reps[0]["timed_steps"],
                       "examples_per_step": reps[0]["examples"] / reps[0]["timed_steps"],
                       "peak_rss_mb": statistics.median(col("peak_rss_mb")),
                       "rss_after_first_step_mb": statistics.median(col("rss_after_first_step_mb")),
                       "rss_max_at_step_ends_mb": statistics.median(r.get("rss_max_at_step_ends_mb", 0) for r in reps),
                       "mean_train_loss": statistics.median(col("mean_train_loss"))}
    return out


def ratios(summary: dict) -> list[dict]:
    """ours / theirs for each bar: tokens/s (best and median of the repeats) and tokens per CPU-second."""
    rows = []
    for (task, ours, theirs), bar in BARS.items():
        if ours in summary and theirs in summary:
            a, b = summary[ours], summary[theirs]
            best = a["tokens_per_s_best"] / b["tokens_per_s_best"]
            rows.append({"task": task, "ours": ours, "theirs": theirs, "ratio_best": best,
                         "ratio_median": a["tokens_per_s_median"] / b["tokens_per_s_median"],
                         "ratio_cpu": a["tokens_per_cpu_s_best"] / b["tokens_per_cpu_s_best"],
                         "ratio_median_step": (a["tokens_per_s_median_step_best"]
                                               / b["tokens_per_s_median_step_best"]),
                         "bar": bar, "meets_bar_wall": best >= bar,
                         "meets_bar_cpu": a["tokens_per_cpu_s_best"] / b["tokens_per_cpu_s_best"] >= bar})
    return rows


def print_table(summary: dict, rel: list[dict]) -> None:
    head = (f"{'runner':<21}{'tok/s best':>11}{'median':>8}{'tok/CPU-s':>10}{'ex/s':>8}{'step ms':>9}"
            f"{'tok/step':>9}{'ex/step':>8}{'pad %':>7}{'RSS@1 MB':>9}{'peak MB':>9}{'loss':>7}")
    print(head)
    print("-" * len(head))
    for runner, s in summary.items():
        print(f"{runner:<21}{s['tokens_per_s_best']:>11.0f}{s['tokens_per_s_median']:>8.0f}"
              f"{s['tokens_per_cpu_s_best']:>10.0f}{s['examples_per_s_best']:>8.1f}{s['step_ms_median']:>9.1f}"
              f"{s['tokens_per_step']:>9.0f}{s['examples_per_step']:>8.1f}{100 * s['padding_fraction']:>7.1f}"
              f"{s['rss_after_first_step_mb']:>9.0f}{s['peak_rss_mb']:>9.0f}{s['mean_train_loss']:>7.3f}")
    for r in rel:
        print(f"{r['ours']} / {r['theirs']}: {r['ratio_best']:.2f}x tokens/s (median {r['ratio_median']:.2f}x, "
              f"per CPU-s {r['ratio_cpu']:.2f}x); bar {r['bar']:.1f}x: "
              f"{'met' if r['meets_bar_wall'] else 'MISSED'} (wall, best), "
              f"{'met' if r['meets_bar_cpu'] else 'MISSED'} (CPU)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    plan = _runners(args)
    own_tmp = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="alignkit_bench_sft_rm_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        data = prepare_data(args, workdir, {t for t, _ in plan})
        results: dict[str, list[dict]] = {r: [] for _, r in plan}
        for rep in range(args.repeats):
            for task, runner in plan:
                res = run_one(args, task, runner, data, workdir, f"{runner}.{rep}")
                results[runner].append(res)
                print(f"[{rep + 1}/{args.repeats}] {runner:<21} {res['tokens_per_s']:>8.0f} tokens/s  "
                      f"{res['tokens_per_cpu_s']:>8.0f} tokens/CPU-s  (CPU share {res['cpu_share']:.2f})  "
                      f"peak {res['peak_rss_mb']:.0f} MB  "
                      f"({res['subprocess_wall_s']:.0f} s)", flush=True)
        summary = summarize(results)
        rel = ratios(summary)
        print()
        print_table(summary, rel)
        report = {"workload": {k: v for k, v in vars(args).items() if k not in ("out",)} | {"data": data},
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                              "python": platform.python_version()},
                  "summary": summary, "ratios": rel, "runs": results}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"\nresults: {args.out}")
        return report
    finally:
        if own_tmp:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
