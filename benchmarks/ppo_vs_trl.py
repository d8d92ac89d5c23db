"""PPO side by side: ``alignkit ppo`` vs TRL's last PPO trainer (``trl.experimental.ppo.PPOTrainer``, shipped up
to TRL 1.12) on the same tiny models, prompts, lengths and epochs, on CPU. Results go in docs/benchmarks.md
(PPO section).

    .venv/bin/python benchmarks/ppo_vs_trl.py                          # 3 alternating runs per side
    .venv/bin/python benchmarks/ppo_vs_trl.py --iterations 4 --repeats 1   # quicker
    .venv/bin/python benchmarks/ppo_vs_trl.py --quick --sides alignkit     # smoke run of alignkit alone (no TRL env)
    .venv/bin/python benchmarks/ppo_vs_trl.py --flops                      # + each side's matmul floor

TRL removed its PPO trainer after 1.12, so TRL runs in its own virtual environment (it must not change the
pinned packages of .venv; torch pinned on the same line so pip keeps the CPU build):

    python3 -m venv .venv-trl112 && .venv-trl112/bin/pip install torch==2.13.0 "trl==1.12.*"

Workload (both sides load it from the same temporary directory):

- policy and reference: the bundled tiny base model (Llama, hidden 96, 3 layers, 0.47 M parameters);
- reward model: ``AutoModelForSequenceClassification`` (1 label) with the base model's trunk and a seeded score
  head (``alignkit.models.reward.build_reward_model``); TRL needs a reward *model*, so both sides score with it;
- value model: the same weights (TRL: ``AutoModelForSequenceClassification``; alignkit: ``critic.path`` = that
  directory, trunk + the score weights as the value head);
- prompts: ``iterations x batch`` synthetic arithmetic questions, chat-rendered identically (the tokenizer's
  template), left-padded for TRL;
- per iteration: ``batch`` prompts, 1 completion each, at most ``--response-length`` new tokens, temperature 1,
  stopping at EOS (TRL ``stop_token="eos"``); then ``num_ppo_epochs = 4`` epochs of ``--minibatches``
  shuffled minibatches, one optimizer step each (TRL: ``per_device_train_batch_size = batch``,
  ``gradient_accumulation_steps = 1``); fixed KL coefficient 0.02 with the k1 estimator in the reward;
  gamma 1, lambda 0.95; value clipping 0.2 and vf_coef 0.5 on both sides; lr 3e-5, no warmup, constant;
  fp32, no gradient checkpointing (TRL's defaults bf16 and gradient checkpointing are switched off), no
  evaluation, no sample generations, no checkpoints.
- Differences that remain, each making alignkit do MORE work: alignkit adds the entropy bonus (c2 = 0.01, so
  its update differentiates the entropy too; TRL only logs it) and recomputes the old logprobs with a forward
  pass (TRL takes them from the generation scores); alignkit clips policy and critic gradients separately.

Timing: ``s/iteration`` = the training loop's wall time / iterations (TRL: ``trainer.train()``; alignkit:
``run``'s ``wall_s``), model loading and library imports left out on both sides; ``CPU s/iteration`` the same
span in process CPU time (less sensitive to other load on a shared machine). Peak memory: the child process's
own peak RSS (``ru_maxrss``), each side in its own subprocess. Sides alternate, ``--repeats`` times; medians.
alignkit's phases (the recipe's ``time/*`` metrics: generate, score, logprobs, advantages, update) are printed
as medians per iteration over all its runs.
Mean response length is reported per side (both sample from the same model at the same temperature, so the
generation work is the same in distribution, not token for token).
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
TRL_PYTHON = ROOT / ".venv-trl112" / "bin" / "python"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_workload(work: Path, n_prompts: int) -> None:
    import shutil

    from alignkit.config import ModelSection
    from alignkit.data import write_jsonl
    from alignkit.evaluation import arithmetic_train_problems
    from alignkit.models import BUNDLED_DIR
    from alignkit.models.reward import build_reward_model

    shutil.copytree(BUNDLED_DIR, work / "policy")
    rm, tok = build_reward_model(ModelSection(path="bundled"), seed=0)
    rm.save_pretrained(work / "rm")
    tok.save_pretrained(work / "rm")
    problems = arithmetic_train_problems(n_prompts)
    write_jsonl([{"prompt": p.question, "answer": p.answer_text} for p in problems], work / "prompts.jsonl")


def child_alignkit(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import accelerate  # noqa: F401  (imported untimed, as TRL's side imports its own before timing)
    import transformers  # noqa: F401

    import alignkit.logprobs  # noqa: F401
    import alignkit.models.reward_fn  # noqa: F401
    import alignkit.models.value  # noqa: F401
    import alignkit.rollout  # noqa: F401
    from alignkit.config import load_config
    from alignkit.recipes import ppo

    work = Path(args.work)
    cfg = load_config(ppo.PPOConfig, None, [
        f"model.path={work / 'policy'}", f"critic.path={work / 'rm'}", f"reward.model={work / 'rm'}",
        "reward.weights={}", f"data.train_file={work / 'prompts.jsonl'}", "data.eval_file=null",
        f"rollout.prompts_per_step={args.batch}", f"rollout.max_new_tokens={args.response_length}",
        "rollout.temperature=1.0", "kl.beta=0.02", "kl.controller=fixed", "kl.estimator=k1",
        "loss.epochs=4", f"loss.minibatch_size={args.batch // args.minibatches}", f"loss.micro_batch_size={args.batch}",
        "loss.gamma=1.0", "loss.lam=0.95", "loss.value_clip=0.2", "loss.vf_coef=0.5", "loss.ent_coef=0.01",
        "loss.kl_stop=null",  # TRL runs every epoch: equal work
        "optim.lr=3e-5", "critic.lr=3e-5", "optim.warmup_steps=0", "optim.schedule=constant",
        f"train.steps={args.iterations}", f"train.eval_every={10**6}", "output.tensorboard=false",
        f"output.dir={work / 'runs'}", f"output.name=alignkit-{os.getpid()}",
    ])
    span = {}

    class TimedLoop(ppo.GracefulStop):  # the recipe's loop runs inside this context: its CPU time, exactly
        def __enter__(self):
            span["cpu0"] = time.process_time()
            return super().__enter__()

        def __exit__(self, *exc):
            span["cpu"] = time.process_time() - span["cpu0"]
            return super().__exit__(*exc)

    ppo.GracefulStop = TimedLoop
    summary = ppo.run(cfg)
    cpu = span["cpu"]
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()][1:]
    return {"loop_s": summary["wall_s"], "cpu_s": cpu, "iterations": len(rows),
            "response_length": statistics.mean(r["completion/length"] for r in rows),
            "reward": [round(r["reward/total"], 3) for r in rows],
            "phases": {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith("time/")}}


def child_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer

    work = Path(args.work)
    tok = AutoTokenizer.from_pretrained(work / "policy", padding_side="left")
    records = [json.loads(x) for x in (work / "prompts.jsonl").read_text().splitlines()]
    ids = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False) for r in records]
    dataset = Dataset.from_dict({"input_ids": ids})
    policy = AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(work / "rm", num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(work / "rm", num_labels=1, dtype=torch.float32)
    history, gen_lengths = [], []

    class Logs(TrainerCallback):
        def on_log(self, args_, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                history.append(logs)

    generation = ppo_trainer.batch_generation

    def measured_generation(model, queries, *a, **kw):  # records the response lengths (EOS included)
        query_responses, logits = generation(model, queries, *a, **kw)
        eos = query_responses[:, queries.shape[1]:] == tok.eos_token_id
        n = torch.where(eos.any(1), eos.int().argmax(1) + 1, eos.shape[1])
        gen_lengths.append(n.float().mean().item())
        return query_responses, logits

    ppo_trainer.batch_generation = measured_generation

    config = PPOConfig(
        output_dir=str(work / "runs" / f"trl-{os.getpid()}"), total_episodes=args.iterations * args.batch,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, num_mini_batches=args.minibatches,
        local_rollout_forward_batch_size=args.batch, num_ppo_epochs=4, response_length=args.response_length,
        temperature=1.0, stop_token="eos", kl_coef=0.02, kl_estimator="k1", gamma=1.0, lam=0.95,
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.5, learning_rate=3e-5, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=True, save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        num_sample_generations=0, dataloader_num_workers=0, seed=0,
    )
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, eval_dataset=dataset.select(range(2)),
                         callbacks=[Logs()])
    cpu0, t0 = time.process_time(), time.perf_counter()
    trainer.train()
    loop, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"loop_s": loop, "cpu_s": cpu, "iterations": trainer.state.global_step,
            "response_length": statistics.mean(gen_lengths), "reward": [round(float(x["objective/scores"]), 3) for x in history]}


def run_child(side: str, args, flops: bool = False) -> dict:
    python = str(TRL_PYTHON) if side == "trl" else sys.executable
    cmd = [python, __file__, "--child", side, "--work", args.work, "--iterations", str(args.iterations),
           "--batch", str(args.batch), "--minibatches", str(args.minibatches),
           "--response-length", str(args.response_length), "--threads", str(args.threads)] + (["--flops"] if flops else [])
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(Path(args.work) / "hf-cache"), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=8, help="PPO iterations per run")
    ap.add_argument("--batch", type=int, default=32, help="prompts (= completions) per iteration")
    ap.add_argument("--minibatches", type=int, default=4, help="minibatches per epoch (4 epochs)")
    ap.add_argument("--response-length", type=int, default=40, help="most new tokens per completion")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of each side")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side (median reported)")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--sides", default="trl,alignkit", help="comma-separated, run in this order (default trl,alignkit; "
                    "alignkit alone needs no TRL environment)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --iterations 2 --batch 8 --repeats 1")
    ap.add_argument("--flops", action="store_true",
                    help="after the timed runs, one more run per side counting its matmul FLOPs: "
                         "each side's arithmetic floor on this CPU and the largest speedup it allows "
                         "(benchmarks/_flops.py); that run's times are not used")
    ap.add_argument("--child", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        child = child_trl if args.child == "trl" else child_alignkit
        if args.flops:
            from _flops import counted_run

            result = counted_run(child, args, lambda r: r["iterations"])
        else:
            result = child(args)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return
    if args.quick:
        args.iterations, args.batch, args.repeats = 2, 8, 1
    sides = [s for s in args.sides.split(",") if s]
    if "trl" in sides and not TRL_PYTHON.exists():
        sys.exit(f"TRL 1.12's environment is missing: {TRL_PYTHON} (see this file's docstring); "
                 "--sides alignkit runs alignkit alone")
    import torch

    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as work:
        args.work = work
        write_workload(Path(work), args.iterations * args.batch)
        trl_version = subprocess.run([str(TRL_PYTHON), "-c", "import trl; print(trl.__version__)"],
                                     capture_output=True, text=True).stdout.strip() if "trl" in sides else "not run"
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
              f"{torch.__version__}, {args.threads} thread(s) per side; TRL {trl_version}")
        print(f"workload: {args.iterations} iterations x {args.batch} prompts, response <= {args.response_length} "
              f"tokens, 4 epochs x {args.minibatches} minibatches; bundled tiny base model, reward and value models "
              f"from its trunk")
        runs = {side: [] for side in sides}
        for _ in range(args.repeats):
            for side in sides:
                runs[side].append(run_child(side, args))
        table = {}
        for side, rs in runs.items():
            table[side] = {
                "s_per_iteration": statistics.median(r["loop_s"] / r["iterations"] for r in rs),
                "cpu_s_per_iteration": statistics.median(r["cpu_s"] / r["iterations"] for r in rs),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                "iterations": rs[0]["iterations"], "runs_loop_s": [round(r["loop_s"], 2) for r in rs],
                "response_length": rs[0]["response_length"], "reward_first_run": rs[0]["reward"],
            }
            if "phases" in rs[0]:  # alignkit's recipe times its phases (median per iteration, over all runs)
                table[side]["phases_median_s"] = {k: statistics.median(r["phases"][k] for r in rs) for k in rs[0]["phases"]}
        counted = {side: run_child(side, args, flops=True) for side in sides} if args.flops else {}
        print(f"\n  {'':10} {'s/iteration':>12} {'CPU s/iteration':>16} {'peak RSS MiB':>13}  loop s per run")
        for side in sides:
            r = table[side]
            print(f"  {side:10} {r['s_per_iteration']:12.3f} {r['cpu_s_per_iteration']:16.3f} {r['peak_rss_mib']:13.0f}"
                  f"  {r['runs_loop_s']}")
        a = table.get("alignkit")
        if a is not None and "trl" in table:
            t = table["trl"]
            table["speedup"] = t["s_per_iteration"] / a["s_per_iteration"]
            table["cpu_speedup"] = t["cpu_s_per_iteration"] / a["cpu_s_per_iteration"]
            print(f"\n  alignkit is {table['speedup']:.2f}x faster per iteration (wall), {table['cpu_speedup']:.2f}x (CPU)")
            print(f"  mean response length (tokens, EOS included) alignkit {a['response_length']:.2f} / TRL "
                  f"{t['response_length']:.2f}")
            print(f"  mean reward-model score per iteration (first run) alignkit {a['reward_first_run']} / TRL "
                  f"{t['reward_first_run']}")
        if a is not None:
            print(f"  alignkit mean reward-model score per iteration (first run) {a['reward_first_run']}")
            print("  alignkit phases (median s/iteration): " + ", ".join(
                f"{k.removeprefix('time/')} {v:.3f}" for k, v in sorted(a["phases_median_s"].items())))
        if counted:
            from _flops import floor_report

            table["floor"] = floor_report("iteration", counted, {s: table[s]["s_per_iteration"] for s in counted},
                                          args.threads)
        if args.out:
            args.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
