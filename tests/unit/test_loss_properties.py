"""Properties and edge cases of the pure losses and advantages (hypothesis + hand-made cases)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.advantages import discounted_returns, gae, group_advantages, whiten, zero_variance_groups
from alignkit.losses import (
    AdaptiveKLController,
    aggregate_loss,
    dpo_loss,
    grpo_loss,
    kl_divergence,
    ppo_policy_loss,
    value_loss,
)

floats = st.floats(min_value=-5, max_value=5, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(2, 6), st.data())
def test_group_advantages_sum_to_zero_per_group(n_groups, g, data):
    r = torch.tensor(data.draw(st.lists(floats, min_size=n_groups * g, max_size=n_groups * g)), dtype=torch.float64)
    for ddof in (0, 1):
        a = group_advantages(r, g, std_ddof=ddof).view(n_groups, g)
        assert torch.all(a.sum(dim=1).abs() < 1e-6)
        assert torch.isfinite(a).all()


def test_group_advantages_all_equal_groups_are_exactly_zero():
    # 0.1 * 3 / 3 != 0.1 in floating point: a naive (r - mean) / (std + eps) gives ~1e-9/1e-8 = O(0.1)
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0])
    a = group_advantages(r, 3)
    assert a[:3].tolist() == [0.0, 0.0, 0.0]
    assert zero_variance_groups(r, 3).tolist() == [True, False]
    assert group_advantages(r, 3, scale=False)[:3].tolist() == [0.0, 0.0, 0.0]


def test_group_advantages_dr_grpo_and_errors():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert group_advantages(r, 4, scale=False).tolist() == [0.75, -0.25, -0.25, -0.25]
    with pytest.raises(ValueError, match="divisible by group_size=3"):
        group_advantages(r, 3)
    with pytest.raises(ValueError, match="std_ddof=1 needs group_size > 1"):
        group_advantages(r, 1, std_ddof=1)


def brute_force_gae(r, v, gamma, lam):
    n = len(r)
    deltas = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(0, 3), st.integers(0, 3), st.floats(0.5, 1.0), st.floats(0.0, 1.0), st.data())
def test_gae_equals_brute_force_sum_with_padding(n, left_pad, right_pad, gamma, lam, data):
    r = data.draw(st.lists(floats, min_size=n, max_size=n))
    v = data.draw(st.lists(floats, min_size=n, max_size=n))
    pad_r = [9.0] * left_pad + r + [9.0] * right_pad  # junk in padded slots must not leak in
    pad_v = [9.0] * left_pad + v + [9.0] * right_pad
    mask = [0] * left_pad + [1] * n + [0] * right_pad
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    adv, ret = gae(t(pad_r), t(pad_v), t(mask), gamma=gamma, lam=lam)
    expected = brute_force_gae(r, v, gamma, lam)
    assert adv[0, left_pad : left_pad + n].tolist() == pytest.approx(expected, abs=1e-6)
    assert ret[0, left_pad : left_pad + n].tolist() == pytest.approx([a + b for a, b in zip(expected, v)], abs=1e-6)
    assert adv[0, :left_pad].abs().sum() == 0 and adv[0, left_pad + n :].abs().sum() == 0


def test_discounted_returns_equal_gae_lambda_one_plus_values():
    r, v, m = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64), torch.ones(3, 6)
    m[1, 4:] = 0
    adv, _ = gae(r, v, m, gamma=0.9, lam=1.0)
    assert torch.allclose(discounted_returns(r, m, gamma=0.9), (adv + v) * m)


def test_whiten_has_zero_mean_unit_variance_on_masked_tokens():
    x, m = torch.randn(4, 7, dtype=torch.float64) * 3 + 2, torch.ones(4, 7)
    m[0, 5:] = 0
    w = whiten(x, m)
    sel = w[m.bool()]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert sel.var(correction=0).item() == pytest.approx(1.0, abs=1e-6)
    assert w[0, 5:].abs().sum() == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(floats, floats, floats, floats), min_size=1, max_size=6), st.floats(0.01, 1.0))
def test_dpo_gradient_equals_analytic_weighting(rows, beta):
    pw, pl, rw, rl = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    pw.requires_grad_(), pl.requires_grad_()
    losses, m = dpo_loss(pw, pl, rw, rl, beta=beta)
    cr, rr = m["rewards/chosen"], m["rewards/rejected"]
    losses.sum().backward()
    # dL/dlogpi_w = -beta * sigma(r_l - r_w) ; dL/dlogpi_l = +beta * sigma(r_l - r_w)
    weight = torch.sigmoid(rr - cr)
    assert torch.allclose(pw.grad, -beta * weight, atol=1e-9)
    assert torch.allclose(pl.grad, beta * weight, atol=1e-9)


def test_dpo_ipo_and_bad_arguments():
    z = torch.zeros(1, dtype=torch.float64)
    # IPO with h = 0: (0 - 1/(2*0.1))^2 = 25
    assert dpo_loss(z, z, z, z, beta=0.1, loss_type="ipo")[0].item() == pytest.approx(25.0)
    with pytest.raises(ValueError, match="unknown DPO loss_type 'hinge'"):
        dpo_loss(z, z, z, z, loss_type="hinge")


@settings(max_examples=40, deadline=None)
@given(st.lists(floats, min_size=1, max_size=20), st.lists(floats, min_size=1, max_size=20))
def test_k3_and_k2_are_non_negative(a, b):
    n = min(len(a), len(b))
    lp, ref = torch.tensor(a[:n]), torch.tensor(b[:n])
    assert (kl_divergence(lp, ref, estimator="k3") >= -1e-6).all()
    assert (kl_divergence(lp, ref, estimator="k2") >= 0).all()


def test_k3_and_k1_means_approach_the_exact_kl():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    exact = (p * (p.log() - q.log())).sum().item()  # KL(p || q)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, lq = p.log()[samples], q.log()[samples]
    for est in ("k1", "k3"):
        assert kl_divergence(lp, lq, estimator=est).mean().item() == pytest.approx(exact, rel=0.03), est
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_divergence(lp, lq, estimator="k4")


def test_ppo_clip_boundaries_symmetric_and_asymmetric():
    # ratios exactly at 0.8 and 1.2 are inside the band (not clipped); just outside are clipped
    ratios = torch.tensor([[0.8, 1.2, 0.79, 1.21, 1.27, 1.29]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, 1.0, -1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    m = torch.ones(1, 6)
    loss, met = ppo_policy_loss(ratios.log(), torch.zeros_like(ratios), adv, m)
    assert (-loss).tolist()[0] == pytest.approx([-0.8, 1.2, -0.8, 1.2, 1.2, 1.2])
    assert met["clip_fraction"].item() == pytest.approx(4 / 6)
    assert met["clip_low_fraction"].item() == pytest.approx(1 / 6)
    # clip-higher eps_high = 0.28: 1.21 and 1.27 pass unclipped, 1.29 clips to 1.28
    loss, met = ppo_policy_loss(ratios.log(), torch.zeros_like(ratios), adv, m, clip_eps_high=0.28)
    assert (-loss).tolist()[0] == pytest.approx([-0.8, 1.2, -0.8, 1.21, 1.27, 1.28])
    assert met["clip_high_fraction"].item() == pytest.approx(1 / 6)


def test_value_loss_clipping():
    v, old, ret, m = torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]), torch.ones(1, 1)
    # unclipped (2-1)^2 = 1 ; clipped: V_clip = 1 + clip(1, -0.2, 0.2) = 1.2 -> (1.2-1)^2 = 0.04 ; max = 1
    assert value_loss(v, ret, m, old_values=old, clip_range=0.2)[0].item() == pytest.approx(1.0)
    # V = 0.5 below target 1.0, old 1.0: unclipped 0.25 ; V_clip = 0.8 -> 0.04 ; max = 0.25
    assert value_loss(torch.tensor([[0.5]]), ret, m, old_values=old, clip_range=0.2)[0].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="needs old_values"):
        value_loss(v, ret, m, clip_range=0.2)


def test_grpo_loss_beta_zero_needs_no_reference_and_fully_masked_rows_count_for_nothing():
    lp = torch.randn(3, 4)
    adv = torch.tensor([1.0, -1.0, 5.0])
    mask = torch.ones(3, 4)
    mask[2] = 0  # a sample left out of the loss (e.g. its verifier failed)
    loss, met = grpo_loss(lp, lp.detach(), None, adv, mask, beta=0.0)
    # ratio 1 -> per-token loss = -A; row means -1, +1; the masked row is not counted: (−1 + 1) / 2 = 0
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert "kl" not in met
    with pytest.raises(ValueError, match="beta != 0 needs ref_logprobs"):
        grpo_loss(lp, lp.detach(), None, adv, mask, beta=0.04)
    loss_kl, met = grpo_loss(lp, lp.detach(), lp.detach() - 0.1, adv, mask, beta=0.04)
    # k3 with log ratio 0.1: exp(-0.1) - 1 + 0.1 = 0.0048374 per token
    assert met["kl"].item() == pytest.approx(math.exp(-0.1) - 1 + 0.1, abs=1e-6)
    assert loss_kl.item() == pytest.approx(0.04 * (math.exp(-0.1) - 0.9), abs=1e-6)


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # seq_mean_token_mean: ((1+2+3)/3 + 4/1) / 2 = (2 + 4) / 2 = 3
    assert aggregate_loss(loss, mask, mode="seq_mean_token_mean").item() == pytest.approx(3.0)
    # token_mean: (1+2+3+4) / 4 = 2.5
    assert aggregate_loss(loss, mask, mode="token_mean").item() == pytest.approx(2.5)
    # Dr. GRPO: (6 + 4) / (L=3 * 2) = 1.6667 ; with max_tokens 10: 10 / 20 = 0.5
    assert aggregate_loss(loss, mask, mode="seq_mean_token_sum_norm").item() == pytest.approx(10 / 6)
    assert aggregate_loss(loss, mask, mode="seq_mean_token_sum_norm", max_tokens=10).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        aggregate_loss(loss, mask, mode="mean")
    # fully masked batch: 0, not NaN
    assert aggregate_loss(loss, torch.zeros_like(mask)).item() == 0.0


def test_adaptive_kl_proportional_rule():
    c = AdaptiveKLController(0.1, 0.05, rule="proportional", horizon=100)
    # KL = 0.1 -> e = clip(0.1/0.05 - 1, -0.2, 0.2) = 0.2 ; beta = 0.1 * (1 + 0.2 * 10/100) = 0.102
    assert c.update(0.1, n_steps=10) == pytest.approx(0.102)
    # KL = 0.05 -> e = 0 -> unchanged
    assert c.update(0.05, n_steps=10) == pytest.approx(0.102)
    with pytest.raises(ValueError, match="unknown KL controller rule"):
        AdaptiveKLController(0.1, 0.05, rule="pid")


def test_adaptive_kl_scripted_sequence():
    c = AdaptiveKLController(0.02, 0.01)
    # 0.02 -> x2 (0.02 > 0.015) -> 0.04 ; 0.012 in band -> 0.04 ; 0.001 < 0.00667 -> 0.02 ; 0.5 -> 0.04
    assert [c.update(k) for k in (0.02, 0.012, 0.001, 0.5)] == pytest.approx([0.04, 0.04, 0.02, 0.04])


def test_group_advantages_ragged_groups_equal_fixed_groups_one_by_one():
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 5.0, 1.0, 3.0, 3.0], dtype=torch.float64)
    sizes = [3, 2, 4]
    got = group_advantages(r, sizes)
    want = torch.cat([group_advantages(part, len(part)) for part in torch.split(r, sizes)])
    assert torch.allclose(got, want)
    assert zero_variance_groups(r, sizes).tolist() == [False, True, False]
    with pytest.raises(ValueError, match=r"group sizes \[3, 3\] do not add up to the 9 rewards"):
        group_advantages(r, [3, 3])


def test_group_advantages_leave_invalid_rows_out_of_the_statistics():
    # group [1, 0, <failed>, 0]: stats over the 3 valid rows: mean 1/3, std 0.4714 -> [1.4142, -0.7071, 0, -0.7071]
    r = torch.tensor([1.0, 0.0, 123.0, 0.0], dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    got = group_advantages(r, 4, valid=valid)
    assert got.tolist() == pytest.approx([1.414214, -0.707107, 0.0, -0.707107], abs=1e-6)
    # a group left with a single valid row has nothing to compare against: 0
    assert group_advantages(r[:2], 2, valid=torch.tensor([True, False])).tolist() == [0.0, 0.0]
