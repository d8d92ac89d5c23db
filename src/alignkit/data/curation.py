"""Curation of sampled completions: keep the verified ones (rejection sampling, lecture sections 3-4)."""

from __future__ import annotations

from collections.abc import Sequence


def normalize_text(text: str) -> str:
    """Whitespace-normalized text, the key for deduplication."""
    return " ".join(text.split())


def select_verified(
    completions: Sequence[str],
    rewards: Sequence[float | None],
    *,
    threshold: float,
    dedupe: bool = True,
    max_keep: int | None = None,
) -> list[int]:
    """Indices of the completions of ONE prompt to keep: reward >= ``threshold`` (a failed verifier,
    None, is never kept), first occurrence of each whitespace-normalized text when ``dedupe``, at most
    ``max_keep`` (highest reward first, ties in sampling order).

    The lecture keeps rewards of 1.0 (bat-and-ball) or >= 0.8 (R1 stage 3):

    >>> select_verified(["a", "b", "c", "d"], [0, 1, 0, 1], threshold=1.0)
    [1, 3]
    >>> select_verified(["x", "x ", "y", "z"], [0.9, 0.8, 0.5, None], threshold=0.8)
    [0]
    """
    if len(completions) != len(rewards):
        raise ValueError(f"{len(completions)} completions but {len(rewards)} rewards")
    seen: set[str] = set()
    kept = []
    for i, (text, r) in enumerate(zip(completions, rewards)):
        if r is None or r < threshold:
            continue
        key = normalize_text(text)
        if dedupe and key in seen:
            continue
        seen.add(key)
        kept.append(i)
    if max_keep is not None:
        kept = sorted(sorted(kept, key=lambda i: -rewards[i])[:max_keep])
    return kept
