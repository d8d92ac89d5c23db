"""Token sampling: temperature, top-k, top-p, by inverse-CDF with one seeded uniform per row.

Naive equivalent of `sample_tokens` (what `model.generate` does):

    z = logits / T;  z = top_k_filter(z);  z = top_p_filter(z)
    token = torch.multinomial(softmax(z), 1)

Here the filtered probabilities are cumulated and `torch.searchsorted` finds, for a uniform u in
[0, total), the first token whose cumulative probability exceeds u: the same distribution for a fraction
of multinomial's cost on CPU. A test checks the frequencies against softmax(z) with HF's own top-k / top-p
warpers applied (chi-square, fixed seed).

The reported logprob is `log_softmax(logits / T)[token]` over the UNFILTERED vocabulary (what a fresh
forward pass at temperature T gives); greedy (T = 0) reports T = 1 logprobs.
"""

from __future__ import annotations

import torch


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row.

    Args:
        logits: [A, V] next-token logits (any float dtype; computed in fp32).
        temperature: T > 0 samples from softmax(logits / T); T == 0 is greedy (argmax).
        top_k: keep the k most likely tokens (None or 0: all).
        top_p: keep the smallest most-likely set whose probability reaches top_p (1.0: all). Applied after
            top-k, on the top-k distribution renormalized, as in HF's warpers; the most likely token is
            always kept.
        generator: source of the uniforms (one per row); seed it for reproducible samples.
    Returns:
        tokens [A] int64, logprobs [A] fp32 (see module docstring for which distribution).
    """
    z = logits.float()
    if temperature == 0:
        tokens = z.argmax(-1)
        return tokens, torch.log_softmax(z, -1).gather(-1, tokens[:, None])[:, 0]
    if temperature != 1.0:
        z = z / temperature
    # one fused softmax serves sampling and the logprob: log p[token] is within ~1e-7 of z[token] - lse
    # (the token is drawn from nonzero-probability entries, so p[token] > 0)
    probs = torch.softmax(z, -1)  # [A, V]
    vocab = z.shape[-1]
    k = top_k if top_k and top_k < vocab else None
    if k is None and top_p >= 1.0:
        tokens = _inverse_cdf(probs.cumsum(-1), generator)
    else:
        cand_p, cand_idx = probs.topk(k, dim=-1) if k is not None else probs.sort(dim=-1, descending=True)
        cdf = cand_p.cumsum(-1)  # [A, K] candidates, most likely first
        if top_p < 1.0:
            # drop a candidate when the (top-k renormalized) mass before it already reaches top_p
            drop = (cdf - cand_p) >= top_p * cdf[:, -1:]
            cdf = cand_p.masked_fill(drop, 0.0).cumsum(-1)
        tokens = cand_idx.gather(-1, _inverse_cdf(cdf, generator)[:, None])[:, 0]
    logprobs = probs.gather(-1, tokens[:, None])[:, 0].log()
    return tokens, logprobs


def _inverse_cdf(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Index i with cdf[i-1] <= u < cdf[i] for u uniform on [0, cdf[-1]); cdf [A, K] non-decreasing -> [A].

    u is kept strictly below the total, so a zero-probability (filtered) tail is never chosen.
    """
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=cdf.device, dtype=cdf.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)
