"""GRPO's variants (issue 20): each option takes effect in a 2-step run on the bundled model (DAPO dynamic
sampling, overlong mask, soft overlong penalty, the GSPO clip warning), and a short seeded learning check per
method (RLOO, REINFORCE++, GSPO, CISPO, dynamic sampling): the sampled reward of the last steps beats the
first steps'. The tiny model gains nothing from intra-op threads; the module runs torch with one thread."""

import functools
import logging

import pytest
import torch

from alignkit.config import ConfigError, load_config
from alignkit.recipes import grpo
from alignkit.recipes.grpo import GRPOConfig
from tests.helpers import final_weights, rows, series

SMALL = ["rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=16", "data.n_train=64",
         "data.n_eval=4", "train.eval_every=1000", "output.tensorboard=false", "optim.lr=1e-3", "loss.beta=0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(tmp_path, name, *overrides, base=SMALL):
    return load_config(GRPOConfig, None, base + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def test_dynamic_sampling_fills_the_batch_with_informative_groups(tmp_path, monkeypatch):
    losses = []
    real = grpo.grpo_loss

    def spy(lp, old, ref, adv, mask, **kw):
        losses.append(adv.clone())
        return real(lp, old, ref, adv, mask, **kw)

    monkeypatch.setattr(grpo, "grpo_loss", spy)
    grpo.run(cfg_for(tmp_path, "ds", "train.steps=2", "rollout.dynamic_sampling=true", "rollout.max_extra_draws=5",
                     "loss.skip_zero_advantage_rows=false"))  # the loss sees whole groups
    logged = rows(tmp_path / "ds")[1:]
    for row in logged:
        assert row["dynamic_sampling/draws"] >= 1
        assert row["dynamic_sampling/groups_kept"] <= 4
        assert 0 < row["dynamic_sampling/kept_share"] <= 1
        if row["dynamic_sampling/filled"]:
            assert row["dynamic_sampling/groups_kept"] == 4
        assert row["groups/zero_variance"] == 0  # only groups whose rewards differ reach the loss
    for adv in losses:
        assert (adv.view(-1, 4).abs().sum(1) > 0).all()


def test_dynamic_sampling_warns_when_no_group_is_informative(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="alignkit.grpo")
    grpo.run(cfg_for(tmp_path, "flat", "train.steps=2", "rollout.dynamic_sampling=true", "rollout.max_extra_draws=1"),
             reward_funcs={"constant": lambda completion, **kw: 1.0})
    row = rows(tmp_path / "flat")[-1]
    assert row["dynamic_sampling/draws"] == 2 and row["dynamic_sampling/filled"] == 0
    assert row["dynamic_sampling/groups_kept"] == 0
    assert "dynamic sampling kept 0 of 4 groups" in caplog.text


def test_overlong_mask_leaves_truncated_completions_out_of_the_loss(tmp_path, monkeypatch):
    seen = {}
    real_merge, real_loss = grpo.merge_rollouts, grpo.grpo_loss

    def merge(parts, pad_id):
        seen["batch"] = real_merge(parts, pad_id)
        return seen["batch"]

    def loss(lp, old, ref, adv, mask, **kw):
        seen["mask"] = mask.clone()
        return real_loss(lp, old, ref, adv, mask, **kw)

    monkeypatch.setattr(grpo, "merge_rollouts", merge)
    monkeypatch.setattr(grpo, "grpo_loss", loss)
    # 6 new tokens: some completions end, many are cut (the R1 trace is longer)
    grpo.run(cfg_for(tmp_path, "mask", "train.steps=1", "rollout.max_new_tokens=6", "rollout.overlong_mask=true",
                     "loss.skip_zero_advantage_rows=false"))  # the loss sees every row
    cut = torch.tensor([f == "length" for f in seen["batch"].finish_reasons])
    assert cut.any()
    assert (seen["mask"][cut].sum(-1) == 0).all()
    assert (seen["mask"][~cut].sum(-1) > 0).all()
    assert rows(tmp_path / "mask")[1]["samples/overlong_masked"] == int(cut.sum())


def test_overlong_penalty_is_a_reward_component_counted_in_tokens(tmp_path, monkeypatch):
    seen = {}
    real_merge = grpo.merge_rollouts

    def merge(parts, pad_id):
        seen["batch"] = real_merge(parts, pad_id)
        return seen["batch"]

    monkeypatch.setattr(grpo, "merge_rollouts", merge)
    grpo.run(cfg_for(tmp_path, "pen", "train.steps=1", "rollout.max_new_tokens=8", "reward.overlong_penalty=0.5",
                     "reward.overlong_cache_tokens=4"))
    lengths = seen["batch"].response_mask.sum(-1).float()
    by_hand = 0.5 * torch.where(lengths <= 4, torch.zeros_like(lengths), (4 - lengths) / 4)
    row = rows(tmp_path / "pen")[1]
    assert row["reward/overlong"] == pytest.approx(float(by_hand.mean()), abs=1e-6)
    assert row["reward/overlong"] < 0
    assert row["reward/total"] == pytest.approx(row["reward/accuracy"] + row["reward/format"] + row["reward/overlong"],
                                                abs=1e-6)


def test_overlong_penalty_needs_a_window(tmp_path):
    with pytest.raises(ConfigError, match="overlong_cache_tokens"):
        cfg_for(tmp_path, "bad", "reward.overlong_penalty=1.0")
    with pytest.raises(ConfigError, match="overlong_cache_tokens"):
        cfg_for(tmp_path, "bad", "reward.overlong_penalty=1.0", "reward.overlong_cache_tokens=17")


def test_gspo_with_a_token_sized_clip_range_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="alignkit.grpo")
    grpo.run(cfg_for(tmp_path, "wide", "train.steps=1", "loss.policy_loss=gspo"))
    assert "loss.policy_loss=gspo" in caplog.text and "clip_eps=0.2" in caplog.text
    caplog.clear()
    grpo.run(cfg_for(tmp_path, "tiny", "train.steps=1", "loss.policy_loss=gspo", "loss.clip_eps=3e-4",
                     "loss.clip_eps_high=4e-4", "loss.mu=2"))
    assert "loss.policy_loss=gspo" not in caplog.text
    assert "train/clip_fraction" in rows(tmp_path / "tiny")[1]


def test_kl_in_reward_needs_reinforce_pp(tmp_path):
    with pytest.raises(ConfigError, match="loss.kl_in_reward.*loss.advantages=reinforce_pp"):
        cfg_for(tmp_path, "bad", "loss.kl_in_reward=true")
    with pytest.raises(ConfigError, match="loss.advantages=rloo"):
        cfg_for(tmp_path, "bad", "loss.kl_in_reward=true", "loss.advantages=rloo")


def test_kl_in_reward_gives_token_advantages_and_no_kl_term(tmp_path, monkeypatch):
    calls = []
    real = grpo.grpo_loss

    def spy(lp, old, ref, adv, mask, **kw):
        calls.append((ref, adv.clone(), mask.clone(), kw["beta"], kw["policy_loss"]))
        return real(lp, old, ref, adv, mask, **kw)

    monkeypatch.setattr(grpo, "grpo_loss", spy)
    for policy in ("clip", "gspo"):  # gspo: GSPO-token (the sequence ratio's value, a token advantage)
        grpo.run(cfg_for(tmp_path, policy, "train.steps=2", "loss.advantages=reinforce_pp", "loss.kl_in_reward=true",
                         "loss.beta=0.1", "loss.kl_estimator=k1", "loss.mu=2", f"loss.policy_loss={policy}",
                         "loss.clip_eps=3e-4" if policy == "gspo" else "loss.clip_eps=0.2"))
        logged = rows(tmp_path / policy)[1:]
        assert logged[0]["train/kl"] == 0.0  # step 1: the policy is still the reference
        assert logged[1]["train/kl"] != 0.0 and all(r["train/beta"] == 0.1 for r in logged)
    for ref, adv, mask, beta, _ in calls:
        assert ref is None and beta == 0.0  # the KL is in the advantages, not the loss
        assert adv.shape == mask.shape  # [rows, completion tokens]
        assert (adv[mask == 0] == 0).all()
    # the steps after the first: rows of one group with equal rewards still differ per token (the KL's share)
    assert any(len({round(v, 6) for v in a[m.bool()].tolist()}) > 4 for _, a, m, _, _ in calls)


def test_kl_in_reward_with_beta_0_is_the_sequence_level_update(tmp_path, monkeypatch):
    # beta = 0: the token returns are x on every token, and the token whitening has the sequence-level
    # REINFORCE++ statistics when all completions have one length: EOS is ignored here so every row runs to
    # max_new_tokens (with ragged lengths the paper's token whitening weighs long rows more; unit tests).
    # Equal up to float32 rounding (whiten's (x - mean) / sqrt(var + eps) vs x / (std + eps)); Adam divides
    # each gradient entry by its own RMS, so a near-zero entry's rounding shows in the weights at ~1e-5.
    import alignkit.rollout

    seen, advs = [], {}
    real_generate, real_merge, real_loss = alignkit.rollout.generate, grpo.merge_rollouts, grpo.grpo_loss

    def merge(parts, pad_id):
        seen.append(real_merge(parts, pad_id))
        return seen[-1]

    def loss(lp, old, ref, adv, mask, **kw):
        advs.setdefault(name, []).append((adv[:, None] if adv.dim() == 1 else adv).expand_as(lp) * mask)
        return real_loss(lp, old, ref, adv, mask, **kw)

    monkeypatch.setattr(alignkit.rollout, "generate", functools.partial(real_generate, ignore_eos=True))
    monkeypatch.setattr(grpo, "merge_rollouts", merge)
    monkeypatch.setattr(grpo, "grpo_loss", loss)
    same = ["train.steps=1", "loss.mu=2", "rollout.max_new_tokens=8", "loss.advantages=reinforce_pp", "loss.beta=0",
            "loss.skip_zero_advantage_rows=false"]  # the loss sees every row, as with kl_in_reward
    for name, extra in (("seq", []), ("tok", ["loss.kl_in_reward=true"])):
        grpo.run(cfg_for(tmp_path, name, *same, *extra))
    assert all((b.response_mask.sum(-1) == 8).all() for b in seen)
    assert len(advs["seq"]) == len(advs["tok"]) == 2  # mu = 2 iterations, one micro-batch each
    for x, y in zip(advs["seq"], advs["tok"]):
        assert x.abs().max() > 0.5  # a learning signal, not two empty updates
        assert torch.allclose(x, y, atol=1e-6, rtol=0), (x - y).abs().max()
    seq, tok = rows(tmp_path / "seq")[1], rows(tmp_path / "tok")[1]
    assert seq["reward/total"] == tok["reward/total"]
    assert seq["train/loss"] == pytest.approx(tok["train/loss"], abs=1e-6)
    assert seq["train/grad_norm"] == pytest.approx(tok["train/grad_norm"], rel=1e-5)
    a, b = final_weights(tmp_path / "seq"), final_weights(tmp_path / "tok")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())


# --------------------------------------------------------------------------------------------------------
# Learning checks: 25 seeded steps on level-1 arithmetic (accuracy + format rewards), ~10-20 s each here.
# GSPO and CISPO take mu=2 so their ratios (and clipping) act; with mu=1 every policy loss is the same step.
# --------------------------------------------------------------------------------------------------------
LEARN = ["rollout.prompts_per_step=8", "rollout.group_size=8", "rollout.max_new_tokens=24", "data.n_train=400",
         "data.n_eval=4", "data.levels=[1]", "train.eval_every=1000", "output.tensorboard=false", "optim.lr=1e-3",
         "loss.beta=0", "train.steps=25"]


@pytest.mark.parametrize("name, options", [
    ("rloo", ["loss.advantages=rloo"]),
    ("reinforce_pp", ["loss.advantages=reinforce_pp"]),
    ("reinforce_pp_kl_in_reward", ["loss.advantages=reinforce_pp", "loss.kl_in_reward=true", "loss.beta=0.04",
                                   "loss.kl_estimator=k1"]),
    ("gspo", ["loss.policy_loss=gspo", "loss.mu=2", "loss.clip_eps=3e-4", "loss.clip_eps_high=4e-4"]),
    ("cispo", ["loss.policy_loss=cispo", "loss.mu=2", "optim.lr=5e-4"]),
    ("dynamic_sampling", ["rollout.dynamic_sampling=true", "rollout.max_extra_draws=2"]),
])
def test_variant_learns(tmp_path, name, options):
    grpo.run(cfg_for(tmp_path, name, *options, base=LEARN))
    reward = series(tmp_path / name, "reward/total")
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    print(f"\n{name}: reward/total first 5 steps {first:.3f} -> last 5 {last:.3f}")
    assert last >= first + 0.3
