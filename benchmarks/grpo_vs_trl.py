"""GRPO side by side: ``alignkit grpo`` vs TRL's ``GRPOTrainer`` on the same tiny model, prompts, G, lengths,
reward and wall-clock budget, on CPU, in one invocation. Results go in docs/benchmarks.md (issue 6).

    .venv/bin/python benchmarks/grpo_vs_trl.py                     # both sides, 120 s of training each
    .venv/bin/python benchmarks/grpo_vs_trl.py --quick             # smoke run: 20 s each
    .venv/bin/python benchmarks/grpo_vs_trl.py --budget 300 --out grpo.json
    .venv/bin/python benchmarks/grpo_vs_trl.py --budget 60 --repeats 2 --flops   # + each side's matmul floor

TRL runs in its own virtual environment (it must not change the pinned packages of .venv):

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 "trl==1.16.*" && .venv-trl/bin/pip install -e .

Workload, identical on both sides (each side is its own subprocess, so peak RSS, the child's ru_maxrss, is clean):

- model: the bundled tiny base (src/alignkit/assets/tiny-base, a transformers Llama), fp32, loaded from that
  directory by both; the policy plus a frozen reference copy (beta > 0).
- prompts: ``arithmetic_train_problems(--n-train, levels 1-3)``; TRL gets them as conversational prompts
  ``[{"role": "user", "content": question}]`` so the same chat template renders them as alignkit's
  ``render_prompt`` does; the "answer" column goes to the rewards.
- per optimizer step: 16 prompts x G=8 = 128 completions, max 40 new tokens, temperature 1.0, top-p 1, no top-k.
  alignkit: ``rollout.prompts_per_step=16 rollout.group_size=8 loss.micro_batch_size=64 loss.mu=1``.
  TRL: ``per_device_train_batch_size=64 gradient_accumulation_steps=2`` (so ``steps_per_generation=2`` and
  ``generation_batch_size=128``: one generation of 128 completions per optimizer step, trained in two
  micro-batches of 64), ``num_generations=8 num_iterations=1``.
- reward: ``alignkit.rewards.accuracy_reward`` + ``format_reward`` (weights 1, 1); TRL gets them as two reward
  functions over the completions' text and the "answer" column.
- loss: beta 0.04 (k3 KL), clip eps 0.2 (inactive with one update per batch), per-sequence token mean then
  mean over sequences (alignkit ``seq_mean_token_mean`` = TRL ``loss_type="grpo"``), group std with ddof 1 on
  both (alignkit ``loss.std_ddof=1`` = TRL ``scale_rewards="group"``).
- AdamW lr 3e-4 constant, no warmup, weight decay 0, max grad norm 1. TRL's bf16 and gradient checkpointing
  OFF, no evaluation (alignkit evaluates 1 held-out prompt before the loop and after it, outside the timed
  span), no checkpoints, logging every step on both.

Measured, per side, over one training run that stops at the first step ending past ``--budget`` seconds of
training (TRL: the budget clock starts when the first step starts, after model loading and data preparation;
alignkit: ``train.time_limit_s=--budget``, whose clock starts with the run, so its model loading and the
one-prompt evaluation before the loop -- ``setup_s`` in the results, about a second on the tiny model -- count
against alignkit's budget; step boundaries come from a ``callbacks`` entry of the recipe's Python API):

- s/step: median wall time of a step (step start to next step start: everything the loop does, logging
  included; the held-out evaluation after alignkit's last step left out), the first ``--warmup`` steps excluded.
- gen tok/s: real completion tokens (up to and including EOS) / time spent generating them (alignkit:
  ``time/generate``; TRL: the wall time of ``_generate_single_turn``), medians over the same steps; and
  ``step tok/s`` = completion tokens / whole step time.
- peak RSS: the child process' ru_maxrss (MiB).
- reward @ budget: mean ``accuracy + format`` of the 128 completions of each of the last ``--last`` steps.
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
LEVELS = [1, 2, 3]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def model_dir() -> Path:
    from alignkit.models.policy import BUNDLED

    return Path(BUNDLED["bundled"])


# ----------------------------------------------------------------------------------------------------------
# alignkit
# ----------------------------------------------------------------------------------------------------------
def child_alignkit(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import accelerate  # noqa: F401  (imported untimed, as TRL's side imports its libraries before the loop)
    import transformers  # noqa: F401

    import alignkit.rollout  # noqa: F401
    from alignkit.config import load_config
    from alignkit.recipes import grpo

    marks: list[float] = []  # perf_counter when the loop starts (row 0) and at the end of every step
    cpu: list[float] = []    # process_time at the same points

    def mark(step, row):  # a callback of the recipe's Python API: called for every logged row
        marks.append(time.perf_counter())
        cpu.append(time.process_time())

    work = Path(args.work)
    cfg = load_config(grpo.GRPOConfig, None, [
        f"model.path={model_dir()}", f"data.levels={json.dumps(LEVELS)}", f"data.n_train={args.n_train}",
        "data.n_eval=1", f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0",
        f"loss.beta={args.beta}", "loss.mu=1", "loss.micro_batch_size=64", "loss.std_ddof=1",
        f"optim.lr={args.lr}", "optim.warmup_steps=0", "optim.schedule=constant", "optim.weight_decay=0.0",
        "optim.max_grad_norm=1.0", f"train.steps={args.max_steps}", "train.eval_every=1000000", "train.seed=0",
        f"train.time_limit_s={args.budget}", "output.tensorboard=false", f"output.dir={work / 'runs'}",
        f"output.name=alignkit-{os.getpid()}",
    ])
    started = time.perf_counter()
    grpo.run(cfg, callbacks=[mark])
    rows = [json.loads(line) for line in (work / "runs" / cfg.output.name / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/generate" in r]
    n = len(marks) - 1
    steps = []
    for i, r in enumerate(rows[:n]):
        tokens = r["completion/length"] * args.prompts * args.group_size
        evaluation = r.get("time/eval", 0.0)  # the last step's held-out evaluation: outside the timed span
        steps.append({"step_s": marks[i + 1] - marks[i] - evaluation, "cpu_s": cpu[i + 1] - cpu[i] - evaluation,
                      "gen_s": r["time/generate"],
                      "tokens": tokens,
                      "completions": args.prompts * args.group_size,
                      "reward": r["reward/total"], **{k: v for k, v in r.items() if k.startswith("time/")}})
    return {"steps": steps, "train_s": marks[-1] - marks[0], "setup_s": marks[0] - started}


# ----------------------------------------------------------------------------------------------------------
# TRL
# ----------------------------------------------------------------------------------------------------------
def child_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.evaluation import arithmetic_train_problems
    from alignkit.rewards import accuracy_reward, format_reward

    work = Path(args.work)
    problems = arithmetic_train_problems(args.n_train, LEVELS)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p.question}], "answer": p.answer_text}
                                 for p in problems])
    gens: list[tuple[float, int]] = []     # (seconds, completion tokens) per generation call
    rewards: list[list[float]] = []        # per generation batch: accuracy + format of every completion

    def text(c):
        return c[0]["content"] if isinstance(c, list) else c

    def accuracy(completions, answer, **_):
        out = [float(accuracy_reward(text(c), answer=a)) for c, a in zip(completions, answer)]
        rewards.append(list(out))
        return out

    def fmt(completions, **_):
        out = [float(format_reward(text(c))) for c in completions]
        rewards[-1] = [a + f for a, f in zip(rewards[-1], out)]
        return out

    class Trainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **k):
            t = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **k)
            gens.append((time.perf_counter() - t, sum(len(c) for c in completion_ids), len(completion_ids)))
            return completion_ids, logprobs

    marks: list[float] = []
    cpu: list[float] = []

    class Budget(TrainerCallback):
        def on_step_begin(self, a, state, control, **k):
            if not marks:
                marks.append(time.perf_counter())
                cpu.append(time.process_time())

        def on_step_end(self, a, state, control, **k):
            marks.append(time.perf_counter())
            cpu.append(time.process_time())
            if marks[-1] - marks[0] >= args.budget:
                control.should_training_stop = True

    model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir())
    config = GRPOConfig(
        output_dir=str(work / "runs" / f"trl-{os.getpid()}"), max_steps=args.max_steps,
        per_device_train_batch_size=64, gradient_accumulation_steps=2, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=args.beta,
        num_iterations=1, epsilon=0.2, loss_type="grpo", scale_rewards="group", learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, save_strategy="no", eval_strategy="no",
        report_to="none", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        log_completions=False,
    )
    if config.generation_batch_size != args.prompts * args.group_size:
        raise RuntimeError(f"TRL generation_batch_size {config.generation_batch_size} != "
                           f"{args.prompts * args.group_size}")
    trainer = Trainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                      reward_funcs=[accuracy, fmt], callbacks=[Budget()])
    trainer.train()
    n = len(marks) - 1
    if len(gens) < n or len(rewards) < n:
        raise RuntimeError(f"{n} steps but {len(gens)} generations / {len(rewards)} reward batches")
    steps = [{"step_s": marks[i + 1] - marks[i], "cpu_s": cpu[i + 1] - cpu[i], "gen_s": gens[i][0], "tokens": gens[i][1], "completions": gens[i][2],
              "reward": sum(rewards[i]) / len(rewards[i])} for i in range(n)]
    if any(s["completions"] != args.prompts * args.group_size for s in steps):
        raise RuntimeError(f"TRL generated {[s['completions'] for s in steps]} completions per step")
    return {"steps": steps, "train_s": marks[-1] - marks[0], "generation_calls": len(gens),
            "reward_batches": len(rewards)}


# ----------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------
def run_child(side: str, args, flops: bool = False) -> dict:
    python = str(TRL_PYTHON) if side == "trl" else sys.executable
    cmd = [python, __file__, "--child", side, "--work", args.work, "--budget", str(args.budget),
           "--max-steps", str(args.max_steps), "--prompts", str(args.prompts), "--group-size", str(args.group_size),
           "--max-new-tokens", str(args.max_new_tokens), "--beta", str(args.beta), "--lr", str(args.lr),
           "--n-train", str(args.n_train), "--threads", str(args.threads)] + (["--flops"] if flops else [])
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(Path(args.work) / "hf-cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    return out


def summarize(r: dict, args) -> dict:
    steps = r["steps"]
    timed = steps[args.warmup:] or steps
    return {
        "steps": len(steps), "timed_steps": len(timed), "train_s": r["train_s"], "process_s": r["process_s"],
        "s_per_step": statistics.median(s["step_s"] for s in timed),
        "cpu_s_per_step": statistics.median(s["cpu_s"] for s in timed),
        "gen_s_per_step": statistics.median(s["gen_s"] for s in timed),
        "gen_tok_per_s": statistics.median(s["tokens"] / s["gen_s"] for s in timed),
        "step_tok_per_s": statistics.median(s["tokens"] / s["step_s"] for s in timed),
        "tokens_per_step": statistics.mean(s["tokens"] for s in timed),
        "peak_rss_mib": r["peak_rss_mib"], "generation_calls": r.get("generation_calls"),
        "phases_median_s": {k: statistics.median(s.get(k, 0.0) for s in timed)
                            for k in sorted({k for s in timed for k in s if k.startswith("time/")})},
        "reward_first": statistics.mean(s["reward"] for s in steps[:args.last]),
        "reward_last": statistics.mean(s["reward"] for s in steps[-args.last:]),
        "per_step": [{k: round(v, 4) for k, v in s.items()} for s in steps],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds of training per side; each stops at the first step that ends past it (default 120)")
    ap.add_argument("--max-steps", type=int, default=10000, help="step cap per side (the budget normally ends first)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the per-step medians (default 2)")
    ap.add_argument("--last", type=int, default=5, help="reward @ budget = mean reward of the last N steps (default 5)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step (default 16)")
    ap.add_argument("--group-size", type=int, default=8, help="G, completions per prompt (default 8)")
    ap.add_argument("--max-new-tokens", type=int, default=40, help="longest completion (default 40)")
    ap.add_argument("--beta", type=float, default=0.04, help="KL coefficient (default 0.04)")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate, constant (default 3e-4)")
    ap.add_argument("--n-train", type=int, default=4000, help="arithmetic training prompts, levels 1-3 (default 4000)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of each side (default 1)")
    ap.add_argument("--sides", default="trl,alignkit", help="comma-separated, run in this order (default trl,alignkit)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per side, the order alternating (ABBA...); medians over runs reported (default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --budget 20, --repeats 1 (other settings unchanged)")
    ap.add_argument("--out", type=Path, help="also write the results (with every step's numbers) as JSON here")
    ap.add_argument("--flops", action="store_true",
                    help="after the timed runs, one more run per side, as many steps as its timed runs, counting its "
                         "matmul FLOPs: each side's arithmetic floor on this CPU and the largest speedup it allows "
                         "(benchmarks/_flops.py); that run's times are not used")
    ap.add_argument("--child", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prompts * args.group_size != 128:
        sys.exit("TRL's side is set up as 2 micro-batches of 64: --prompts x --group-size must be 128")

    if args.child:
        child = child_trl if args.child == "trl" else child_alignkit
        if args.flops:
            from _flops import counted_run

            result = counted_run(child, args, lambda r: len(r["steps"]))
        else:
            result = child(args)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return
    if args.quick:
        args.budget, args.repeats = 20.0, 1
    if not TRL_PYTHON.exists():
        sys.exit(f"TRL's environment is missing: {TRL_PYTHON} (see this file's docstring)")
    import torch

    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as work:
        args.work = work
        trl_version = subprocess.run([str(TRL_PYTHON), "-c", "import trl; print(trl.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
        load = os.getloadavg()
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, torch {torch.__version__}, {args.threads} thread(s) per "
              f"side; TRL {trl_version}")
        print(f"workload: bundled tiny base, {args.prompts} prompts x G={args.group_size} = "
              f"{args.prompts * args.group_size} completions/step, max {args.max_new_tokens} new tokens, T=1, "
              f"beta {args.beta}, lr {args.lr}, mu 1; {args.budget:.0f} s of training per side", flush=True)
        sides = args.sides.split(",")
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for rep in range(args.repeats):
            for side in (sides if rep % 2 == 0 else sides[::-1]):  # alternate the order: ABBA...
                r = summarize(run_child(side, args), args)
                r["load_after_run"] = os.getloadavg()[0]
                runs[side].append(r)
                print(f"  run {rep + 1} {side}: {r['steps']} steps in {r['train_s']:.1f} s, {r['s_per_step']:.3f} s/step, "
                      f"{r['cpu_s_per_step']:.3f} CPU-s/step, reward @budget {r['reward_last']:.3f}", flush=True)
        load_after = os.getloadavg()
        counted = {}
        for side in sides if args.flops else []:  # as many steps as the side's timed runs (median), no budget
            steps = int(statistics.median(r["steps"] for r in runs[side]))
            counted[side] = run_child(side, argparse.Namespace(**{**vars(args), "budget": 1e9, "max_steps": steps}),
                                      flops=True)
    cols = ("s_per_step", "cpu_s_per_step", "gen_s_per_step", "gen_tok_per_s", "step_tok_per_s", "tokens_per_step",
            "peak_rss_mib", "reward_first", "reward_last", "steps")
    results = {side: {c: statistics.median(r[c] for r in rs) for c in cols} for side, rs in runs.items()}
    for side, rs in runs.items():
        results[side]["phases_median_s"] = ({k: statistics.median(r["phases_median_s"][k] for r in rs)
                                             for k in rs[0]["phases_median_s"]} if rs[0]["phases_median_s"] else {})
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
          f"medians over {args.repeats} run(s) per side")
    print(f"{'':10} {'steps':>6} {'s/step':>8} {'CPU-s/step':>11} {'gen s/step':>11} {'gen tok/s':>10} {'step tok/s':>11} "
          f"{'tok/step':>9} {'peak RSS MiB':>13} {'reward first' + str(args.last):>14} {'reward @budget':>15}")
    for side, r in results.items():
        print(f"{side:10} {r['steps']:6.0f} {r['s_per_step']:8.3f} {r['cpu_s_per_step']:11.3f} {r['gen_s_per_step']:11.3f} "
              f"{r['gen_tok_per_s']:10.0f} {r['step_tok_per_s']:11.0f} {r['tokens_per_step']:9.0f} "
              f"{r['peak_rss_mib']:13.0f} {r['reward_first']:14.3f} {r['reward_last']:15.3f}")
    ratios = {}
    if "trl" in results and "alignkit" in results:
        a, t = results["alignkit"], results["trl"]
        ratios = {"s_per_step": t["s_per_step"] / a["s_per_step"], "cpu_s_per_step": t["cpu_s_per_step"] / a["cpu_s_per_step"],
                  "gen_tok_per_s": a["gen_tok_per_s"] / t["gen_tok_per_s"],
                  "step_tok_per_s": a["step_tok_per_s"] / t["step_tok_per_s"],
                  "peak_rss": a["peak_rss_mib"] / t["peak_rss_mib"]}
        print(f"\nalignkit vs TRL: {ratios['s_per_step']:.2f}x faster per step (wall; bar 3x -> "
              f"{'MET' if ratios['s_per_step'] >= 3 else 'NOT met'}), {ratios['cpu_s_per_step']:.2f}x per step in CPU "
              f"time, {ratios['gen_tok_per_s']:.2f}x generation tok/s, {ratios['step_tok_per_s']:.2f}x step tok/s, "
              f"{ratios['peak_rss']:.2f}x peak RSS")
    for side, r in results.items():
        if r.get("phases_median_s"):
            print(f"{side} phases (median s/step): " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in r["phases_median_s"].items()))
    floor = {}
    if counted:
        from _flops import floor_report

        floor = floor_report("step", counted, {s: r["s_per_step"] for s, r in results.items()}, args.threads)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"},
                                        "load_before": load, "load_after": load_after, "results": results,
                                        "ratios": ratios, "runs": runs, "floor": floor}, indent=1, default=str))


if __name__ == "__main__":
    main()
