"""PPO recipe: an iteration recomputed by hand from the pure functions, the variants, the KL controller as
the recipe runs it, the reward-model path, resume; and (slow) learning with a rule-based reward and with a
reward model trained by ``alignkit rm``."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import alignkit.rewards as rewards_module
from alignkit.advantages import gae, whiten
from alignkit.config import load_config
from alignkit.losses import AdaptiveKLController, ppo_policy_loss, value_loss
from alignkit.models import BUNDLED_DIR, load_causal_lm
from alignkit.models.value import ValueModel
from alignkit.recipes import ppo
from alignkit.recipes.ppo import PPOConfig
from alignkit.rewards import accuracy_reward, format_reward
from tests.helpers import rows

SMALL = ["rollout.prompts_per_step=8", "rollout.max_new_tokens=12", "data.n_train=64", "data.n_eval=2",
         "train.eval_every=1000", "output.tensorboard=false", "loss.minibatch_size=4", "loss.epochs=2"]


def cfg_for(tmp_path, name, *overrides):
    return load_config(PPOConfig, None, SMALL + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def critic_weights(run_dir):
    return {**load_file(Path(run_dir) / "critic" / "model.safetensors"),
            **{f"head.{k}": v for k, v in load_file(Path(run_dir) / "critic" / "value_head.safetensors").items()}}


def test_one_iteration_by_hand_equals_the_recipe(tmp_path, monkeypatch):
    captured = {}
    real_score, real_adv = rewards_module.score_with_model, ppo.compute_advantages

    def spy_score(completions, examples, *args, **kw):
        captured["completions"], captured["examples"] = completions, examples
        return real_score(completions, examples, *args, **kw)

    def spy_adv(batch, **kw):
        captured["batch"] = real_adv(batch, **kw)
        return captured["batch"]

    monkeypatch.setattr(rewards_module, "score_with_model", spy_score)  # the recipe imports it at run time
    monkeypatch.setattr(ppo, "compute_advantages", spy_adv)
    ppo.run(cfg_for(tmp_path, "it", "train.steps=1", "loss.micro_batch_size=3", "kl.beta=0.1",
                    "rollout.temperature=0.9", "loss.value_clip=0.2", "optim.lr=1e-3",
                    # the lecture's values, set explicitly since the real-model-safe defaults differ
                    "loss.ent_coef=0.01", "critic.lr=1e-3", "critic.head_init_std=0.02", "loss.kl_stop=null"))
    b = captured["batch"]
    everything = slice(0, 8)

    # score: accuracy + format, the sequence reward of each completion
    r = torch.tensor([accuracy_reward(c, answer=e["answer"]) + format_reward(c)
                      for c, e in zip(captured["completions"], captured["examples"])])
    assert torch.equal(b.rewards, r)
    # logprobs / values / reference, then token rewards -> GAE -> whitening, from the pure functions
    policy = load_causal_lm(BUNDLED_DIR).train()
    critic = ValueModel.from_causal_lm(policy, seed=0, std=0.02).train()
    reference = load_causal_lm(BUNDLED_DIR)
    with torch.no_grad():
        old = ppo.policy_forward(policy, b, everything, temperature=0.9)[0]
        ref = ppo.policy_forward(reference, b, everything, temperature=0.9)[0]
        values = ppo.critic_values(critic, b, everything)
    mask = b.response_mask
    assert torch.allclose(b.old_logprobs, old, atol=1e-6) and torch.allclose(b.values, values, atol=1e-6)
    token_rewards = -0.1 * (old - ref) * mask
    for i, n in enumerate(mask.sum(-1).tolist()):
        token_rewards[i, n - 1] += r[i]
    adv, ret = gae(token_rewards, values, mask, gamma=0.99, lam=0.95)
    assert torch.allclose(b.returns, ret, atol=1e-5) and torch.allclose(b.advantages, whiten(adv, mask), atol=1e-5)

    # update: 2 epochs x 2 shuffled minibatches of 4 rows; loss = -L^CLIP + 0.5 L^VF - 0.01 S (token means)
    opt_p = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-3, weight_decay=0.0)
    for epoch in range(2):
        order = ppo.minibatch_order(8, seed=0, step=0, epoch=epoch)
        for mb in (order[:4], order[4:]):
            m = mask[mb]
            lp, ent, _ = ppo.policy_forward(policy, b, mb, temperature=0.9, entropy=True)
            v = ppo.critic_values(critic, b, mb)
            pol, _ = ppo_policy_loss(lp, old[mb], b.advantages[mb], m)
            vf, _ = value_loss(v, ret[mb], m, old_values=values[mb], clip_range=0.2)
            loss = (pol.sum() + 0.5 * vf.sum() - 0.01 * (ent * m).sum()) / m.sum()
            loss.backward()
            for model, opt in ((policy, opt_p), (critic, opt_c)):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
    got = load_file(tmp_path / "it" / "final" / "model.safetensors")
    for name, p in policy.state_dict().items():
        if name in got:
            assert torch.allclose(got[name], p, atol=2e-6), name
    got_critic = critic_weights(tmp_path / "it")
    for name, p in critic.state_dict().items():
        key = name.removeprefix("trunk.")
        assert torch.allclose(got_critic[key], p, atol=2e-6), name
    logged = rows(tmp_path / "it")[1]
    assert logged["reward/total"] == pytest.approx(r.mean().item(), abs=1e-6)
    assert logged["train/optimizer_steps"] == 4 and logged["train/epochs_done"] == 2
    for key in ("train/policy_loss", "train/value_loss", "value/explained_variance", "train/kl", "train/beta",
                "train/clip_fraction", "train/entropy", "train/lr", "train/grad_norm",
                "completion/length", "time/generate", "time/update", "reward/accuracy", "reward/format"):
        assert key in logged, key


@pytest.mark.parametrize("overrides", [
    ["critic.shared_trunk=true"], ["loss.variant=kl_penalty"], ["loss.kl_stop=1e-9"], ["kl.beta=0"],
], ids=["shared_trunk", "kl_penalty", "kl_stop", "no_reference"])
def test_variants_train_and_log(tmp_path, overrides):
    s = ppo.run(cfg_for(tmp_path, "v", "train.steps=2", *overrides))
    assert s["steps"] == 2 and s["non_finite_steps"] == 0
    logged = rows(tmp_path / "v")[1:]
    assert all("train/value_loss" in x or x["train/early_stopped"] for x in logged)
    if "loss.kl_stop=1e-9" in overrides:  # every iteration stops at its second minibatch (the first has KL 0)
        assert all(x["train/early_stopped"] == 1 and x["train/optimizer_steps"] == 1 for x in logged)
    if "loss.variant=kl_penalty" in overrides:
        assert "train/kl_penalty/beta" in logged[0] and "train/clip_fraction" not in logged[0]
    if "kl.beta=0" in overrides:
        assert all(x["train/kl"] == 0 for x in logged)
    if "critic.shared_trunk=true" in overrides:
        assert (tmp_path / "v" / "critic" / "shared_value_head.safetensors").is_file()


def test_the_recipe_moves_beta_by_the_lecture_rule(tmp_path):
    ppo.run(cfg_for(tmp_path, "ctl", "train.steps=4", "kl.controller=ppo", "kl.target=0.002", "optim.lr=1e-3"))
    logged = rows(tmp_path / "ctl")[1:]
    ctl = AdaptiveKLController(0.02, 0.002)
    for now, after in zip(logged, logged[1:]):
        assert now["train/beta"] == pytest.approx(ctl.value)
        assert after["train/beta"] == pytest.approx(ctl.update(now["train/kl"]))
    assert len({x["train/beta"] for x in logged}) > 1  # it moved


def test_reward_model_as_the_reward_and_the_critic_init(tmp_path):
    from alignkit.config import ModelSection
    from alignkit.models.reward import build_reward_model

    rm, tok = build_reward_model(ModelSection(path="bundled"), seed=1)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    ppo.run(cfg_for(tmp_path, "rm-ppo", "train.steps=1", "reward.weights={}", f"reward.model={tmp_path / 'rm'}",
                    f"critic.path={tmp_path / 'rm'}"))
    logged = rows(tmp_path / "rm-ppo")[1]
    assert logged["reward/total"] == pytest.approx(logged["reward/model"]) and "reward/accuracy" not in logged


def test_resume_gives_the_same_run(tmp_path, monkeypatch):
    from tests.integration.test_sft import StopAfter

    ppo.run(cfg_for(tmp_path, "straight", "train.steps=4", "optim.lr=1e-3"))
    monkeypatch.setattr(ppo, "GracefulStop", StopAfter(2))
    assert ppo.run(cfg_for(tmp_path, "resumed", "train.steps=4", "optim.lr=1e-3"))["interrupted"]
    assert (tmp_path / "resumed" / "checkpoints" / "step-2" / "critic.safetensors").is_file()
    monkeypatch.setattr(ppo, "GracefulStop", StopAfter(10**9))
    ppo.run(cfg_for(tmp_path, "resumed", "train.steps=4", "optim.lr=1e-3", "output.resume=true"))
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "resumed")
    for key in ("train/loss", "train/value_loss", "train/kl", "reward/total"):
        assert [x.get(key) for x in a] == [x.get(key) for x in b], key
    wa, wb = (load_file(tmp_path / n / "final" / "model.safetensors") for n in ("straight", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ca, cb = critic_weights(tmp_path / "straight"), critic_weights(tmp_path / "resumed")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


# --------------------------------------------------------------------------------------------------------
# Learning (slow): numbers measured on 2 CPU cores, seed 0, are in the comments
# --------------------------------------------------------------------------------------------------------
def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.slow
def test_preset_reward_rises_while_kl_stays_under_its_target_band(tmp_path):
    """configs/ppo/arith_tiny.yaml, 25 iterations: accuracy + format reward, the lecture's KL controller."""
    cfg = load_config(PPOConfig, "configs/ppo/arith_tiny.yaml", [f"output.dir={tmp_path}", "output.name=preset",
                                                                  "train.steps=25", "train.eval_every=25",
                                                                  "data.n_eval=50", "output.tensorboard=false"])
    summary = ppo.run(cfg)
    logged = rows(tmp_path / "preset")[1:]
    reward = [x["reward/total"] for x in logged]
    kl = [x["train/kl"] for x in logged]
    # measured: first 5 iterations 0.39, last 5 1.00; max KL 0.198 (band top 1.5 x 0.15 = 0.225)
    assert mean(reward[-5:]) >= mean(reward[:5]) + 0.3
    assert max(kl) < 1.5 * cfg.kl.target
    # measured: held-out greedy R1-format share 0.0 -> 0.98
    assert summary["end"]["eval/format"] >= summary["start"]["eval/format"] + 0.5


@pytest.mark.slow
def test_reward_model_score_rises(tmp_path):
    """A reward model trained by `alignkit rm` (configs/rm/arith_tiny.yaml) is the only reward."""
    from alignkit.recipes import reward_model
    from alignkit.recipes.reward_model import RMConfig

    rm_summary = reward_model.run(load_config(RMConfig, "configs/rm/arith_tiny.yaml", [
        f"output.dir={tmp_path}", "output.name=rm", "output.tensorboard=false"]))
    assert rm_summary["end"]["eval/accuracy"] >= 0.9
    cfg = load_config(PPOConfig, "configs/ppo/arith_tiny.yaml", [
        f"output.dir={tmp_path}", "output.name=rm-ppo", "output.tensorboard=false", "train.steps=30",
        "optim.lr=2e-5", "train.eval_every=1000", "data.n_eval=2", "reward.weights={accuracy: 0.0}",
        f"reward.model={tmp_path / 'rm' / 'final'}"])
    ppo.run(cfg)
    logged = rows(tmp_path / "rm-ppo")[1:]
    score = [x["reward/model"] for x in logged]
    # measured (session 3, 2 CPU cores, seed 0): reward-model score first 5 iterations 0.38, last 5 1.43 (rm
    # held-out accuracy 0.95; per-iteration scores of 32 samples swing from -0.4 to 2.7); max KL 0.206; task
    # accuracy (weight 0, logged apart) 0.29 -> 0.20 and completions shorten 6.7 -> 4.3 tokens: the policy
    # climbs the reward model, not the task -- the gap the lecture calls reward hacking. (Session 1's setting,
    # 20 iterations at lr 3e-5, no longer passes after session 2's changes to reward-model training and the
    # optimizer: the score still rose, 0.42 -> 0.76, but the KL spiked to 0.43.)
    assert mean(score[-5:]) >= mean(score[:5]) + 0.5
    assert max(x["train/kl"] for x in logged) < 1.5 * cfg.kl.target
