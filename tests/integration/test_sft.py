"""SFT on the training core: resume, SIGTERM, exact accumulation, 2 processes, LoRA, packing, learning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignkit.config import load_config
from alignkit.recipes import sft
from alignkit.recipes.sft import SFTConfig
from tests.helpers import assert_same_weights, final_weights, torchrun

FAST = ["data.n_train=64", "data.n_eval=8", "train.eval_generate=0", "output.tensorboard=false",
        "train.eval_every=1000", "optim.warmup_steps=2", "optim.lr=1e-2"]


def cfg_for(tmp_path, name, *overrides):
    return load_config(SFTConfig, None, FAST + [f"output.dir={tmp_path}", f"output.name={name}",
                                                "model.path=tiny", *overrides])


def losses(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


class StopAfter:
    """Stands in for GracefulStop: "SIGTERM arrives" at the n-th poll of .requested (one poll per step)."""

    def __init__(self, n):
        self.n = n

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.n -= 1
        return self.n <= 0


def test_resume_gives_the_same_run(tmp_path, monkeypatch):
    straight = sft.run(cfg_for(tmp_path, "straight", "train.steps=6", "train.batch_size=8"))
    monkeypatch.setattr(sft, "GracefulStop", StopAfter(3))
    part = sft.run(cfg_for(tmp_path, "resumed", "train.steps=6", "train.batch_size=8"))
    assert part["interrupted"] and part["steps"] == 3
    assert (tmp_path / "resumed" / "checkpoints" / "step-3" / "COMPLETE").is_file()
    assert not (tmp_path / "resumed" / "final").exists()
    monkeypatch.setattr(sft, "GracefulStop", StopAfter(10**9))
    sft.run(cfg_for(tmp_path, "resumed", "train.steps=6", "train.batch_size=8", "output.resume=true"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")  # bit-identical on CPU
    assert_same_weights(final_weights(tmp_path / "resumed"), final_weights(tmp_path / "straight"))
    assert straight["steps"] == 6


def test_gradient_accumulation_1x8_equals_8x1(tmp_path):
    sft.run(cfg_for(tmp_path, "a1", "train.steps=3", "train.batch_size=8", "train.grad_accum=1"))
    sft.run(cfg_for(tmp_path, "a8", "train.steps=3", "train.batch_size=8", "train.grad_accum=8"))
    assert losses(tmp_path / "a1") == pytest.approx(losses(tmp_path / "a8"), abs=1e-6)
    # Adam divides by sqrt(v): float-reordering differences of ~1e-8 in the gradient move weights by ~1e-6
    assert_same_weights(final_weights(tmp_path / "a1"), final_weights(tmp_path / "a8"), atol=1e-5)


def test_packing_changes_no_number(tmp_path):
    sft.run(cfg_for(tmp_path, "packed", "train.steps=3", "train.batch_size=8", "train.packing=true"))
    sft.run(cfg_for(tmp_path, "padded", "train.steps=3", "train.batch_size=8", "train.packing=false"))
    assert losses(tmp_path / "packed") == pytest.approx(losses(tmp_path / "padded"), abs=1e-5)
    assert_same_weights(final_weights(tmp_path / "packed"), final_weights(tmp_path / "padded"), atol=1e-5)


def test_batch_that_does_not_divide_says_what_fits(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=10 must divide by processes x grad_accum = 1 x 4"):
        sft.run(cfg_for(tmp_path, "bad", "train.batch_size=10", "train.grad_accum=4"))


def test_lora_trains_only_adapters_and_merged_model_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from alignkit.infra.train import prepare_model
    from alignkit.models import build_tiny

    model, _ = build_tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = cfg_for(tmp_path, "lora", "model.lora.enabled=true", "model.lora.r=4")
    wrapped = prepare_model(model, cfg.model)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    sft.run(cfg_for(tmp_path, "lora", "model.lora.enabled=true", "model.lora.r=4", "train.steps=4",
                    "train.batch_size=8"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "final")
    changed = [k for k, v in merged.state_dict().items() if k in base and not torch.equal(v, base[k])]
    assert changed, "merging the trained adapters should change the merged weights"
    assert not any("lora_" in k for k in merged.state_dict())


def test_sft_lowers_held_out_loss(tmp_path):
    s = sft.run(cfg_for(tmp_path, "learn", "train.steps=40", "train.batch_size=16", "data.n_train=400",
                        "data.n_eval=20", "optim.lr=3e-3", "optim.warmup_steps=5", "train.eval_every=40"))
    assert s["end"]["eval/loss"] < 0.6 * s["start"]["eval/loss"]
    assert s["end"]["eval/token_accuracy"] > s["start"]["eval/token_accuracy"] + 0.2
    run = tmp_path / "learn"
    assert (run / "curves.png").is_file() and (run / "config.yaml").is_file()
    assert json.loads((run / "summary.json").read_text())["steps"] == 40


def _cli(tmp_path, name, *extra):
    return [sys.executable, "-m", "alignkit.cli", "sft", *FAST, f"output.dir={tmp_path}", f"output.name={name}",
            "model.path=tiny", *extra]


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    proc = subprocess.Popen(_cli(tmp_path, "term", "train.steps=100000", "train.batch_size=8"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    ckpts = list((tmp_path / "term" / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").is_file()
    assert json.loads(out[out.index("{"):])["interrupted"] is True


def test_two_processes_train_like_one(tmp_path):
    args = ["train.steps=3", "train.batch_size=8", "train.grad_accum=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_cli(tmp_path, "one", *args), capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*torchrun(2), "-m", "alignkit.cli"] + _cli(tmp_path, "two", *args)[3:],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-5)
    # gloo's all-reduce sums in another order than one process does: 1.17e-5 at most measured on torch 2.13
    # (under 1e-5 on earlier packages); a wrong gradient scale moves weights by ~lr.
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), atol=3e-5)


def test_lora_resume_gives_the_same_run(tmp_path, monkeypatch):
    lora = ["model.lora.enabled=true", "model.lora.r=4", "train.steps=4", "train.batch_size=8"]
    sft.run(cfg_for(tmp_path, "straight", *lora))
    monkeypatch.setattr(sft, "GracefulStop", StopAfter(2))
    sft.run(cfg_for(tmp_path, "resumed", *lora))
    monkeypatch.setattr(sft, "GracefulStop", StopAfter(10**9))
    sft.run(cfg_for(tmp_path, "resumed", *lora, "output.resume=true"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert_same_weights(final_weights(tmp_path / "resumed"), final_weights(tmp_path / "straight"))


def test_gradient_checkpointing_changes_no_number(tmp_path):
    sft.run(cfg_for(tmp_path, "plain", "train.steps=2", "train.batch_size=8"))
    sft.run(cfg_for(tmp_path, "ckpt", "train.steps=2", "train.batch_size=8", "model.gradient_checkpointing=true"))
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), abs=1e-6)
    assert_same_weights(final_weights(tmp_path / "ckpt"), final_weights(tmp_path / "plain"), atol=1e-6)


def test_batches_are_full_even_when_the_data_is_smaller_than_a_batch(tmp_path):
    sft.run(cfg_for(tmp_path, "tiny", "data.n_train=5", "data.n_eval=2", "train.steps=3", "train.batch_size=8"))
    rows = [json.loads(x) for x in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()][1:]
    tokens = [r["train/tokens"] for r in rows]
    assert len(tokens) == 3 and min(tokens) > 0
