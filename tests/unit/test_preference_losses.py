"""KTO, ORPO, SimPO, the PREFERENCE_LOSSES table and online DPO's rank_pairs: hand-computed cases."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.losses import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE_LOSSES,
    PairLogps,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    log1mexp,
    orpo_loss,
    rank_pairs,
    simpo_loss,
)


def d(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- KTO


def test_kto_reference_point_is_the_clamped_detached_mean_log_ratio():
    # mismatched log ratios: (-3 - -4, -5 - -4.5, -4 - -5.5) = (1.0, -0.5, 1.5); mean = 2/3
    pol = d(-3.0, -5.0, -4.0).requires_grad_()
    z0 = kto_reference_point(pol, d(-4.0, -4.5, -5.5))
    assert z0.item() == pytest.approx(2 / 3, abs=1e-12)
    assert not z0.requires_grad and z0.dim() == 0
    # mean (-1.0 + 0.5) / 2 = -0.25 < 0: clamped to 0
    assert kto_reference_point(d(-5.0, -4.0), d(-4.0, -4.5)).item() == 0.0
    assert kto_reference_point(d(), d()).item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        kto_reference_point(d(1.0), d(1.0, 2.0))


def test_kto_loss_hand_computed():
    # r = policy - ref = (-2 - -3, -6 - -5) = (1.0, -1.0); z0 = 2/3; beta = 0.1
    # desirable:    1 - sigma(0.1 * (1.0 - 2/3))  = 1 - sigma(0.033333) = 1 - 0.508333 = 0.491667
    # undesirable:  1 - sigma(0.1 * (2/3 - -1.0)) = 1 - sigma(0.166667) = 1 - 0.541570 = 0.458430
    policy = d(-2.0, -6.0).requires_grad_()
    labels = torch.tensor([True, False])
    z0 = d(2 / 3)[0].requires_grad_()  # even with grad, z0 is not back-propagated through
    losses, metrics = kto_loss(policy, d(-3.0, -5.0), labels, kl_ref_point=z0, beta=0.1)
    assert losses.tolist() == pytest.approx([0.491667, 0.458430], abs=1e-6)
    assert metrics["rewards"].tolist() == pytest.approx([0.1, -0.1])
    assert metrics["kl"].item() == pytest.approx(2 / 3)
    # weights: undesirable_weight 1.5 -> 1.5 * 0.458430 = 0.687644
    losses_w, _ = kto_loss(policy, d(-3.0, -5.0), labels, kl_ref_point=z0, beta=0.1, undesirable_weight=1.5)
    assert losses_w.tolist() == pytest.approx([0.491667, 0.687644], abs=1e-6)
    # d/dr of 1 - sigma(beta (r - z0)) = -beta sigma(z)(1 - sigma(z)) = -0.1 * 0.508333 * 0.491667 = -0.024993
    losses.sum().backward()
    assert policy.grad[0].item() == pytest.approx(-0.024993, abs=1e-6)
    assert z0.grad is None


def test_kto_float_reference_point_and_shape_error():
    # z0 = 0, r = 1: desirable 1 - sigma(0.1) = 0.475021 ; r = -1 undesirable 1 - sigma(0.1) = 0.475021
    losses, _ = kto_loss(d(0.0, 0.0), d(-1.0, 1.0), torch.tensor([True, False]), kl_ref_point=0.0)
    assert losses.tolist() == pytest.approx([0.475021, 0.475021], abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        kto_loss(d(0.0), d(0.0, 1.0), torch.tensor([True]), kl_ref_point=0.0)


# ---------------------------------------------------------------------------------------------- ORPO


def test_log1mexp_agrees_with_the_naive_formula_where_that_is_accurate():
    x = -torch.logspace(-3, 2, 200, dtype=torch.float64)  # -0.001 .. -100
    assert torch.allclose(log1mexp(x), torch.log1p(-torch.exp(x)), rtol=1e-10, atol=0)


def test_log1mexp_is_finite_where_the_naive_formula_is_not():
    x = torch.tensor([-1e-8, 0.0, -100.0], requires_grad=True)  # float32
    assert torch.isinf(torch.log1p(-torch.exp(x.detach()[:2]))).all()  # naive: exp(-1e-8) == 1 in fp32
    y = log1mexp(x)
    # log(1 - exp(-1e-8)) = log(1e-8) = -18.420681 ; log(1 - exp(-100)) = -exp(-100) ~ 0
    assert y[0].item() == pytest.approx(-18.420681, abs=1e-4)
    assert torch.isfinite(y).all() and y[2].item() == pytest.approx(0.0, abs=1e-30)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_orpo_loss_hand_computed():
    # log odds(y) = logp - log(1 - exp(logp)):
    #   chosen  -0.5: log(1 - 0.606531) = -0.932752 -> -0.5 + 0.932752 =  0.432752
    #   rejected -1.5: log(1 - 0.223130) = -0.252482 -> -1.5 + 0.252482 = -1.247518
    # log odds ratio = 1.680270 ; -log sigma(1.680270) = log(1 + e^-1.680270) = 0.170859
    # L = nll + lam * 0.170859 = 0.5 + 0.1 * 0.170859 = 0.517086
    losses, metrics = orpo_loss(d(-0.5), d(-1.5), d(0.5), lam=0.1)
    assert losses.item() == pytest.approx(0.517086, abs=1e-6)
    assert metrics["orpo/log_odds"].item() == pytest.approx(1.680270, abs=1e-6)
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.05)  # lam * mean logp
    assert metrics["rewards/margin"].item() == pytest.approx(0.1)
    assert metrics["orpo/nll"].item() == 0.5


def test_orpo_is_stable_near_logp_zero_in_float32():
    # chosen mean logp -1e-8 (P ~ 1): log odds = -1e-8 + 18.420681 = 18.420681
    # rejected -1.0: log(1 - e^-1) = -0.458675 -> log odds -0.541325 ; ratio = 18.962006
    # -log sigma(18.962006) = 5.82e-9 -> L = 1e-8 + 0.1 * 5.8e-9 ~ 1.06e-8
    chosen = torch.tensor([-1e-8, 0.0], requires_grad=True)
    losses, metrics = orpo_loss(chosen, torch.tensor([-1.0, -1.0]), -chosen, lam=0.1)
    assert metrics["orpo/log_odds"][0].item() == pytest.approx(18.962006, abs=1e-3)
    assert losses[0].item() == pytest.approx(1.06e-8, abs=1e-9)
    assert torch.isfinite(losses).all()  # even P = 1 exactly (log odds capped, not inf)
    losses.sum().backward()
    assert torch.isfinite(chosen.grad).all()


# --------------------------------------------------------------------------------------------- SimPO


def test_simpo_loss_hand_computed():
    # r_w = beta / |y_w| * sum = 2 * -6/4 = -3.0 ; r_l = 2 * -12/6 = -4.0 ; z = -3 - -4 - 0.5 = 0.5
    # -log sigma(0.5) = log(1 + e^-0.5) = 0.474077
    chosen = d(-6.0).requires_grad_()
    losses, metrics = simpo_loss(chosen, d(-12.0), d(4.0), d(6.0), beta=2.0, gamma=0.5)
    assert losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert metrics["rewards/chosen"].item() == -3.0 and metrics["rewards/rejected"].item() == -4.0
    assert metrics["rewards/margin"].item() == 1.0  # without gamma
    # dL/d sum_w = -sigma(-z) * beta / |y_w| = -0.377541 * 0.5 = -0.188770
    losses.backward()
    assert chosen.grad.item() == pytest.approx(-0.188770, abs=1e-6)
    # label smoothing 0.1: 0.9 * 0.474077 + 0.1 * -log sigma(-0.5) (= 0.974077) = 0.524077
    ls, _ = simpo_loss(d(-6.0), d(-12.0), d(4.0), d(6.0), beta=2.0, gamma=0.5, label_smoothing=0.1)
    assert ls.item() == pytest.approx(0.524077, abs=1e-6)


def test_simpo_reward_is_length_normalized_and_reference_free():
    # the same mean logprob per token (-1.5) is the same reward at any length
    a, _ = simpo_loss(d(-6.0), d(-12.0), d(4.0), d(6.0))
    b, _ = simpo_loss(d(-3.0), d(-20.0), torch.tensor([2]), torch.tensor([10]))
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    with pytest.raises(ValueError, match="length must be >= 1"):
        simpo_loss(d(-1.0), d(-1.0), d(0.0), d(1.0))
    with pytest.raises(ValueError, match="label_smoothing"):
        simpo_loss(d(-1.0), d(-1.0), d(1.0), d(1.0), label_smoothing=0.5)


# ---------------------------------------------------------------------------------------------- table


def _batch(**kw):
    base = dict(policy_chosen_logps=d(-4.0, -10.0), policy_rejected_logps=d(-6.0, -9.0),
                chosen_lengths=d(2.0, 5.0), rejected_lengths=d(3.0, 3.0),
                ref_chosen_logps=d(-4.5, -9.0), ref_rejected_logps=d(-5.0, -9.5))
    return PairLogps(**{**base, **kw})


def test_table_has_one_signature_and_the_common_metrics():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "ipo", "simpo", "orpo"}
    assert REFERENCE_FREE_LOSSES == {"simpo", "orpo"}
    for name, fn in PREFERENCE_LOSSES.items():
        losses, metrics = fn(_batch())
        assert losses.shape == (2,), name
        assert {"rewards/chosen", "rewards/rejected", "rewards/margin"} <= set(metrics), name
        assert all(not v.requires_grad for v in metrics.values()), name


def test_table_dpo_equals_dpo_loss():
    b = _batch()
    args = (b.policy_chosen_logps, b.policy_rejected_logps, b.ref_chosen_logps, b.ref_rejected_logps)
    losses, metrics = PREFERENCE_LOSSES["sigmoid"](b, beta=0.2, label_smoothing=0.1)
    assert torch.equal(losses, dpo_loss(*args, beta=0.2, label_smoothing=0.1)[0])
    # row 0: h = (-4 - -4.5) - (-6 - -5) = 1.5 ; margin = beta h = 0.3
    assert metrics["rewards/margin"][0].item() == pytest.approx(0.3)
    losses, _ = PREFERENCE_LOSSES["ipo"](b, beta=0.2)
    assert torch.equal(losses, dpo_loss(*args, beta=0.2, loss_type="ipo")[0])
    # reference-free needs no reference logprobs: h = -4 - -6 = 2 ; -log sigma(0.1 * 2) = 0.598139
    free = _batch(ref_chosen_logps=None, ref_rejected_logps=None)
    losses, _ = PREFERENCE_LOSSES["sigmoid"](free, reference_free=True)
    assert losses[0].item() == pytest.approx(0.598139, abs=1e-6)
    with pytest.raises(ValueError, match="needs reference logprobs"):
        PREFERENCE_LOSSES["sigmoid"](free)


def test_table_simpo_and_orpo_use_lengths():
    b = _batch()
    losses, _ = PREFERENCE_LOSSES["simpo"](b, beta=2.0, gamma=1.0)
    assert torch.equal(losses, simpo_loss(d(-4.0, -10.0), d(-6.0, -9.0), d(2.0, 5.0), d(3.0, 3.0), gamma=1.0)[0])
    # ORPO on token means: chosen (-2, -2), rejected (-2, -3); default SFT term = -chosen mean = 2
    losses, metrics = PREFERENCE_LOSSES["orpo"](b, lam=0.2)
    assert torch.equal(losses, orpo_loss(d(-2.0, -2.0), d(-2.0, -3.0), d(2.0, 2.0), lam=0.2)[0])
    # row 0: equal means -> log odds ratio 0 -> 2 + 0.2 * ln 2 = 2.138629
    assert losses[0].item() == pytest.approx(2.138629, abs=1e-6)
    assert metrics["orpo/nll"].tolist() == [2.0, 2.0]
    losses, _ = PREFERENCE_LOSSES["orpo"](_batch(chosen_nll=d(1.0, 1.0)), lam=0.2)
    assert losses[0].item() == pytest.approx(1.138629, abs=1e-6)


def test_table_refuses_an_option_the_loss_does_not_take():
    with pytest.raises(TypeError, match="gamma"):
        PREFERENCE_LOSSES["sigmoid"](_batch(), gamma=0.5)
    with pytest.raises(TypeError, match="label_smoothing"):
        PREFERENCE_LOSSES["ipo"](_batch(), label_smoothing=0.1)


# ---------------------------------------------------------------------------------------- rank_pairs


def test_rank_pairs_best_and_worst_per_group():
    r = torch.tensor([0.2, 0.9, 0.5,   # group 0: best row 1, worst row 0
                      1.0, 1.0, 1.0,   # group 1: all tied -> no preference
                      0.0, 1.0, 1.0])  # group 2: tied bests -> the first (row 7); worst row 6
    chosen, rejected, ok = rank_pairs(r, 3)
    assert chosen.tolist() == [1, 3, 7] and rejected.tolist()[0::2] == [0, 6]
    assert ok.tolist() == [True, False, True]


def test_rank_pairs_skips_invalid_samples_and_nan():
    r = torch.tensor([0.2, 0.9, 0.5, 0.0, 1.0, 1.0, float("nan"), 0.0, 1.0])
    valid = torch.tensor([True, False, True, True, False, False, True, True, True])
    chosen, rejected, ok = rank_pairs(r, 3, valid=valid)
    # group 0 without row 1: best 0.5 (row 2), worst 0.2 (row 0); group 1: one valid sample; group 2: NaN
    assert (chosen[0].item(), rejected[0].item()) == (2, 0)
    assert ok.tolist() == [True, False, False]
    _, _, ok = rank_pairs(r, 3, valid=torch.tensor([True] * 6 + [False, True, True]))
    assert ok.tolist() == [True, True, True]


def test_rank_pairs_errors():
    with pytest.raises(ValueError, match="group_size >= 2"):
        rank_pairs(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="divisible"):
        rank_pairs(torch.zeros(5), 2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(2, 5), st.data())
def test_rank_pairs_picks_the_extremes(n, g, data):
    vals = data.draw(st.lists(st.integers(0, 3), min_size=n * g, max_size=n * g))
    r = torch.tensor(vals, dtype=torch.float32)
    chosen, rejected, ok = rank_pairs(r, g)
    groups = r.view(n, g)
    assert torch.equal(r[chosen], groups.max(1).values) and torch.equal(r[rejected], groups.min(1).values)
    assert torch.equal(ok, groups.max(1).values > groups.min(1).values)
    assert ((chosen // g) == torch.arange(n)).all() and ((rejected // g) == torch.arange(n)).all()

