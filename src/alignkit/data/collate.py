"""Pad rendered examples into batch tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.data.chat import RenderedExample

SIDES = ("right", "left")


def pad_batch(
    examples: Sequence[RenderedExample | Sequence[int]], *, pad_token_id: int, side: str = "right",
) -> dict[str, torch.Tensor]:
    """Pad to the longest example.

    Args:
        examples: B RenderedExamples, or B plain id lists (prompts; their response_mask is all 0).
        pad_token_id: id written at padded positions (padding is also 0 in both masks).
        side: "right" for training and scoring, "left" for generation (prompts end at the same column).
    Returns:
        ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long (1 = real token), ``response_mask``
        [B, T] long (1 = target token), T = the longest example.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)} (got {side!r})")
    if not examples:
        raise ValueError("cannot pad an empty batch")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; set tokenizer.pad_token (e.g. to the EOS token)")
    rows = [(e.input_ids, e.response_mask) if isinstance(e, RenderedExample) else (list(e), [0] * len(e))
            for e in examples]
    width = max(len(ids) for ids, _ in rows)
    out = {
        "input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "response_mask": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for b, (ids, mask) in enumerate(rows):
        cols = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        out["input_ids"][b, cols] = torch.tensor(ids, dtype=torch.long)
        out["attention_mask"][b, cols] = 1
        out["response_mask"][b, cols] = torch.tensor(mask, dtype=torch.long)
    return out
