"""`alignkit.models.lean_ops` against the composed forms: values, gradients (float32 and float64 gradcheck), and
what autograd keeps for the backward."""

import pytest
import torch

from alignkit.models.lean_ops import rms_norm, rms_norm_naive, swiglu, swiglu_naive


def _saved_shapes(fn, *args):
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        out = fn(*args)
    return out, shapes


def test_rms_norm_by_hand():
    x = torch.tensor([[3.0, 4.0]])  # mean(x^2) = 12.5
    w = torch.tensor([1.0, 2.0])
    out = rms_norm(x.requires_grad_(), w, 0.0)
    torch.testing.assert_close(out, torch.tensor([[3.0, 8.0]]) / 12.5 ** 0.5)


@pytest.mark.parametrize("shape", [(7, 16), (2, 5, 16)])
def test_rms_norm_values_and_gradients_equal_the_composed_form(shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).requires_grad_()
    w = (1 + 0.1 * torch.randn(16, generator=g)).requires_grad_()
    weights = torch.randn(shape, generator=g)
    out = rms_norm(x, w, 1e-5)
    ref = rms_norm_naive(x, w, 1e-5)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    got = torch.autograd.grad((out * weights).sum(), (x, w))
    want = torch.autograd.grad((ref * weights).sum(), (x, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x64, w64))


def test_swiglu_values_and_gradients_equal_the_composed_form():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(6, 9, generator=g) * 3).requires_grad_(), torch.randn(6, 9, generator=g).requires_grad_()
    weights = torch.randn(6, 9, generator=g)
    out, ref = swiglu(a, b), swiglu_naive(a, b)
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad((out * weights).sum(), (a, b))
    want = torch.autograd.grad((ref * weights).sum(), (a, b))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(swiglu, (a64, b64))


def test_one_tensor_per_input_is_kept_for_the_backward():
    x, w = torch.randn(8, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    _, naive = _saved_shapes(rms_norm_naive, x, w, 1e-6)
    _, lean = _saved_shapes(rms_norm, x, w, 1e-6)
    assert sorted(naive).count((8, 16)) >= 2 and sorted(lean) == [(8, 1), (8, 16), (16,)]
    a, b = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    _, naive = _saved_shapes(swiglu_naive, a, b)
    _, lean = _saved_shapes(swiglu, a, b)
    assert len(naive) == 3 and lean == [(8, 16), (8, 16)]


def test_without_gradients_the_composed_form_runs():
    x, w = torch.randn(3, 4), torch.randn(4)
    with torch.no_grad():
        torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_naive(x, w, 1e-6))
        torch.testing.assert_close(swiglu(x, x), swiglu_naive(x, x))
