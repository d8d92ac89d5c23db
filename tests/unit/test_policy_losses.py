"""POLICY_LOSSES (clip, GSPO, CISPO) at hand-computed values, and their common on-policy gradient."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.losses import AGGREGATIONS, aggregate_loss, grpo_loss, policy_gradient_loss, ppo_policy_loss
from alignkit.losses.grpo import POLICY_LOSSES, cispo_policy_loss, gspo_policy_loss

f64 = torch.float64


def gspo_batch():
    # row 0: log-ratios [0.1, 0.2, 0.3] -> mean 0.2 -> s0 = exp(0.2) = 1.221403
    # row 1: log-ratios [-0.3, -0.1, (masked junk 5.0)] -> mean -0.2 -> s1 = exp(-0.2) = 0.818731
    old = torch.tensor([[-1.0, -2.0, -1.5], [-0.5, -1.0, -3.0]], dtype=f64)
    diff = torch.tensor([[0.1, 0.2, 0.3], [-0.3, -0.1, 5.0]], dtype=f64)
    lp = (old + diff).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return lp, old, torch.tensor([1.0, -1.0], dtype=f64), mask


def test_table_names():
    assert list(POLICY_LOSSES) == ["clip", "gspo", "cispo"]
    assert POLICY_LOSSES["clip"] is ppo_policy_loss


def test_gspo_sequence_ratio_clips_whole_sequences():
    lp, old, adv, mask = gspo_batch()
    loss, met = gspo_policy_loss(lp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.2)
    # row 0: A = +1, s0 = 1.2214 > 1.2 -> clipped branch: every token -min(1.2214, 1.2) = -1.2
    # row 1: A = -1, s1 = 0.8187 in [0.8, 1.2] -> unclipped: -(-0.818731) = 0.818731 ; masked token 0
    assert loss.tolist() == [pytest.approx([-1.2] * 3), pytest.approx([math.exp(-0.2)] * 2 + [0.0])]
    # 3 of the 5 response tokens sit in the clipped sequence
    assert met["clip_fraction"].item() == pytest.approx(0.6)
    assert met["clip_high_fraction"].item() == pytest.approx(0.6)
    assert met["ratio_mean"].item() == pytest.approx((math.exp(0.2) + math.exp(-0.2)) / 2)
    # seq_mean_token_mean: (-1.2 + 0.818731) / 2 = -0.190635 ; gradient: row 0 clipped -> 0 ;
    # row 1: d(s1 * 1)/d lp_t = s1 = 0.818731, times 1/|o_1| = 1/2 and 1/N = 1/2 -> 0.204683 on t = 0, 1
    total = aggregate_loss(loss, mask)
    assert total.item() == pytest.approx((-1.2 + math.exp(-0.2)) / 2)
    total.backward()
    g = math.exp(-0.2) / 4
    assert lp.grad.tolist() == [pytest.approx([0.0] * 3), pytest.approx([g, g, 0.0])]


def test_gspo_paper_clip_range_and_the_lectures_unnormalized_ratio():
    lp, old, adv, mask = gspo_batch()
    # defaults eps_low 3e-4, eps_high 4e-4: row 0 -> clip 1.0004 ; row 1 (A < 0, s1 < 0.9997) -> clipped
    #   -min(-0.818731, -0.9997) = 0.9997 ; both sequences clipped: 5 of 5 tokens
    loss, met = gspo_policy_loss(lp, old, adv, mask)
    assert loss[0].tolist() == pytest.approx([-1.0004] * 3)
    assert loss[1, :2].tolist() == pytest.approx([0.9997] * 2)
    assert met["clip_fraction"].item() == 1.0 and met["clip_low_fraction"].item() == pytest.approx(0.4)
    # length_normalize=False: s = pi(o)/pi_old(o) = exp(0.6) = 1.8221 and exp(-0.4) = 0.6703;
    # eps 0.2: row 0 -> -1.2 ; row 1 (A = -1, s < 0.8) -> -min(-0.6703, -0.8) = 0.8
    loss, _ = gspo_policy_loss(lp, old, adv, mask, clip_eps=0.2, clip_eps_high=None, length_normalize=False)
    assert loss.tolist() == [pytest.approx([-1.2] * 3), pytest.approx([0.8, 0.8, 0.0])]


def test_cispo_caps_the_weight_but_keeps_every_gradient():
    # ratios [1.5, 0.5, 1.0], A = 2, eps 0.2 -> weights sg(clip) = [1.2, 0.8, 1.0]
    lp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=f64, requires_grad=True)
    old = lp.detach() - torch.tensor([[math.log(1.5), math.log(0.5), 0.0]], dtype=f64)
    adv, mask = torch.tensor([2.0], dtype=f64), torch.ones(1, 3)
    loss, met = cispo_policy_loss(lp, old, adv, mask)
    # loss_t = -w A lp = -[1.2*2*(-1), 0.8*2*(-2), 1.0*2*(-0.5)] = [2.4, 3.2, 1.0]
    assert loss.tolist()[0] == pytest.approx([2.4, 3.2, 1.0])
    loss.sum().backward()
    # gradient -w A = [-2.4, -1.6, -2.0]: the ratio-1.5 token keeps its gradient (the clipped surrogate's is 0)
    assert lp.grad.tolist()[0] == pytest.approx([-2.4, -1.6, -2.0])
    assert met["clip_fraction"].item() == pytest.approx(2 / 3)
    assert met["clip_low_fraction"].item() == pytest.approx(1 / 3)
    # MiniMax-M1's form: no lower bound (clip_eps >= 1), upper 1 + 0.2 -> weights [1.2, 0.5, 1.0]
    loss, _ = cispo_policy_loss(lp, old, adv, mask, clip_eps=1.0, clip_eps_high=0.2)
    assert loss.tolist()[0] == pytest.approx([2.4, 2.0, 1.0])
    clip_loss, _ = ppo_policy_loss(lp, old, adv, mask)
    lp.grad = None
    clip_loss.sum().backward()
    assert lp.grad[0, 0].item() == 0.0


def test_grpo_loss_selects_the_policy_loss():
    lp, old, adv, mask = gspo_batch()
    loss, met = grpo_loss(lp, old, None, adv, mask, beta=0.0, policy_loss="gspo")
    assert loss.item() == pytest.approx((-1.2 + math.exp(-0.2)) / 2)  # grpo_loss passes clip_eps 0.2
    default, _ = grpo_loss(lp, old, None, adv, mask, beta=0.0)
    explicit, _ = grpo_loss(lp, old, None, adv, mask, beta=0.0, policy_loss="clip")
    assert default.item() == explicit.item()
    with pytest.raises(ValueError, match="unknown policy_loss 'sapo'; choose one of clip, gspo, cispo"):
        grpo_loss(lp, old, None, adv, mask, beta=0.0, policy_loss="sapo")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.sampled_from(AGGREGATIONS), st.data())
def test_on_policy_every_variant_has_the_plain_policy_gradient(b, t, aggregation, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 10_000)))
    base = -torch.rand(b, t, generator=g, dtype=f64) * 3
    adv = torch.randn(b, generator=g, dtype=f64)
    mask = (torch.rand(b, t, generator=g) < 0.7).to(f64)
    mask[:, 0] = 1

    def grad(fn):
        lp = base.clone().requires_grad_()
        aggregate_loss(fn(lp)[0], mask, mode=aggregation).backward()
        return lp.grad

    want = grad(lambda lp: policy_gradient_loss(lp, adv, mask))
    for name, loss_fn in POLICY_LOSSES.items():
        got = grad(lambda lp, f=loss_fn: f(lp, lp.detach(), adv, mask))  # mu = 1: old = current
        assert torch.allclose(got, want, atol=1e-12), name
