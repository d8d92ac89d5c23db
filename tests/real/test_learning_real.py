"""Learning on the real model (markers real + slow; `make test-slow` with the model built): GRPO from the raw
instruct model raises held-out accuracy on two-digit arithmetic asked in words; PPO at a new user's lr raises
the reward without wrecking the model; DPO moves greedy behaviour, not only the held-out margin. Settings and
measured curves: docs/benchmarks.md ("Real-model learning")."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from alignkit.config import build_config

pytestmark = [pytest.mark.real, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def word_arith(tmp_path: Path, pairs: bool = False) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("mwa", ROOT / "scripts" / "make_word_arithmetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = module.write(tmp_path / "word_arith", pairs=pairs)
    return dict(zip(("train", "held_out", "pairs"), paths))


def test_grpo_raises_held_out_accuracy_by_15_points_in_20_minutes(tmp_path, real_model_dir):
    from alignkit.recipes import grpo

    data = word_arith(tmp_path)
    summary = grpo.run(build_config(grpo.GRPOConfig, {
        "model": {"path": str(real_model_dir)},
        "data": {"train_file": str(data["train"]), "eval_file": str(data["held_out"]), "n_eval": 100,
                 "max_prompt_length": 128},
        "rollout": {"prompts_per_step": 4, "group_size": 8, "max_new_tokens": 24},
        "reward": {"weights": {"accuracy": 1.0, "digits": 0.5}}, "loss": {"beta": 0.0},
        "optim": {"lr": 1e-5}, "train": {"steps": 1000, "eval_every": 10000, "time_limit_s": 1200},
        "output": {"dir": str(tmp_path), "name": "grpo", "tensorboard": False}}))
    before, after = summary["start"]["eval/accuracy"], summary["end"]["eval/accuracy"]
    assert after - before >= 0.15, (before, after)


def test_ppo_raises_the_reward_without_wrecking_the_model(tmp_path, real_model_dir):
    """A new user's PPO run: the recipe's defaults and lr 1e-5 (the issue's run, with the old defaults, took
    greedy format from 16/16 to 2/16 in 5 iterations). Measured (docs/benchmarks.md): held-out greedy reward
    0.107 -> 0.247 and accuracy 4% -> 12% after 4 iterations, answers in plain English, KL to the reference
    0.026, every iteration inside the trust region."""
    from alignkit.recipes import ppo

    data = word_arith(tmp_path)
    summary = ppo.run(build_config(ppo.PPOConfig, {
        "model": {"path": str(real_model_dir)},
        "data": {"train_file": str(data["train"]), "eval_file": str(data["held_out"]), "n_eval": 50,
                 "max_prompt_length": 128},
        "rollout": {"prompts_per_step": 32, "max_new_tokens": 32},
        "reward": {"weights": {"accuracy": 1.0, "digits": 0.5}}, "optim": {"lr": 1e-5},
        "train": {"steps": 4, "eval_every": 4},
        "output": {"dir": str(tmp_path), "name": "ppo", "tensorboard": False}}))
    start, end = summary["start"], summary["end"]
    assert end["eval/reward/total"] - start["eval/reward/total"] >= 0.05, (start, end)
    assert end["eval/accuracy"] >= start["eval/accuracy"], (start, end)
    assert end["eval/language"] >= 0.95 and end["eval/length"] <= 1.2 * start["eval/length"], end  # not wrecked
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    kls = [r["train/approx_kl"] for r in rows if "train/approx_kl" in r]
    assert len(kls) == 4 and max(kls) < 0.03, kls  # the trust region (loss.kl_stop 0.02) held every iteration


CHOSEN = re.compile(r"^\s*\d+ (plus|minus) \d+ is -?\d+\.?\s*$")


def greedy_style_share(model_dir: Path, held_out: Path, n: int = 50) -> tuple[float, float]:
    """(share of greedy answers in the chosen style "a plus b is c.", strict accuracy) on held-out prompts."""
    from alignkit.evaluation import strict_accuracy
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.rollout import generate

    rows = [json.loads(x) for x in held_out.read_text().splitlines()][:n]
    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    out = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=24, temperature=0)
    style = sum(bool(CHOSEN.match(c)) for c in out.completions) / n
    acc = sum(strict_accuracy(c, r["answer"]) for c, r in zip(out.completions, rows)) / n
    return style, acc


def test_dpo_moves_greedy_behaviour(tmp_path, real_model_dir):
    from alignkit.recipes import dpo

    data = word_arith(tmp_path, pairs=True)
    style_before, _ = greedy_style_share(real_model_dir, data["held_out"])
    dpo.run(build_config(dpo.DPOConfig, {
        "model": {"path": str(real_model_dir), "lora": {"enabled": True, "r": 16, "alpha": 32}},
        "ref": {"mode": "adapter"},
        "data": {"train_file": str(data["pairs"]), "max_length": 128, "eval_fraction": 0.01},
        "loss": {"beta": 0.1}, "optim": {"lr": 5e-4, "warmup_steps": 0},
        "train": {"steps": 8, "batch_size": 8, "eval_every": 1000, "eval_generate": 0, "eval_kl_prompts": 0},
        "output": {"dir": str(tmp_path), "name": "dpo", "tensorboard": False}}))
    style_after, _ = greedy_style_share(tmp_path / "dpo" / "final", data["held_out"])
    # measured (docs/benchmarks.md): 0.02 -> 0.40 of 50 greedy answers in the chosen style after 8 steps
    assert style_after - style_before >= 0.25, (style_before, style_after)
