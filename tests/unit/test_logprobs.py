"""alignkit.logprobs: the chunked selective log-softmax equals the naive form; per-token logprobs are
aligned with input_ids and invariant to padding side."""

import pytest
import torch

from alignkit.logprobs import (
    predicted_mask,
    selective_log_softmax,
    sequence_logprobs,
    token_logprobs_from_logits,
)
from alignkit.losses import entropy_from_logits
from alignkit.models import build_tiny


def naive(logits, index):
    return torch.log_softmax(logits.float(), -1).gather(-1, index[..., None])[..., 0]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 512])  # 512 > B*T rows: a single chunk
def test_selective_log_softmax_matches_naive_fp32(chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    index = torch.randint(0, 11, (3, 5), generator=g)
    out = selective_log_softmax(logits, index, chunk_size=chunk_size)
    assert out.shape == (3, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, naive(logits, index), atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [2, 64])
def test_selective_log_softmax_matches_naive_bf16(chunk_size):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 6, 50, generator=g) * 3).bfloat16()
    index = torch.randint(0, 50, (4, 6), generator=g)
    out = selective_log_softmax(logits, index, chunk_size=chunk_size)
    # both upcast the same bf16 values, so they agree to fp32 precision; the bf16-computed naive form
    # agrees within bf16 resolution
    torch.testing.assert_close(out, naive(logits, index), atol=1e-5, rtol=0)
    bf16_naive = torch.log_softmax(logits, -1).gather(-1, index[..., None])[..., 0]
    torch.testing.assert_close(out, bf16_naive.float(), atol=5e-2, rtol=2e-2)


def test_selective_log_softmax_gradient_matches_naive():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 4, 9, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    index = torch.randint(0, 9, (2, 4), generator=g)
    selective_log_softmax(a, index, chunk_size=3).sum().backward()
    naive(b, index).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_from_logits_alignment_and_temperature(temperature):
    g = torch.Generator().manual_seed(3)
    B, T, V = 2, 6, 13
    logits = torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    out = token_logprobs_from_logits(logits, ids, temperature=temperature, chunk_size=4)
    expected = torch.zeros(B, T)
    for b in range(B):
        for t in range(1, T):  # logits at t-1 predict token t; position 0 has no prediction
            expected[b, t] = torch.log_softmax(logits[b, t - 1] / temperature, -1)[ids[b, t]]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny(seed=0)
    return model, tok


TEXTS = ["<|user|>2+3?<|end|><|assistant|>5<|endoftext|>", "hi", "<think>long one here</think><answer>7"]


def padded(tok, texts, side):
    seqs = [tok.encode(s) for s in texts]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), tok.pad_token_id)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


def real(values, mask, i):
    return values[i][mask[i].bool()]


@torch.no_grad()
def test_sequence_logprobs_padding_invariant(tiny):
    model, tok = tiny
    single = []
    for s in TEXTS:
        ids = torch.tensor([tok.encode(s)])
        lp, ent = sequence_logprobs(model, ids, torch.ones_like(ids), return_entropy=True)
        assert lp[0, 0] == 0 and ent[0, 0] == 0
        single.append((lp[0], ent[0]))
    for side in ("left", "right"):
        ids, mask = padded(tok, TEXTS, side)
        lp, ent = sequence_logprobs(model, ids, mask, return_entropy=True, chunk_size=5)
        assert (lp[mask == 0] == 0).all() and (ent[mask == 0] == 0).all()
        for i, (lp1, ent1) in enumerate(single):
            torch.testing.assert_close(real(lp, mask, i), lp1, atol=1e-5, rtol=0)
            torch.testing.assert_close(real(ent, mask, i), ent1, atol=1e-5, rtol=0)


@torch.no_grad()
def test_sequence_logprobs_entropy_alignment_against_manual(tiny):
    model, tok = tiny
    ids, mask = padded(tok, TEXTS, "left")
    T = 0.8
    lp, ent = sequence_logprobs(model, ids, mask, temperature=T, return_entropy=True)
    for i, s in enumerate(TEXTS):
        x = torch.tensor([tok.encode(s)])
        logits = model(x).logits[0] / T  # [n, V], row t predicts token t+1
        n = x.shape[1]
        exp_lp = torch.zeros(n)
        exp_lp[1:] = torch.log_softmax(logits[:-1], -1).gather(-1, x[0, 1:, None])[:, 0]
        exp_ent = torch.zeros(n)
        exp_ent[1:] = entropy_from_logits(logits[:-1])
        torch.testing.assert_close(real(lp, mask, i), exp_lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(real(ent, mask, i), exp_ent, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("k", [1, 4, 100])  # 100 > T: everything
def test_logits_to_keep_matches_full_on_last_k(tiny, k):
    model, tok = tiny
    ids, mask = padded(tok, TEXTS, "left")
    full, full_ent = sequence_logprobs(model, ids, mask, return_entropy=True)
    part, part_ent = sequence_logprobs(model, ids, mask, return_entropy=True, logits_to_keep=k)
    k = min(k, ids.shape[1])
    torch.testing.assert_close(part[:, -k:], full[:, -k:], atol=1e-5, rtol=0)
    torch.testing.assert_close(part_ent[:, -k:], full_ent[:, -k:], atol=1e-5, rtol=0)
    assert (part[:, :-k] == 0).all() and (part_ent[:, :-k] == 0).all()


def test_sequence_logprobs_has_gradients_and_checks_args(tiny):
    model, tok = tiny
    ids, mask = padded(tok, TEXTS, "right")
    lp = sequence_logprobs(model, ids, mask)
    (lp * mask).sum().backward()
    grad = model.model.embed_tokens.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError):
        sequence_logprobs(model, ids, mask, temperature=0.0)
    with pytest.raises(ValueError):
        sequence_logprobs(model, ids, mask, logits_to_keep=0)


def test_predicted_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert predicted_mask(mask).long().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
