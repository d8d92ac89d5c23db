"""Sequence packing without cross-example attention.

Several rendered examples share one row; ``position_ids`` restart at 0 at each example, and the model
(transformers' mask builder, when ``attention_mask`` is None) turns those restarts into a block-diagonal
causal mask, so no token attends to another example. The first token of each example is never a target
(nothing of its own precedes it). Trailing padding forms its own block and is masked out of the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.data.chat import RenderedExample


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: example indices grouped into rows of at most ``max_length`` tokens.

    >>> pack_rows([5, 3, 4, 2], 8)
    [[0, 1], [2, 3]]
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > max_length:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the packing length {max_length}")
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(max_length - lengths[i])
    return rows


def pack_batch(examples: Sequence[RenderedExample], *, max_length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pack examples into [R, L] rows (L = the longest packed row, at most ``max_length``).

    Returns ``input_ids``, ``attention_mask`` (1 = real token), ``response_mask`` (targets; 0 at each
    example's first token), ``position_ids`` (restarting per example) -- all [R, L] long.
    """
    groups = pack_rows([len(e) for e in examples], max_length)
    width = max(sum(len(examples[i]) for i in g) for g in groups)
    shape = (len(groups), width)
    out = {k: torch.zeros(shape, dtype=torch.long) for k in ("input_ids", "attention_mask", "response_mask",
                                                              "position_ids")}
    out["input_ids"].fill_(pad_token_id)
    for r, group in enumerate(groups):
        col = 0
        for i in group:
            e, n = examples[i], len(examples[i])
            out["input_ids"][r, col:col + n] = torch.tensor(e.input_ids)
            out["attention_mask"][r, col:col + n] = 1
            out["response_mask"][r, col + 1:col + n] = torch.tensor(e.response_mask[1:])
            out["position_ids"][r, col:col + n] = torch.arange(n)
            col += n
        out["position_ids"][r, col:] = torch.arange(width - col)  # padding: its own block
    return out
