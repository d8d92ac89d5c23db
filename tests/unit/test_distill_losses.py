"""Forward KL, reverse KL and GKD's generalized JSD on a 3-token vocabulary, by hand."""

import pytest
import torch

from alignkit.losses import forward_kl_distill_loss, generalized_jsd_loss, reverse_kl_loss

# teacher P = (0.5, 0.25, 0.25), student Q = (0.8, 0.1, 0.1), as logits log p (softmax gives them back)
P = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
Q = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)
# KL(P || Q) = 0.5 ln(0.5/0.8) + 2 * 0.25 ln(0.25/0.1) = -0.235002 + 0.458145 = 0.223144
FORWARD = 0.223144
# KL(Q || P) = 0.8 ln(0.8/0.5) + 2 * 0.1 ln(0.1/0.25) = 0.376003 - 0.183258 = 0.192745
REVERSE = 0.192745


def logits(p, rows=1, cols=1):
    return p.log().expand(rows, cols, 3).clone()


def test_beta_endpoints_are_forward_and_reverse_kl():
    s, t, m = logits(Q), logits(P), torch.ones(1, 1)
    assert generalized_jsd_loss(s, t, m, beta=0.0)[0].item() == pytest.approx(FORWARD, abs=1e-6)
    assert generalized_jsd_loss(s, t, m, beta=1.0)[0].item() == pytest.approx(REVERSE, abs=1e-6)
    assert forward_kl_distill_loss(s, t, m)[0].item() == pytest.approx(FORWARD, abs=1e-6)
    assert reverse_kl_loss(s, t, m)[0].item() == pytest.approx(REVERSE, abs=1e-6)


def test_generalized_jsd_in_between():
    s, t, m = logits(Q), logits(P), torch.ones(1, 1)
    # beta = 0.5: M = (0.65, 0.175, 0.175)
    #   KL(P || M) = 0.5 ln(0.5/0.65) + 0.5 ln(0.25/0.175) = -0.131182 + 0.178337 = 0.047155
    #   KL(Q || M) = 0.8 ln(0.8/0.65) + 0.2 ln(0.1/0.175) = 0.166111 - 0.111923 = 0.054188
    #   JSD = 0.5 * 0.047155 + 0.5 * 0.054188 = 0.050672
    assert generalized_jsd_loss(s, t, m, beta=0.5)[0].item() == pytest.approx(0.050672, abs=1e-6)
    # beta = 0.9: M = 0.9 P + 0.1 Q = (0.53, 0.235, 0.235)
    #   KL(P || M) = 0.5 ln(0.5/0.53) + 0.5 ln(0.25/0.235) = 0.001803
    #   KL(Q || M) = 0.8 ln(0.8/0.53) + 0.2 ln(0.1/0.235) = 0.158505
    #   JSD = 0.9 * 0.001803 + 0.1 * 0.158505 = 0.017473
    assert generalized_jsd_loss(s, t, m, beta=0.9)[0].item() == pytest.approx(0.017473, abs=1e-6)
    # symmetric at beta = 0.5: swapping teacher and student changes nothing
    assert generalized_jsd_loss(t, s, m, beta=0.5)[0].item() == pytest.approx(0.050672, abs=1e-6)


def test_endpoints_are_the_limits_of_the_scaled_jsd():
    s, t, m = logits(Q), logits(P), torch.ones(1, 1)
    eps = 1e-5
    assert generalized_jsd_loss(s, t, m, beta=eps)[0].item() / eps == pytest.approx(FORWARD, rel=1e-3)
    assert generalized_jsd_loss(s, t, m, beta=1 - eps)[0].item() / eps == pytest.approx(REVERSE, rel=1e-3)


def test_masking_temperature_and_identical_distributions():
    s, t = logits(Q, 2, 3), logits(P, 2, 3)
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for beta in (0.0, 0.3, 1.0):
        loss, _ = generalized_jsd_loss(s, t, m, beta=beta)
        assert loss.shape == (2, 3) and loss[m == 0].abs().sum() == 0
    # temperature 2 (no T^2 factor): softmax(log p / 2) = sqrt(p) normalized; beta = 0 is the forward KL
    # of those, i.e. forward_kl_distill_loss (which does scale by T^2 = 4) divided by 4
    fwd, _ = forward_kl_distill_loss(s, t, m, temperature=2.0)
    jsd0, _ = generalized_jsd_loss(s, t, m, beta=0.0, temperature=2.0)
    assert torch.allclose(jsd0, fwd / 4, atol=1e-7)
    # the same distribution (shifted logits): every divergence is 0
    for beta in (0.0, 0.5, 1.0):
        assert generalized_jsd_loss(t + 3.0, t, m, beta=beta)[0].abs().max() < 1e-6


def test_gradients_are_finite_and_point_toward_the_teacher():
    s = logits(Q).float().requires_grad_()
    t = logits(P).float()
    for beta in (0.0, 0.5, 1.0):
        s.grad = None
        generalized_jsd_loss(s, t, torch.ones(1, 1), beta=beta)[0].sum().backward()
        assert torch.isfinite(s.grad).all()
        # the student puts too much mass on token 0: descent lowers its logit relative to the others
        assert s.grad[0, 0, 0] > 0 > s.grad[0, 0, 1]


def test_errors():
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd_loss(logits(Q), logits(P), torch.ones(1, 1), beta=1.5)
    with pytest.raises(ValueError, match="vocabularies differ"):
        reverse_kl_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 4), torch.ones(1, 1))
