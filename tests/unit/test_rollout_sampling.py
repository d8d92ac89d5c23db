"""`sample_tokens`: one-step frequencies match softmax(logits / T) with HF's top-k / top-p warpers applied.

Chi-square goodness of fit with a fixed seed: deterministic, so it cannot flake. The reference distribution
comes from transformers' own `TopKLogitsWarper` / `TopPLogitsWarper`, an independent implementation.
"""

import math

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from alignkit.rollout import sample_tokens

N_DRAWS = 40_000


def _reference_probs(logits: torch.Tensor, temperature: float, top_k, top_p: float) -> torch.Tensor:
    """softmax of logits / T after HF's top-k then top-p warpers: the distribution `generate` samples."""
    z = logits[None].float() / temperature
    if top_k:
        z = TopKLogitsWarper(top_k)(None, z)
    if top_p < 1.0:
        z = TopPLogitsWarper(top_p)(None, z)
    return torch.softmax(z, -1)[0]


def _chi2_critical(df: int, alpha_z: float = 3.09) -> float:
    """Upper chi-square quantile (Wilson-Hilferty); z = 3.09 is the 0.999 normal quantile."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + alpha_z * math.sqrt(h)) ** 3


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, 1.0), (0.7, None, 1.0), (1.5, 5, 1.0), (1.0, None, 0.8), (0.8, 6, 0.9)],
)
def test_frequencies_match_filtered_softmax(temperature, top_k, top_p):
    logits = torch.randn(12, generator=torch.Generator().manual_seed(1)) * 1.5
    expected = _reference_probs(logits, temperature, top_k, top_p)
    gen = torch.Generator().manual_seed(1234)
    tokens, _ = sample_tokens(logits.expand(N_DRAWS, -1), temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=gen)
    counts = torch.bincount(tokens, minlength=logits.numel()).double()
    support = expected > 0
    # tokens the filters remove are never drawn
    assert counts[~support].sum() == 0
    exp_counts = expected[support].double() * N_DRAWS
    chi2 = ((counts[support] - exp_counts) ** 2 / exp_counts).sum().item()
    df = int(support.sum()) - 1
    assert chi2 < _chi2_critical(df), (chi2, df, counts, exp_counts)


def test_reported_logprobs_are_unfiltered_temperature_scaled():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    tokens, logprobs = sample_tokens(logits, temperature=0.6, top_k=4, top_p=0.7,
                                     generator=torch.Generator().manual_seed(0))
    full = torch.log_softmax(logits / 0.6, -1).gather(-1, tokens[:, None])[:, 0]
    torch.testing.assert_close(logprobs, full, atol=1e-5, rtol=0)
    # and every token lies in the filtered support
    allowed = _reference_probs(logits[0], 0.6, 4, 0.7) > 0
    assert bool(allowed[tokens[0]])


def test_greedy_is_argmax_with_t1_logprobs():
    logits = torch.randn(8, 30, generator=torch.Generator().manual_seed(2))
    tokens, logprobs = sample_tokens(logits, temperature=0.0)
    assert torch.equal(tokens, logits.argmax(-1))
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).max(-1).values)


def test_same_generator_seed_same_tokens():
    logits = torch.randn(16, 40, generator=torch.Generator().manual_seed(3))
    a, _ = sample_tokens(logits, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b, _ = sample_tokens(logits, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_zero_probability_tail_never_drawn_at_u_edge():
    # top_p keeps only the first token; a uniform at the top of [0, 1) must still land on it
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]]).expand(1000, -1)
    tokens, _ = sample_tokens(logits, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.all(tokens == 0)
