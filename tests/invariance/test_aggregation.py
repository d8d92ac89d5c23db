"""The loss of a batch equals the sum of the losses of its parts given global normalizers
(docs/design.md, style example 3)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.losses import AGGREGATIONS, aggregate_loss, grpo_loss


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 8), st.integers(1, 6), st.integers(0, 10_000), st.sampled_from(AGGREGATIONS))
def test_aggregation_invariant_to_splitting_the_batch(b, t, seed, mode):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, t, generator=g) > 0.3).long()
    split = int(torch.randint(1, b, (1,), generator=g))
    n_seq = (mask.sum(-1) > 0).sum().clamp(min=1).item()
    n_tok = mask.sum().clamp(min=1).item()
    kw = dict(mode=mode, num_sequences=n_seq, num_tokens=n_tok, max_tokens=t)
    whole = aggregate_loss(loss, mask, **kw)
    parts = aggregate_loss(loss[:split], mask[:split], **kw) + aggregate_loss(loss[split:], mask[split:], **kw)
    assert parts.item() == pytest.approx(whole.item(), abs=1e-9)
    # and the defaults of the whole batch are those global normalizers
    assert aggregate_loss(loss, mask, mode=mode).item() == pytest.approx(whole.item(), abs=1e-9)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_grpo_gradient_invariant_to_micro_batching(mode):
    g = torch.Generator().manual_seed(0)
    b, t = 6, 5
    logits = torch.randn(b, t, generator=g, dtype=torch.float64, requires_grad=True)
    old = logits.detach() + 0.1 * torch.randn(b, t, generator=g, dtype=torch.float64)
    ref = logits.detach() - 0.05
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    norms = dict(num_sequences=b, num_tokens=mask.sum().item(), max_tokens=t, aggregation=mode)
    full, _ = grpo_loss(logits, old, ref, adv, mask, **norms)
    (g_full,) = torch.autograd.grad(full, logits)
    total = 0
    for sl in (slice(0, 2), slice(2, 6)):
        part, _ = grpo_loss(logits[sl], old[sl], ref[sl], adv[sl], mask[sl], **norms)
        total = total + part
    (g_parts,) = torch.autograd.grad(total, logits)
    assert torch.allclose(g_full, g_parts, atol=1e-12)
