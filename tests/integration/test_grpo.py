"""GRPO recipe: a step recomputed by hand from the pure functions, micro-batching invariance, failures
counted and left out, resume, bad input."""


import pytest
import torch
from safetensors.torch import load_file

from alignkit.advantages import group_advantages
from alignkit.config import load_config
from alignkit.losses import grpo_loss
from alignkit.models import BUNDLED_DIR, load_causal_lm, load_tokenizer
from alignkit.recipes import grpo
from alignkit.recipes.grpo import GRPOConfig
from alignkit.rewards import accuracy_reward, format_reward
from tests.helpers import rows

SMALL = ["rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=16", "data.n_train=64",
         "data.n_eval=4", "train.eval_every=1000", "output.tensorboard=false", "optim.lr=1e-3"]


def cfg_for(tmp_path, name, *overrides):
    return load_config(GRPOConfig, None, SMALL + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def test_one_step_by_hand_equals_the_recipe(tmp_path, monkeypatch):
    captured = {}
    real = grpo.merge_rollouts

    def spy(parts, pad_id):
        captured["batch"] = real(parts, pad_id)
        return captured["batch"]

    monkeypatch.setattr(grpo, "merge_rollouts", spy)
    cfg = cfg_for(tmp_path, "step", "train.steps=1", "loss.mu=2", "loss.micro_batch_size=5", "loss.beta=0.1",
                  "rollout.temperature=0.9")
    # the prompts the recipe draws: same pools, same seeded sampler
    pools = grpo.load_prompts(cfg.data, load_tokenizer(BUNDLED_DIR))[0]
    prompts = grpo.PromptSampler(pools, cfg.train.seed).draw(4, None)
    grpo.run(cfg)
    batch = captured["batch"]

    # by hand: rewards -> group advantages -> logprobs -> two AdamW steps of grpo_loss on the whole batch
    answers = [p[2]["answer"] for p in prompts for _ in range(4)]
    r = torch.tensor([accuracy_reward(c, answer=a) + format_reward(c) for c, a in zip(batch["completions"], answers)])
    adv = group_advantages(r, 4)
    model = load_causal_lm(BUNDLED_DIR).train()
    ref = load_causal_lm(BUNDLED_DIR)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    everything = slice(0, 16)
    with torch.no_grad():
        ref_lp = grpo.completion_logprobs(ref, batch, everything, temperature=0.9)
    mask = batch["response_mask"]
    old = None
    for _ in range(2):
        lp = grpo.completion_logprobs(model, batch, everything, temperature=0.9)
        old = lp.detach() if old is None else old
        loss, _ = grpo_loss(lp, old, ref_lp, adv, mask, beta=0.1, max_tokens=16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    got = load_file(tmp_path / "step" / "final" / "model.safetensors")
    # Adam divides each step by the gradient's own scale, so a rounding-level difference in a small gradient
    # element (micro-batches of 5 rows vs one batch of 16) can move a weight by ~1e-5 at lr 1e-3; a wrong
    # loss, normalization or micro-batch split moves weights by ~lr.
    # Measured: 2.5e-5 at most on torch 2.13 + transformers 5.25 (2e-5 held on the packages of earlier
    # sessions); the bound stays 20x below what a wrong loss moves (~lr = 1e-3).
    for name, p in model.state_dict().items():
        if name in got:
            assert torch.allclose(got[name], p, atol=5e-5), name
    logged = rows(tmp_path / "step")[1]
    assert logged["reward/total"] == pytest.approx(r.mean().item(), abs=1e-6)


def test_micro_batch_size_changes_no_number(tmp_path):
    grpo.run(cfg_for(tmp_path, "m16", "train.steps=2", "loss.micro_batch_size=16"))
    grpo.run(cfg_for(tmp_path, "m3", "train.steps=2", "loss.micro_batch_size=3"))
    a, b = rows(tmp_path / "m16"), rows(tmp_path / "m3")
    assert [x["train/loss"] for x in a[1:]] == pytest.approx([x["train/loss"] for x in b[1:]], abs=1e-6)
    wa, wb = (load_file(tmp_path / n / "final" / "model.safetensors") for n in ("m16", "m3"))
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 5e-5, worst  # rounding, amplified by Adam (see test_one_step_by_hand_equals_the_recipe)


def flaky_reward(completion, **fields):
    """A user reward that fails on some samples (raises, or returns NaN)."""
    if "1" in completion:
        raise RuntimeError("verifier crashed")
    return float("nan") if "2" in completion else 1.0


def test_failing_reward_is_counted_and_left_out_not_scored_zero(tmp_path):
    # this reward fails on most samples by design; reward.max_failed_share=1 keeps the run going so the counting
    # can be checked (at the default 0.5 the run stops: tests/integration/test_reward_failures.py)
    s = grpo.run(cfg_for(tmp_path, "flaky", "train.steps=2", f"reward.weights={{'{__name__}:flaky_reward': 1.0}}",
                         "reward.success_key=none", "reward.max_failed_share=1.0"))
    logged = rows(tmp_path / "flaky")[1:]
    assert sum(r["samples/failed"] for r in logged) > 0
    assert all(r["reward/failed"] == r["samples/failed"] for r in logged)
    assert s["steps"] == 2


def test_prompt_without_ground_truth_is_a_counted_failure(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "2+2", "answer": "4"}\n{"prompt": "3+3"}\n' * 4)
    grpo.run(cfg_for(tmp_path, "nogt", "train.steps=1", f"data.train_file={data}"))
    logged = rows(tmp_path / "nogt")[1]
    # the 2 prompts without an answer field (of 4 drawn) x G=4 samples cannot be scored for accuracy
    assert logged["samples/failed"] == 8 and logged["reward/failed/accuracy"] == 8


def test_resume_gives_the_same_run(tmp_path, monkeypatch):
    from tests.integration.test_sft import StopAfter

    grpo.run(cfg_for(tmp_path, "straight", "train.steps=4"))
    monkeypatch.setattr(grpo, "GracefulStop", StopAfter(2))
    assert grpo.run(cfg_for(tmp_path, "resumed", "train.steps=4"))["interrupted"]
    monkeypatch.setattr(grpo, "GracefulStop", StopAfter(10**9))
    grpo.run(cfg_for(tmp_path, "resumed", "train.steps=4", "output.resume=true"))
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "resumed")
    assert [x.get("train/loss") for x in a] == [x.get("train/loss") for x in b]
    wa, wb = (load_file(tmp_path / n / "final" / "model.safetensors") for n in ("straight", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_trained_reward_model_is_a_reward_component(tmp_path):
    """reward.model (an `alignkit rm` output directory) adds the component "model", weighted into the total."""
    from alignkit.config import ModelSection
    from alignkit.models.reward import build_reward_model

    rm, tok = build_reward_model(ModelSection(path="bundled"), seed=1)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    grpo.run(cfg_for(tmp_path, "rm-grpo", "train.steps=1", "reward.weights={accuracy: 1.0}",
                     f"reward.model={tmp_path / 'rm'}", "reward.model_weight=0.5"))
    logged = rows(tmp_path / "rm-grpo")[1]
    assert logged["reward/model"] != 0.0 and "reward/success_rate" in logged
    assert logged["reward/total"] == pytest.approx(logged["reward/accuracy"] + 0.5 * logged["reward/model"], abs=1e-6)
    with pytest.raises(FileNotFoundError, match="reward model directory not found or has no config.json: .*nope"):
        grpo.run(cfg_for(tmp_path, "rm-missing", "train.steps=1", f"reward.model={tmp_path / 'nope'}"))


def test_time_limit_ends_the_run_with_a_final_evaluation(tmp_path):
    summary = grpo.run(cfg_for(tmp_path, "tl", "train.steps=50", "train.time_limit_s=0.001"))
    logged = rows(tmp_path / "tl")
    assert summary["steps"] == 1 and summary["time_limit_reached"] and not summary["interrupted"]
    assert "eval/accuracy" in logged[-1] and logged[-1]["step"] == 1  # evaluated at the step it stopped
    assert (tmp_path / "tl" / "final" / "model.safetensors").is_file()
    from alignkit.config import ConfigError

    with pytest.raises(ConfigError, match=r"'train\.time_limit_s': Input should be greater than 0"):
        cfg_for(tmp_path, "bad", "train.time_limit_s=0")


def test_health_warnings_name_each_metric_out_of_range():
    cfg = grpo.MonitorSection(kl_limit=0.1, entropy_floor=0.05)
    assert grpo.health_warnings({"train/kl": 0.05, "train/entropy": 0.5, "groups/zero_variance": 0.5,
                                 "train/skipped": 0}, cfg) == []
    lines = grpo.health_warnings({"train/kl": 0.2, "train/entropy": 0.01, "groups/zero_variance": 1.0,
                                  "train/skipped": 1, "train/loss": float("nan"), "train/grad_norm": 1.0}, cfg)
    assert [x.split(" ")[0] for x in lines] == ["KL", "entropy", "every", "non-finite"] and "nan" in lines[3]


# --------------------------------------------------------------------------------------------------------
# Learning (slow)
# --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_grpo_learns_arithmetic(tmp_path):
    """Issue 6's bar: from the bundled base model, GRPO raises held-out accuracy (the 200 held-out questions,
    greedy) by at least 15 points within 10 minutes on this CPU. configs/grpo/arith_tiny_accuracy.yaml stops
    itself at 580 s (loading and evaluations included) and evaluates once more; numbers are in
    docs/benchmarks.md ("GRPO learning")."""
    cfg = load_config(GRPOConfig, "configs/grpo/arith_tiny_accuracy.yaml",
                      [f"output.dir={tmp_path}", "output.name=learn", "output.tensorboard=false"])
    summary = grpo.run(cfg)
    curve = [(r["step"], r["eval/accuracy"]) for r in rows(tmp_path / "learn") if "eval/accuracy" in r]
    print("held-out accuracy by step:", curve, "steps:", summary["steps"], "wall s:", round(summary["wall_s"]))
    assert summary["start"]["eval/accuracy"] == pytest.approx(0.23)  # the base model's documented accuracy
    assert summary["end"]["eval/accuracy"] >= summary["start"]["eval/accuracy"] + 0.15
