"""PPO pieces: advantages inside the recipe vs the pure functions (hand-made padded batch), the adaptive KL
controller over a scripted KL sequence, the critic's layout / save / load, warnings, checkpointed modules."""

import pytest
import torch

from alignkit.advantages import gae, whiten
from alignkit.losses import AdaptiveKLController, kl_divergence
from alignkit.models import BUNDLED_DIR, load_causal_lm
from alignkit.models.value import SharedValueHead, ValueModel
from alignkit.recipes.ppo import (
    MonitorSection,
    PPOBatch,
    compute_advantages,
    explained_variance,
    health_warnings,
    minibatch_order,
)


def padded_batch():
    """3 rows, C = 5: lengths 5 (truncated), 3 (EOS at t=2), 0 (a failed sample: mask all 0)."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    b = PPOBatch(prompt_ids=torch.zeros(3, 2, dtype=torch.long), prompt_mask=torch.ones(3, 2, dtype=torch.long),
                 completion_ids=torch.zeros(3, 5, dtype=torch.long), response_mask=mask,
                 rewards=torch.tensor([1.0, -0.5, 0.0]))
    b.old_logprobs = -torch.rand(3, 5) * mask
    b.ref_logprobs = -torch.rand(3, 5) * mask
    b.values = torch.randn(3, 5) * mask
    return b


def test_advantages_in_the_recipe_equal_the_pure_functions_on_a_padded_batch():
    b = compute_advantages(padded_batch(), beta=0.1, estimator="k1", gamma=0.9, lam=0.8, whiten_advantages=True)
    ref = padded_batch()
    # by hand: r_t = -beta (logprob - ref_logprob) on response tokens, + the reward at the last response token
    token_rewards = -0.1 * (ref.old_logprobs - ref.ref_logprobs) * ref.response_mask
    token_rewards[0, 4] += 1.0   # row 0 truncated: last token
    token_rewards[1, 2] += -0.5  # row 1: its EOS at t = 2; padding after it gets nothing
    assert torch.allclose(b.token_rewards, token_rewards, atol=1e-7)
    adv, ret = gae(token_rewards, ref.values, ref.response_mask, gamma=0.9, lam=0.8)
    assert torch.allclose(b.returns, ret, atol=1e-6)
    assert torch.allclose(b.advantages, whiten(adv, ref.response_mask), atol=1e-6)
    # and GAE itself on row 1, written out: delta_t = r_t + gamma V_{t+1} - V_t, V after the EOS = 0
    r, v = token_rewards[1, :3], ref.values[1, :3]
    d = [r[0] + 0.9 * v[1] - v[0], r[1] + 0.9 * v[2] - v[1], r[2] - v[2]]
    a2 = d[2]
    a1 = d[1] + 0.9 * 0.8 * a2
    a0 = d[0] + 0.9 * 0.8 * a1
    assert torch.allclose(ret[1, :3], torch.stack([a0, a1, a2]) + v, atol=1e-6)
    assert (b.advantages[2] == 0).all() and (b.returns[2] == 0).all() and (b.advantages[1, 3:] == 0).all()


def test_advantages_unwhitened_and_other_estimators():
    b = compute_advantages(padded_batch(), beta=0.2, estimator="k3", gamma=1.0, lam=1.0, whiten_advantages=False)
    ref = padded_batch()
    kl = kl_divergence(ref.old_logprobs, ref.ref_logprobs, estimator="k3") * ref.response_mask
    assert torch.allclose(b.kl, kl)
    # gamma = lam = 1: A_0 + V_0 = the undiscounted sum of the row's token rewards
    assert b.returns[0, 0] == pytest.approx(float(b.token_rewards[0].sum()), abs=1e-6)
    assert b.advantages[0, 0] == pytest.approx(float(b.token_rewards[0].sum() - ref.values[0, 0]), abs=1e-6)


def test_no_reference_means_no_penalty():
    b = padded_batch()
    b.ref_logprobs = None
    compute_advantages(b, beta=0.1, estimator="k1", gamma=1.0, lam=1.0, whiten_advantages=False)
    assert b.token_rewards.sum() == pytest.approx(0.5)


def test_adaptive_controller_follows_the_lecture_rule_over_a_scripted_kl_sequence():
    # target 0.01: double above 1.5 * 0.01 = 0.015, halve below 0.01 / 1.5 = 0.00667, strict inequalities
    ctl = AdaptiveKLController(0.02, 0.01, rule="ppo")
    script = [(0.016, 0.04), (0.015, 0.04), (0.030, 0.08), (0.010, 0.08), (0.0066, 0.04), (0.00667, 0.04),
              (0.0, 0.02), (0.5, 0.04)]
    for kl, beta in script:
        assert ctl.update(kl) == pytest.approx(beta), kl
    prop = AdaptiveKLController(0.02, 0.01, rule="proportional", horizon=100)
    assert prop.update(0.02, n_steps=10) == pytest.approx(0.02 * (1 + 0.2 * 10 / 100))  # error clipped to +0.2
    assert prop.update(0.009, n_steps=10) == pytest.approx(0.02 * 1.02 * (1 - 0.1 * 10 / 100))


def test_minibatch_order_is_a_seeded_permutation():
    a = minibatch_order(10, seed=0, step=3, epoch=1)
    assert sorted(a) == list(range(10)) and a == minibatch_order(10, seed=0, step=3, epoch=1)
    assert a != minibatch_order(10, seed=0, step=3, epoch=2)


def test_explained_variance():
    mask = torch.tensor([[1, 1, 1, 0]])
    ret = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 3.0), ret, mask) == pytest.approx(0.0, abs=1e-6)


def test_warnings_kl_alarm_and_reward_rising_while_entropy_collapses():
    cfg = MonitorSection(kl_alarm=0.05, hacking_window=3, entropy_drop=0.5)
    assert health_warnings({"train/kl": 0.04, "train/entropy": 1.0, "reward/total": 1.0}, cfg, []) == []
    assert "alarm" in health_warnings({"train/kl": 0.06}, cfg, [])[0]
    history = [[0.2, 1.0], [0.3, 0.9], [0.4, 0.8]]
    hacking = health_warnings({"reward/total": 0.9, "train/entropy": 0.3}, cfg, history)
    assert len(hacking) == 1 and "reward hacking" in hacking[0]
    assert health_warnings({"reward/total": 0.9, "train/entropy": 0.6}, cfg, history) == []  # entropy held up
    assert health_warnings({"reward/total": 0.1, "train/entropy": 0.3}, cfg, history) == []  # reward did not rise


# --------------------------------------------------------------------------------------------------------
# The critic
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    return load_causal_lm(BUNDLED_DIR)


def test_value_model_layout_and_padding_invariance(base):
    critic = ValueModel.from_causal_lm(base, seed=1).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        v = critic(ids, torch.ones_like(ids))
        hidden = base.model(input_ids=ids).last_hidden_state  # the copied trunk equals the policy's
        head = critic.head(hidden)[0, :, 0]
        left = critic(torch.tensor([[0, 0, 5, 6, 7, 8]]), torch.tensor([[0, 0, 1, 1, 1, 1]]))
        right = critic(torch.tensor([[5, 6, 7, 8, 0]]), torch.tensor([[1, 1, 1, 1, 0]]))
    # values[t] = head(h_{t-1}): the value of the state token t is drawn from; column 0 = 0
    assert v[0, 0] == 0 and torch.allclose(v[0, 1:], head[:-1], atol=1e-5)
    assert torch.allclose(left[:, 2:], v, atol=1e-5) and torch.allclose(right[:, :4], v, atol=1e-5)
    assert left[0, :2].abs().sum() == 0 and right[0, 4] == 0
    assert not any(p is q for p in critic.parameters() for q in base.parameters())  # its own trunk


def test_value_model_save_load_roundtrip(base, tmp_path):
    critic = ValueModel.from_causal_lm(base, seed=2)
    with torch.no_grad():
        critic.head.bias.fill_(0.25)
    critic.save_pretrained(tmp_path / "critic")
    again = ValueModel.from_pretrained(tmp_path / "critic")
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(critic(ids, torch.ones_like(ids)), again(ids, torch.ones_like(ids)), atol=1e-6)


def test_value_model_from_a_reward_model_takes_its_score_head(tmp_path):
    from alignkit.config import ModelSection
    from alignkit.models.reward import build_reward_model

    rm, tok = build_reward_model(ModelSection(path="bundled"), seed=3)
    rm.save_pretrained(tmp_path / "rm")
    critic = ValueModel.from_pretrained(tmp_path / "rm")
    assert torch.equal(critic.head.weight, rm.score.weight) and critic.head.bias.item() == 0
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # the last position's value = the reward model's score of the prefix before it
        v = critic(ids, torch.ones_like(ids))
        s = rm(input_ids=ids[:, :3]).logits[0, 0]
    assert v[0, 3] == pytest.approx(float(s), abs=1e-5)


def test_shared_head_reads_the_policy_hidden_state(base):
    from alignkit.logprobs import sequence_logprobs

    head = SharedValueHead.for_policy(base, seed=4)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with head.capture(base):
            sequence_logprobs(base, ids, torch.ones_like(ids))
        v = head.values(torch.ones_like(ids))
        expected = head.head(base.model(input_ids=ids).last_hidden_state)[0, :-1, 0]
    assert torch.allclose(v[0, 1:], expected, atol=1e-5) and v[0, 0] == 0
    with pytest.raises(RuntimeError, match="no hidden state"):
        head.values(torch.ones_like(ids))


def test_checkpoint_saves_and_restores_extra_modules(base, tmp_path):
    from alignkit.infra.checkpoint import load_checkpoint, save_checkpoint

    critic = ValueModel.from_causal_lm(base, seed=5)
    path = save_checkpoint(tmp_path, 1, model=base, modules={"critic": critic})
    assert (path / "critic.safetensors").is_file()
    other = ValueModel.from_causal_lm(base, seed=6)
    assert not torch.equal(other.head.weight, critic.head.weight)
    load_checkpoint(path, model=base, modules={"critic": other})
    assert all(torch.equal(a, b) for a, b in zip(critic.state_dict().values(), other.state_dict().values()))


def test_packed_forwards_equal_padded_ones(base):
    """Packing (no padding, no cross-sequence attention) changes no number: logprobs, entropies, values."""
    from alignkit.recipes.ppo import critic_values, policy_forward

    torch.manual_seed(0)
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    b = PPOBatch(prompt_ids=torch.randint(3, 200, (3, 4)) * prompt_mask, prompt_mask=prompt_mask,
                 completion_ids=torch.randint(3, 200, (3, 3)) * response_mask, response_mask=response_mask,
                 rewards=torch.zeros(3))
    critic, head = ValueModel.from_causal_lm(base, seed=7), SharedValueHead.for_policy(base, seed=8)
    with torch.no_grad():
        for rows in (slice(0, 3), [2, 0]):
            a = policy_forward(base, b, rows, temperature=0.7, entropy=True, head=head, packing=True)
            p = policy_forward(base, b, rows, temperature=0.7, entropy=True, head=head, packing=False)
            for x, y in zip(a, p):
                assert torch.allclose(x, y, atol=1e-5)
            assert torch.allclose(critic_values(critic, b, rows, packing=True),
                                  critic_values(critic, b, rows, packing=False), atol=1e-5)
    ids, attn, pos, index = b.packed(slice(0, 3))
    assert ids.shape[1] == 7 and int(attn.sum()) == 3 + 2 + 4 + 3 + 2 + 1  # every real token, no padding rows


def test_the_defaults_are_the_real_model_safe_ones(base):
    """A new value head starts at zero (values 0, so the first advantages are the rewards'), the critic learns at
    the policy's LR, no entropy bonus, and the trust region is on: with the lecture's c2 = 0.01, a random head
    and a critic at 1e-3, PPO at lr 1e-5 drove SmolLM2-135M off its answers (docs/benchmarks.md)."""
    from alignkit.recipes.ppo import PPOConfig, build_critic

    cfg = PPOConfig()
    assert cfg.loss.ent_coef == 0.0 and cfg.loss.kl_stop == 0.02 and cfg.critic.lr is None
    critic, head = build_critic(cfg, base)
    assert head is None and critic.head.weight.abs().sum() == 0 and critic.head.bias.item() == 0
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert critic(ids, torch.ones_like(ids)).abs().sum() == 0
    shared = build_critic(cfg.model_copy(update={"critic": cfg.critic.model_copy(update={"shared_trunk": True})}),
                          base)[1]
    assert shared.head.weight.abs().sum() == 0
    random = build_critic(cfg.model_copy(update={"critic": cfg.critic.model_copy(update={"head_init_std": 0.02})}),
                          base)[0]
    assert 0.01 < float(random.head.weight.std()) < 0.03
