"""ADVANTAGE_ESTIMATORS (GRPO, RLOO, REINFORCE++) and KL reward shaping at hand-computed values."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.advantages import (
    ADVANTAGE_ESTIMATORS,
    discounted_returns,
    group_advantages,
    kl_shaped_token_rewards,
    reinforce_pp_advantages,
    reinforce_pp_baseline,
    reinforce_pp_token_advantages,
    rloo_advantages,
)

f64 = torch.float64


def test_table_names_and_shared_signature():
    assert list(ADVANTAGE_ESTIMATORS) == ["grpo", "rloo", "reinforce_pp"]
    assert ADVANTAGE_ESTIMATORS["grpo"] is group_advantages
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0], dtype=f64)
    valid = torch.tensor([True] * 5)
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        out = fn(r, [3, 2], valid=valid, eps=1e-8)
        assert out.shape == (5,) and torch.isfinite(out).all(), name
    # an option of another estimator is an error, never silently dropped
    with pytest.raises(TypeError):
        ADVANTAGE_ESTIMATORS["rloo"](r, [3, 2], std_ddof=1)


def test_rloo_uneven_groups_by_hand():
    # group [1, 0, 0.5]: baselines (0+0.5)/2 = 0.25, (1+0.5)/2 = 0.75, (1+0)/2 = 0.5 -> A = [0.75, -0.75, 0]
    #   (= n/(n-1) (r - mean) = 1.5 * ([1, 0, 0.5] - 0.5))
    # group [2, 4]: A = [2 - 4, 4 - 2] = [-2, 2]
    r = torch.tensor([1.0, 0.0, 0.5, 2.0, 4.0], dtype=f64)
    assert rloo_advantages(r, [3, 2]).tolist() == pytest.approx([0.75, -0.75, 0.0, -2.0, 2.0])


def test_rloo_leaves_invalid_rows_out_of_the_baseline():
    # group [1, 0, <failed 9>, 0]: valid [1, 0, 0], n = 3
    #   A0 = 1 - (0+0)/2 = 1 ; A1 = 0 - (1+0)/2 = -0.5 ; A3 = -0.5 ; the failed row 0 (its 9 is in no baseline)
    r = torch.tensor([1.0, 0.0, 9.0, 0.0], dtype=f64)
    valid = torch.tensor([True, True, False, True])
    assert rloo_advantages(r, 4, valid=valid).tolist() == pytest.approx([1.0, -0.5, 0.0, -0.5])
    # one valid row left: no baseline to compare with -> 0
    assert rloo_advantages(r[:2], 2, valid=torch.tensor([True, False])).tolist() == [0.0, 0.0]


def test_reinforce_pp_group_baseline_then_batch_std():
    # x = r - group mean: group [1, 0, 0, 0] -> [0.75, -0.25, -0.25, -0.25]; group [1, 1, 1, 1] -> 0 x 4
    # batch (8 rows) mean of x = 0 ; var = (0.75^2 + 3 * 0.25^2 + 0) / 8 = 0.75 / 8 = 0.09375 ; std = 0.306186
    # A = [0.75, -0.25] / 0.306186 = [2.449490 (sqrt 6), -0.816497 (sqrt 6 / 3)], the flat group stays 0
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=f64)
    got = reinforce_pp_advantages(r, 4)
    s6 = math.sqrt(6)
    assert got.tolist() == pytest.approx([s6, -s6 / 3, -s6 / 3, -s6 / 3, 0, 0, 0, 0], abs=1e-6)
    assert got[4:].tolist() == [0.0] * 4  # exactly
    # GRPO on the same first group divides by its own std sqrt(0.1875) = 0.4330: [1.7321, -0.5774, ...]
    assert group_advantages(r, 4)[0].item() == pytest.approx(math.sqrt(3), abs=1e-6)


def test_reinforce_pp_batch_baseline_and_invalid_rows():
    # one sample per prompt (group_size 1), batch mean 0.25: x = [0.75, -0.25, -0.25, -0.25]
    # std = sqrt(0.75 / 4) = 0.433013 -> A = [1.732051, -0.577350 x 3]
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64)
    assert reinforce_pp_advantages(r, 1, baseline="batch").tolist() == pytest.approx(
        [math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)], abs=1e-6)
    # [1, 0, <failed 7>, 0]: valid mean 1/3 ; x = [2/3, -1/3, 0, -1/3] ; std = sqrt((4/9 + 1/9 + 1/9) / 3)
    #   = sqrt(2/9) = 0.471405 -> A = [1.414214, -0.707107, 0, -0.707107]
    r = torch.tensor([1.0, 0.0, 7.0, 0.0], dtype=f64)
    valid = torch.tensor([True, True, False, True])
    assert reinforce_pp_advantages(r, 4, valid=valid, baseline="batch").tolist() == pytest.approx(
        [1.414214, -0.707107, 0.0, -0.707107], abs=1e-6)
    with pytest.raises(ValueError, match="unknown REINFORCE.. baseline 'loo'"):
        reinforce_pp_advantages(r, 4, baseline="loo")


@pytest.mark.parametrize("name", list(ADVANTAGE_ESTIMATORS))
def test_all_equal_groups_give_exact_zeros_never_nan(name):
    fn = ADVANTAGE_ESTIMATORS[name]
    # 0.1 * 3 / 3 != 0.1 in floating point: a naive formula leaves residue
    r = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.3])
    assert fn(r, [3, 2]).tolist() == [0.0] * 5
    # an all-invalid batch and a batch with an all-equal group next to an informative one
    assert fn(r, [3, 2], valid=torch.zeros(5, dtype=torch.bool)).tolist() == [0.0] * 5
    mixed = fn(torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0]), [3, 2])
    assert mixed[:3].tolist() == [0.0] * 3 and torch.isfinite(mixed).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_estimators_sum_to_zero_per_group_and_stay_finite(sizes, data):
    n = sum(sizes)
    r = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=n, max_size=n)), dtype=f64)
    for name in ("grpo", "rloo"):
        a = ADVANTAGE_ESTIMATORS[name](r, sizes)
        assert torch.isfinite(a).all()
        assert all(abs(part.sum().item()) < 1e-9 for part in torch.split(a, sizes)), name
    a = reinforce_pp_advantages(r, sizes)
    assert torch.isfinite(a).all() and abs(a.sum().item()) < 1e-9


def test_kl_shaped_token_rewards_by_hand():
    r = torch.tensor([1.0, 2.0], dtype=f64)
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]], dtype=f64)
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, 5.0]], dtype=f64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # k1 = lp - ref: row 0 [0.5, 0, -1]; row 1 [-0.5, 0, (masked)]
    # -0.1 * k1, plus the sequence reward at the last response token (t=2 in row 0, t=1 in row 1):
    #   row 0 [-0.05, 0, 0.1 + 1.0 = 1.1] ; row 1 [0.05, 0 + 2.0, 0]
    tr = kl_shaped_token_rewards(r, lp, ref, mask, beta=0.1)
    assert tr.tolist() == [pytest.approx([-0.05, 0.0, 1.1]), pytest.approx([0.05, 2.0, 0.0])]
    # REINFORCE++ token level: returns with gamma = 1 -> row 0 [1.05, 1.1, 1.1] ; row 1 [2.05, 2.0, 0]
    assert discounted_returns(tr, mask).tolist() == [pytest.approx([1.05, 1.1, 1.1]), pytest.approx([2.05, 2.0, 0.0])]
    # k3 on row 1 t=0: log ratio -0.5 -> exp(0.5) - 1 - 0.5 = 0.148721 -> -0.1 * 0.148721
    k3 = kl_shaped_token_rewards(r, lp, ref, mask, beta=0.1, estimator="k3")
    assert k3[1, 0].item() == pytest.approx(-0.1 * (math.exp(0.5) - 1.5))


def test_reinforce_pp_token_advantages_by_hand():
    # x = [1, -1]; row 0 has 3 response tokens, row 1 has 2 (its t=2 is padding, logprob 9 never read)
    # k1 = lp - ref: row 0 [0.5, 0, 1] ; row 1 [1, 0.5]
    # rewards, beta 0.5: -0.5 k1 (+ x at the last token): row 0 [-0.25, 0, -0.5 + 1 = 0.5] ; row 1 [-0.5, -0.25 - 1 = -1.25]
    # returns (gamma 1, summed to the end): row 0 [0.25, 0.5, 0.5] ; row 1 [-1.75, -1.25]
    # whiten over the 5 tokens: mean (0.25 + 0.5 + 0.5 - 1.75 - 1.25) / 5 = -0.35
    #   deviations [0.6, 0.85, 0.85, -1.4, -0.9] ; var (0.36 + 0.7225 + 0.7225 + 1.96 + 0.81) / 5 = 0.915
    #   std 0.956556 -> A = [0.627250, 0.888604, 0.888604 ; -1.463583, -0.940875, 0]
    x = torch.tensor([1.0, -1.0], dtype=f64)
    lp = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.5, 9.0]], dtype=f64)
    ref = torch.zeros(2, 3, dtype=f64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = reinforce_pp_token_advantages(x, lp, ref, mask, beta=0.5, estimator="k1")
    assert got.shape == (2, 3)
    assert got.tolist() == [pytest.approx([0.627250, 0.888604, 0.888604], abs=1e-6),
                            pytest.approx([-1.463583, -0.940875, 0.0], abs=1e-6)]
    # beta = 0 (no logprobs needed): returns are x on every token [1, 1, 1 ; -1, -1], mean 0.2,
    #   var (3 * 0.8^2 + 2 * 1.2^2) / 5 = 0.96 -> A = [0.816497 x 3 ; -1.224745 x 2]: the token-weighted
    #   normalization of the paper; the sequence-level form would give [1, -1] (one std over the 2 rows)
    flat = reinforce_pp_token_advantages(x, None, None, mask, beta=0.0)
    assert flat.tolist() == [pytest.approx([0.816497] * 3, abs=1e-6), pytest.approx([-1.224745, -1.224745, 0.0], abs=1e-6)]
    with pytest.raises(ValueError, match="beta != 0 needs logprobs"):
        reinforce_pp_token_advantages(x, None, None, mask, beta=0.1)


def test_reinforce_pp_token_advantages_equal_lengths_and_beta_0_are_the_sequence_form():
    # every row 2 tokens long, beta 0: the token whitening has the rows' statistics (up to where eps sits)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=f64)
    x = reinforce_pp_baseline(r, 4)
    assert x.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, -0.75, 0.25])
    mask = torch.ones(8, 2)
    tok = reinforce_pp_token_advantages(x, None, None, mask, beta=0.0)
    seq = reinforce_pp_advantages(r, 4)
    assert torch.allclose(tok, seq[:, None].expand(8, 2), atol=1e-7, rtol=0)
    # a row left out (all-zero mask) stays 0 and is in no statistic
    mask[2] = 0
    assert reinforce_pp_token_advantages(x, None, None, mask, beta=0.0)[2].tolist() == [0.0, 0.0]
