"""GRPO at real size (issue 18): ``alignkit grpo`` vs TRL's ``GRPOTrainer`` (HF generate) on SmolLM2-135M-Instruct,
same prompts, G, lengths and reward, on CPU, in one invocation; seconds per step, the matmul floor, peak RSS.

    .venv/bin/python benchmarks/real_grpo_vs_trl.py --shape 4x4 --beta 0            # 1 warm-up + 3 timed steps/side
    .venv/bin/python benchmarks/real_grpo_vs_trl.py --shape 8x8 --beta 0.04 --out grpo_8x8_b004.json
    .venv/bin/python benchmarks/real_grpo_vs_trl.py --sides alignkit,alignkit_lora   # LoRA vs full fine-tuning
    .venv/bin/python benchmarks/real_grpo_vs_trl.py --quick                          # smoke: 2x2, 8 tokens, 1+1 steps
    .venv/bin/python benchmarks/real_grpo_vs_trl.py --watch                          # + one untimed run per side:
                                                                                     #   largest [*, 49152] tensor

TRL runs in its own virtual environment (see benchmarks/_real.py: TRL_VENV_HINT); without it the TRL side is
skipped with a message and alignkit's sides still run.

Workload, identical on every side (each side its own subprocess, so peak RSS, the child's ru_maxrss, is its own;
sides alternate ABBA over ``--repeats``):

- model: SmolLM2-135M-Instruct (scripts/build_real_model.py), fp32, ``--threads`` (default 2) torch threads,
  no gradient checkpointing; the policy plus a frozen reference copy when beta > 0 (alignkit LoRA: the base model
  with adapters off).
- prompts: ``_real.word_problems(--n-prompts)``: chat messages "What is 47 plus 18? Answer with the number."
  (half minus), rendered by the model's own chat template on both sides.
- per optimizer step: B prompts x G completions (``--shape BxG``: 4x4 or 8x8), at most ``--max-new-tokens``
  (64) new tokens, EOS allowed, temperature 1, top-p 1, no top-k; one update per batch (mu 1 / num_iterations 1),
  all B x G rows in one micro-batch on both sides.
- reward: ``_real.last_integer_reward`` (1 when the completion's last integer equals the answer).
- loss: ``--beta`` (0 or 0.04, k3 KL), clip eps 0.2 (inactive with mu 1), per-sequence token mean then mean over
  sequences (alignkit ``seq_mean_token_mean`` = TRL ``loss_type="grpo"``), group std with ddof 1 on both.
- AdamW lr ``--lr`` (1e-6) constant, no warmup, weight decay 0, max grad norm 1; no evaluation, no checkpoints.

Measured per side: s/step = median wall time of the steps after ``--warmup`` (step start to next step start,
everything the loop does); completion tokens per step; peak RSS. Floor (``_real.floor_flops``): 2N per sampled
token and per prompt token prefilled (each distinct prompt once), 6N per trained token (distinct prompt tokens +
completion tokens), + 2N per token for the reference forward when beta > 0, at this CPU's matmul rate on the
model's shapes; share = floor / measured.
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
    REWARD_SPEC,
    TRL_PYTHON,
    TRL_VENV_HINT,
    floor_flops,
    floor_seconds,
    grpo_floor_tokens,
    last_integer_reward,
    matmul_rate,
    peak_rss_mib,
    resolve_model_dir,
    watch,
    word_problems,
    write_jsonl,
)

SIDES = ("trl", "alignkit", "alignkit_lora")


def parse_shape(text: str) -> tuple[int, int]:
    """'4x4' -> (4, 4): prompts per step, G."""
    b, _, g = text.lower().partition("x")
    if not (b.isdigit() and g.isdigit()) or int(b) < 1 or int(g) < 2:
        raise argparse.ArgumentTypeError(f"--shape must look like BxG with B >= 1, G >= 2, got {text!r}")
    return int(b), int(g)


def _model_dir(args) -> Path:
    return resolve_model_dir(args.model_dir)


# ----------------------------------------------------------------------------------------------------------
# alignkit
# ----------------------------------------------------------------------------------------------------------
def step_marks(recipe) -> tuple[list[float], list[dict] | None]:
    """Step boundaries of an alignkit recipe run: (marks, rows). Where ``recipe.run`` takes ``callbacks`` (the
    shared lifecycle, alignkit.infra.run), the caller passes one that appends the time and the row: it is called
    for row 0 right before the loop and after every step, so marks[i + 1] - marks[i] is step i. Otherwise
    (older recipes) the progress bar the recipe iterates is replaced by one that marks every ``__next__``;
    rows is then None (read metrics.jsonl)."""
    import inspect

    marks: list[float] = []
    if "callbacks" in inspect.signature(recipe.run).parameters:
        return marks, []

    class StepMarks:
        def __init__(self, iterable, **_):
            self.it = iter(iterable)

        def __iter__(self):
            return self

        def __next__(self):
            marks.append(time.perf_counter())
            return next(self.it)

        def set_postfix(self, *a, **k):
            pass

    recipe.progress = StepMarks
    return marks, None


def child_alignkit(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import accelerate  # noqa: F401  (imported untimed, as TRL's side imports its libraries before the loop)
    import transformers

    import alignkit.rollout  # noqa: F401
    from alignkit.config import load_config
    from alignkit.recipes import grpo

    b, g = args.shape
    marks, rows = step_marks(grpo)
    work = Path(args.work)
    lora = args.child == "alignkit_lora"
    cfg = load_config(grpo.GRPOConfig, None, [
        f"model.path={_model_dir(args)}", "model.dtype=float32", "model.gradient_checkpointing=false",
        f"model.lora.enabled={str(lora).lower()}",
        f"data.train_file={work / 'prompts.jsonl'}", "data.max_prompt_length=256",
        f"rollout.prompts_per_step={b}", f"rollout.group_size={g}", f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0", f"reward.weights={json.dumps({REWARD_SPEC: 1.0})}",
        f"reward.success_key={REWARD_SPEC}",
        f"loss.beta={args.beta}", "loss.mu=1", f"loss.micro_batch_size={args.micro_batch or b * g}", "loss.std_ddof=1",
        f"optim.lr={args.lr}", "optim.warmup_steps=0", "optim.schedule=constant", "optim.weight_decay=0.0",
        "optim.max_grad_norm=1.0", f"train.steps={args.warmup + args.steps}", "train.eval_every=1000000",
        "train.seed=0", "output.tensorboard=false", f"output.dir={work / 'runs'}",
        f"output.name={args.child}-{os.getpid()}",
    ])
    counted: dict = {}
    kwargs = {"callbacks": [lambda step, row: (marks.append(time.perf_counter()), rows.append(row))]} \
        if rows is not None else {}
    if args.watch:
        vocab = transformers.AutoConfig.from_pretrained(_model_dir(args)).vocab_size
        with watch(vocab, counted):
            grpo.run(cfg, **kwargs)
    else:
        grpo.run(cfg, **kwargs)
    if rows is None:  # the progress-bar form: the rows from metrics.jsonl
        rows = [json.loads(line) for line in (work / "runs" / cfg.output.name / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/generate" in r]
    steps = [{"step_s": marks[i + 1] - marks[i], "gen_s": r["time/generate"],
              "tokens": r["completion/length"] * b * g, "reward": r.get("reward/total", 0.0),
              **{k: v for k, v in r.items() if k.startswith("time/")}} for i, r in enumerate(rows[:len(marks) - 1])]
    return {"steps": steps, **counted}


# ----------------------------------------------------------------------------------------------------------
# TRL
# ----------------------------------------------------------------------------------------------------------
def child_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    b, g = args.shape
    work = Path(args.work)
    rows = [json.loads(line) for line in (work / "prompts.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    gens: list[tuple[float, int]] = []
    rewards: list[float] = []

    def last_integer(completions, answer, **_):
        out = [last_integer_reward(c, answer=a) for c, a in zip(completions, answer)]
        rewards.append(sum(out) / len(out))
        return out

    class Trainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **k):
            t = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *a, **k)
            gens.append((time.perf_counter() - t, sum(len(c) for c in out[0])))
            return out

    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_begin(self, a, state, control, **k):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, a, state, control, **k):
            marks.append(time.perf_counter())

    model = AutoModelForCausalLM.from_pretrained(_model_dir(args), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(_model_dir(args))
    config = GRPOConfig(
        output_dir=str(work / "runs" / f"trl-{os.getpid()}"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=b * g, gradient_accumulation_steps=1, num_generations=g,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=args.beta,
        num_iterations=1, epsilon=0.2, loss_type="grpo", scale_rewards="group", learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, save_strategy="no", eval_strategy="no",
        report_to="none", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        log_completions=False,
    )
    if config.generation_batch_size != b * g:
        raise RuntimeError(f"TRL generation_batch_size {config.generation_batch_size} != {b * g}")
    trainer = Trainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                      reward_funcs=[last_integer], callbacks=[Marks()])
    counted: dict = {}
    if args.watch:
        with watch(model.config.vocab_size, counted):
            trainer.train()
    else:
        trainer.train()
    n = len(marks) - 1
    if len(gens) < n:
        raise RuntimeError(f"{n} steps but {len(gens)} generations")
    steps = [{"step_s": marks[i + 1] - marks[i], "gen_s": gens[i][0], "tokens": gens[i][1], "reward": rewards[i]}
             for i in range(n)]
    return {"steps": steps, **counted}


# ----------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------
def run_child(side: str, args, watch_run: bool = False) -> dict:
    python = str(TRL_PYTHON) if side == "trl" else sys.executable
    cmd = [python, __file__, "--child", side, "--work", args.work, "--shape", f"{args.shape[0]}x{args.shape[1]}",
           "--beta", str(args.beta), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--threads", str(args.threads)]
    cmd += ["--micro-batch", str(args.micro_batch)] if args.micro_batch else []
    cmd += (["--model-dir", args.model_dir] if args.model_dir else []) + (["--watch"] if watch_run else [])
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           "HF_DATASETS_CACHE": str(Path(args.work) / "hf-cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    return out


def summarize(r: dict, warmup: int) -> dict:
    steps = r["steps"]
    timed = steps[warmup:] or steps
    return {"steps": len(steps), "timed_steps": len(timed),
            "s_per_step": statistics.median(s["step_s"] for s in timed),
            "gen_s_per_step": statistics.median(s["gen_s"] for s in timed),
            "tokens_per_step": statistics.median(s["tokens"] for s in timed),
            "gen_tok_per_s": statistics.median(s["tokens"] / s["gen_s"] for s in timed),
            "reward": statistics.mean(s["reward"] for s in steps),
            "peak_rss_mib": r["peak_rss_mib"], "process_s": r["process_s"],
            "phases_median_s": {k: statistics.median(s.get(k, 0.0) for s in timed)
                                for k in sorted({k for s in timed for k in s if k.startswith("time/")})},
            "per_step": [{k: round(v, 4) for k, v in s.items()} for s in steps]}


def prompt_lengths(model_dir: Path, rows: list[dict]) -> list[int]:
    from alignkit.data.chat import render_prompt
    from alignkit.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    return [len(render_prompt(tok, r["prompt"])) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=parse_shape, default=(4, 4), help="BxG: prompts per step x G (4x4 or 8x8)")
    ap.add_argument("--beta", type=float, default=0.0, help="KL coefficient: 0 (no reference) or 0.04 (default 0)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side, after --warmup (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps per side (default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="longest completion (default 64)")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate, constant (default 1e-6)")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads per side (default 2)")
    ap.add_argument("--micro-batch", type=int, help="alignkit sides only: rows per forward/backward "
                    "(loss.micro_batch_size; changes no number, lowers activation memory). Default: all B x G rows, as "
                    "TRL's side runs; a smaller value is NOT the equal-settings comparison")
    ap.add_argument("--n-prompts", type=int, default=256, help="prompts in the dataset (default 256)")
    ap.add_argument("--sides", default="trl,alignkit", help=f"comma-separated of {SIDES}, run in this order "
                    "(default trl,alignkit; alignkit_lora = alignkit with model.lora.enabled=true)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per side, order alternating ABBA (default 1)")
    ap.add_argument("--model-dir", help="'real' (default: the real-model cache), 'tiny' (the bundled tiny base: "
                    "checks the script in seconds, no issue-18 figure) or a model directory")
    ap.add_argument("--watch", action="store_true", help="after the timed runs, one untimed run per side under a "
                    "dispatch watch: the largest [*, vocab] tensor created (a full-vocabulary logits tensor for "
                    "the loss shows here) and the counted matmul FLOPs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --shape 2x2 --max-new-tokens 8 --warmup 1 --steps 1 --repeats 1 --n-prompts 16, and "
                    "--model-dir tiny unless given")
    ap.add_argument("--out", type=Path, help="also write the results (every step) as JSON here")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = (child_trl if args.child == "trl" else child_alignkit)(args)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return
    if args.quick:
        args.shape, args.max_new_tokens, args.warmup, args.steps, args.repeats, args.n_prompts = (2, 2), 8, 1, 1, 1, 16
        args.model_dir = args.model_dir or "tiny"
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if set(sides) - set(SIDES):
        sys.exit(f"unknown side(s) {sorted(set(sides) - set(SIDES))}; choose from {SIDES}")
    if "trl" in sides and not TRL_PYTHON.exists():
        print(f"TRL side SKIPPED: {TRL_PYTHON} is missing; create it with: {TRL_VENV_HINT}", flush=True)
        sides.remove("trl")
    if not sides:
        sys.exit("no side left to run")
    import torch

    model_dir = _model_dir(args)
    config = json.loads((model_dir / "config.json").read_text())
    b, g = args.shape
    with tempfile.TemporaryDirectory(prefix="real-grpo-bench-") as work:
        args.work = work
        rows = word_problems(args.n_prompts, seed=0)
        write_jsonl(rows, Path(work) / "prompts.jsonl")
        mean_prompt = statistics.mean(prompt_lengths(model_dir, rows))
        trl_version = (subprocess.run([str(TRL_PYTHON), "-c", "import trl; print(trl.__version__)"],
                                      capture_output=True, text=True).stdout.strip() if "trl" in sides else "-")
        load = os.getloadavg()
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, torch {torch.__version__}, {args.threads} thread(s) per "
              f"side; TRL {trl_version}")
        print(f"workload: {model_dir.name}{' (NOT the issue-18 model: a plumbing check)' if args.model_dir not in (None, 'real') else ''}, fp32, {b} prompts x G={g} = {b * g} completions/step, max "
              f"{args.max_new_tokens} new tokens (EOS allowed), T=1, beta {args.beta}, lr {args.lr}, mu 1; "
              f"{args.warmup} warm-up + {args.steps} timed steps per side; mean prompt {mean_prompt:.1f} tokens",
              flush=True)
        if args.micro_batch:
            print(f"NOT equal settings: alignkit forwards {args.micro_batch} rows at a time, TRL all {b * g}", flush=True)
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for rep in range(args.repeats):
            for side in (sides if rep % 2 == 0 else sides[::-1]):
                r = summarize(run_child(side, args), args.warmup)
                runs[side].append(r)
                print(f"  run {rep + 1} {side}: {r['s_per_step']:.2f} s/step, {r['tokens_per_step']:.0f} completion "
                      f"tokens/step, peak RSS {r['peak_rss_mib']:.0f} MiB ({r['process_s']:.0f} s process)", flush=True)
        load_after = os.getloadavg()
        watched = {side: run_child(side, args, watch_run=True) for side in (sides if args.watch else [])}
    cols = ("s_per_step", "gen_s_per_step", "tokens_per_step", "gen_tok_per_s", "peak_rss_mib", "reward")
    results = {s: {c: statistics.median(r[c] for r in rs) for c in cols} for s, rs in runs.items()}
    for s, rs in runs.items():
        results[s]["phases_median_s"] = {k: statistics.median(r["phases_median_s"].get(k, 0.0) for r in rs)
                                         for k in rs[0]["phases_median_s"]}
    rate = matmul_rate(config, args.threads)
    import transformers

    with torch.device("meta"):
        n = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(model_dir)).parameters())  # parameters() dedups the tied head
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; medians over "
          f"{args.repeats} run(s); matmul rate {rate:.1f} GFLOP/s ({args.threads} threads, model shapes); "
          f"N = {n / 1e6:.1f}M parameters")
    print(f"{'':14} {'s/step':>8} {'gen s/step':>11} {'compl tok/step':>15} {'gen tok/s':>10} {'peak RSS MiB':>13} "
          f"{'reward':>7} {'floor s':>8} {'floor share':>12}")
    for s, r in results.items():
        tokens = grpo_floor_tokens([round(mean_prompt)] * b, g, r["tokens_per_step"], beta=args.beta)
        r["floor_s"] = floor_seconds(floor_flops(n, trained_tokens=tokens["trained"],
                                                 forward_tokens=tokens["forward"]), rate)
        r["floor_share"] = r["floor_s"] / r["s_per_step"]
        print(f"{s:14} {r['s_per_step']:8.2f} {r['gen_s_per_step']:11.2f} {r['tokens_per_step']:15.0f} "
              f"{r['gen_tok_per_s']:10.1f} {r['peak_rss_mib']:13.0f} {r['reward']:7.3f} {r['floor_s']:8.2f} "
              f"{r['floor_share']:12.1%}")
    for s, r in results.items():
        if r["phases_median_s"]:
            print(f"{s} phases (median s/step): " + ", ".join(f"{k[5:]} {v:.2f}" for k, v in r["phases_median_s"].items()))
    ratios = {}
    if "trl" in results and "alignkit" in results:
        a, t = results["alignkit"], results["trl"]
        ratios = {"s_per_step": t["s_per_step"] / a["s_per_step"], "gen_tok_per_s": a["gen_tok_per_s"] / t["gen_tok_per_s"],
                  "peak_rss": a["peak_rss_mib"] / t["peak_rss_mib"]}
        print(f"\nalignkit vs TRL: {ratios['s_per_step']:.2f}x faster per step (bar 3x: "
              f"{'MET' if ratios['s_per_step'] >= 3 else 'NOT met'}), {ratios['gen_tok_per_s']:.2f}x generation "
              f"tok/s, peak RSS {ratios['peak_rss']:.2f}x TRL's (bar <= 0.6: "
              f"{'MET' if ratios['peak_rss'] <= 0.6 else 'NOT met'})")
    if "alignkit_lora" in results and "alignkit" in results:
        ratios["lora_vs_full"] = results["alignkit_lora"]["s_per_step"] / results["alignkit"]["s_per_step"]
        print(f"alignkit LoRA / full fine-tuning s/step: {ratios['lora_vs_full']:.2f} (bar <= 1: "
              f"{'MET' if ratios['lora_vs_full'] <= 1 else 'NOT met'})")
    for s, w in watched.items():
        rows_per_mb = b * g * args.max_new_tokens
        print(f"watch {s}: largest [*, {config['vocab_size']}] tensor {w['max_vocab_rows']} rows "
              f"({w['max_vocab_mib']:.0f} MiB, {w['max_vocab_op']}); the micro-batch holds up to {rows_per_mb} "
              f"completion tokens ({w['steps'][-1]['tokens']:.0f} in the last step); counted matmul "
              f"{w['matmul_flops'] / 1e9 / len(w['steps']):.1f} GFLOP/step")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"},
                                        "load_before": load, "load_after": load_after, "rate_gflops": rate,
                                        "n_params": n, "mean_prompt_tokens": mean_prompt, "results": results,
                                        "ratios": ratios, "runs": runs,
                                        "watch": {s: {k: v for k, v in w.items() if k != "steps"}
                                                  for s, w in watched.items()}}, indent=1, default=str))


if __name__ == "__main__":
    main()
