"""DPO on the training core: reference modes interchangeable, shared prefix changes no number, resume,
exact accumulation, bad input counted, losses and beta schedule wired, and learning (fast smoke + slow full).

The tiny models here gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP spinning makes
them ~10x slower: the module runs torch with one thread (restored after).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from alignkit.config import load_config
from alignkit.data import DataError, write_jsonl
from alignkit.models import BUNDLED_DIR
from alignkit.recipes import dpo
from alignkit.recipes.dpo import DPOConfig
from tests.helpers import assert_same_weights, final_weights, rows, series, torchrun

FAST = ["model.path=tiny", "data.n_train=64", "data.n_eval=8", "data.max_length=64", "train.eval_generate=0",
        "train.eval_kl_prompts=0", "train.eval_every=1000", "output.tensorboard=false", "optim.warmup_steps=2",
        "optim.lr=1e-2", "train.batch_size=8"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(tmp_path, name, *overrides, config=None):
    base = [] if config else FAST
    return load_config(DPOConfig, config, base + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def test_reference_modes_train_the_same(tmp_path):
    """copy == precomputed (full weights) and adapter == copy == precomputed (LoRA): same step-0 loss, and the
    same trajectory over a few steps, since the reference logprobs agree to float precision."""
    steps = ["train.steps=3"]
    lora = ["model.lora.enabled=true", "model.lora.r=4"]
    for name, extra in [("copy", []), ("pre", []), ("lcopy", lora), ("ladapter", lora), ("lpre", lora)]:
        mode = {"copy": "copy", "pre": "precomputed", "lcopy": "copy", "ladapter": "adapter", "lpre": "precomputed"}[name]
        dpo.run(cfg_for(tmp_path, name, f"ref.mode={mode}", *steps, *extra))
    step0 = [series(tmp_path / n, "train/loss")[0] for n in ("copy", "pre", "lcopy", "ladapter", "lpre")]
    assert step0 == pytest.approx([0.693147] * 5, abs=1e-5)  # policy == reference: -log sigma(0) = log 2
    for a, b in [("copy", "pre"), ("lcopy", "ladapter"), ("lcopy", "lpre")]:
        assert series(tmp_path / a, "train/loss") == pytest.approx(series(tmp_path / b, "train/loss"), abs=1e-5)
        assert series(tmp_path / a, "train/rewards/margin") == pytest.approx(
            series(tmp_path / b, "train/rewards/margin"), abs=1e-5)
    assert (tmp_path / "pre" / "ref_logprobs.safetensors").is_file()


def test_shared_prefix_changes_no_number(tmp_path):
    dpo.run(cfg_for(tmp_path, "shared", "train.steps=3", "train.share_prefix=true"))
    dpo.run(cfg_for(tmp_path, "plain", "train.steps=3", "train.share_prefix=false"))
    assert series(tmp_path / "shared", "train/loss") == pytest.approx(series(tmp_path / "plain", "train/loss"), abs=1e-5)
    # Adam divides by sqrt(v): fp32 reordering (another attention layout) moves near-zero-gradient weights by
    # up to ~1e-4 after 3 steps of lr 1e-2 (the steps themselves move weights by up to 3e-2)
    assert_same_weights(final_weights(tmp_path / "shared"), final_weights(tmp_path / "plain"), atol=2e-4)


def test_gradient_accumulation_1x4_equals_4x1(tmp_path):
    dpo.run(cfg_for(tmp_path, "a1", "train.steps=3", "train.grad_accum=1"))
    dpo.run(cfg_for(tmp_path, "a4", "train.steps=3", "train.grad_accum=4"))
    assert series(tmp_path / "a1", "train/loss") == pytest.approx(series(tmp_path / "a4", "train/loss"), abs=1e-6)
    assert_same_weights(final_weights(tmp_path / "a1"), final_weights(tmp_path / "a4"), atol=1e-5)


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


def test_resume_gives_the_same_run_and_reuses_the_reference_cache(tmp_path, monkeypatch):
    dpo.run(cfg_for(tmp_path, "straight", "train.steps=5"))
    monkeypatch.setattr(dpo, "GracefulStop", StopAfter(2))
    part = dpo.run(cfg_for(tmp_path, "resumed", "train.steps=5"))
    assert part["interrupted"] and part["steps"] == 2 and not part["reference_cache_reused"]
    monkeypatch.setattr(dpo, "GracefulStop", StopAfter(10**9))
    rest = dpo.run(cfg_for(tmp_path, "resumed", "train.steps=5", "output.resume=true"))
    assert rest["reference_cache_reused"]
    assert series(tmp_path / "resumed", "train/loss") == series(tmp_path / "straight", "train/loss")
    assert_same_weights(final_weights(tmp_path / "resumed"), final_weights(tmp_path / "straight"))


def test_bad_pairs_are_counted_or_rejected(tmp_path):
    from alignkit.data import make_problems

    good = dpo.arithmetic_preferences(make_problems(20, level=2, seed=0), seed=0)
    same = {"prompt": "1+1", "chosen": "<answer>2</answer>", "rejected": "<answer>2</answer>"}
    long = {"prompt": "1+" * 40 + "1", "chosen": "<answer>41</answer>", "rejected": "41"}
    write_jsonl(good[:3] + [same, long] + good[3:], tmp_path / "train.jsonl")
    write_jsonl(good[:4], tmp_path / "eval.jsonl")
    files = [f"data.train_file={tmp_path / 'train.jsonl'}", f"data.eval_file={tmp_path / 'eval.jsonl'}",
             "train.steps=1", "data.max_length=48"]
    with pytest.raises(DataError, match=r"train.jsonl, row 5: example is \d+ tokens, longer than max_length=48"):
        dpo.run(cfg_for(tmp_path, "strict", *files))
    s = dpo.run(cfg_for(tmp_path, "lenient", *files, "data.on_overflow=drop"))
    assert s["data"] == {"dropped": 1, "skipped_identical": 1}
    first = rows(tmp_path / "lenient")[0]
    assert first["data/dropped"] == 1 and first["data/skipped_identical"] == 1


def test_losses_beta_schedule_and_metrics_are_wired(tmp_path):
    s = dpo.run(cfg_for(tmp_path, "ipo", "train.steps=4", "loss.loss_type=ipo", "loss.beta=1.0",
                        "loss.beta_final=0.5", "loss.beta_schedule=linear", "train.eval_kl_prompts=4",
                        "ref.mode=copy"))
    betas = series(tmp_path / "ipo", "train/beta")
    assert betas == pytest.approx([1.0, 5 / 6, 2 / 3, 0.5])
    assert series(tmp_path / "ipo", "train/loss")[0] == pytest.approx(0.25, abs=1e-5)  # (0 - 1/(2*1))^2
    assert s["start"]["eval/kl"] == pytest.approx(0.0, abs=1e-5) and s["end"]["eval/kl"] > 0
    last = rows(tmp_path / "ipo")[-1]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "rewards/confidence",
                "rewards/grad_weight", "logps/chosen", "logps/rejected"):
        assert f"train/{key}" in last and f"eval/{key}" in last
    assert last["train/rewards/confidence"] + last["train/rewards/grad_weight"] == pytest.approx(1.0)
    free = dpo.run(cfg_for(tmp_path, "free", "train.steps=2", "loss.reference_free=true", "loss.label_smoothing=0.1",
                           "train.eval_kl_prompts=4"))
    assert free["end"]["eval/kl"] > 0 and (tmp_path / "free" / "final" / "model.safetensors").is_file()


def test_cli_runs_dpo(tmp_path, capsys):
    from alignkit.cli import main

    assert main(["dpo", *FAST, "train.steps=2", f"output.dir={tmp_path}", "output.name=cli"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2


def test_two_processes_train_like_one(tmp_path):
    """Precomputed reference sharded over 2 processes and summed; loss normalized by the global pair count."""
    args = [*FAST, "train.steps=3", "train.grad_accum=2", f"output.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "alignkit.cli", "dpo", *args, "output.name=one"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*torchrun(2), "-m", "alignkit.cli", "dpo", *args, "output.name=two"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert series(tmp_path / "one", "train/loss") == pytest.approx(series(tmp_path / "two", "train/loss"), abs=1e-5)
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), atol=1e-4)


needs_base = pytest.mark.skipif(not (BUNDLED_DIR / "config.json").is_file(),
                                reason="the bundled tiny base model is not built (python scripts/build_base_model.py)")


@needs_base
def test_dpo_learns_the_preferred_format_fast(tmp_path):
    """Smoke version of the learning test (a few seconds): the bundled base answers plainly ("68"); DPO on
    pairs preferring the R1 format over the right answer badly formatted."""
    s = dpo.run(cfg_for(tmp_path, "smoke", "model.path=bundled", "data.n_train=400", "data.n_eval=32",
                        "data.rejected=bad_format", "train.steps=25", "train.batch_size=16", "loss.beta=0.5",
                        "optim.lr=1e-3", "optim.warmup_steps=10", "train.eval_every=25", "train.eval_generate=32",
                        "train.eval_kl_prompts=8", "data.max_length=64", "output.tensorboard=false"))
    a, b = s["start"], s["end"]
    print(f"\nreward accuracy {a['eval/rewards/accuracy']:.3f} -> {b['eval/rewards/accuracy']:.3f}; "
          f"R1 format {a['eval/format']:.3f} -> {b['eval/format']:.3f}; KL {b['eval/kl']:.2f}")
    assert a["eval/rewards/accuracy"] == pytest.approx(0.5, abs=0.1)
    assert b["eval/rewards/accuracy"] >= 0.9
    assert b["eval/format"] >= a["eval/format"] + 0.3


@needs_base
@pytest.mark.slow
def test_dpo_learns_on_the_arith_tiny_preset(tmp_path):
    """configs/dpo/arith_tiny.yaml as shipped (300 steps, mixed rejected kinds, beta 1.0 -> 0.25): held-out
    reward accuracy from chance to >= 90%, greedy answers in the preferred R1 format far more often."""
    s = dpo.run(cfg_for(tmp_path, "full", "output.tensorboard=false", config="configs/dpo/arith_tiny.yaml"))
    a, b = s["start"], s["end"]
    print(f"\nreward accuracy {a['eval/rewards/accuracy']:.3f} -> {b['eval/rewards/accuracy']:.3f}; "
          f"R1 format {a['eval/format']:.3f} -> {b['eval/format']:.3f}; answer accuracy "
          f"{a['eval/answer_accuracy']:.3f} -> {b['eval/answer_accuracy']:.3f}; KL {b['eval/kl']:.2f}")
    assert a["eval/rewards/accuracy"] == pytest.approx(0.5, abs=0.1)
    assert b["eval/rewards/accuracy"] >= 0.9
    assert b["eval/format"] >= a["eval/format"] + 0.3
