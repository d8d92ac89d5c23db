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
    """Balanced packing: example indices grouped into rows of at most ``max_length`` tokens, as few rows as
    first-fit-decreasing (FFD) needs, with near-equal row lengths (rows are padded to the longest one).

    1. FFD (longest first, into the first row with room) fixes the number of rows R; its rows are one start.
    2. A second start: longest first, each example into the currently shortest of R rows, if all fit.
    3. From each start, trades between the longest row and a shorter one: move one example over, or swap
       one for a shorter one, shifting d tokens with 0 < d < the gap between the rows (d nearest half the
       gap), until the longest row has no such trade. A trade never makes a row longer than the longest
       row was, so no row exceeds ``max_length`` or FFD's longest row; it lowers the sum of squared row
       lengths, so the loop ends.
    4. The result with the shorter longest row (then the next one, ...) wins; indices ascend in each row.

    The naive equivalent is plain FFD (step 1 alone, the previous version): the same number of rows, and
    its longest row is never shorter (a test asserts both). On the SFT benchmark's 160 timed batches (32
    examples of 17-53 tokens, rows of 128; computed from the token lengths, not timed) padding falls from
    9.2% of the packed tokens (FFD) to 1.3%, for about 0.15 ms of Python per batch.

    >>> pack_rows([5, 3, 4, 2], 8)  # FFD: [[0, 1], [2, 3]], rows of 8 and 6 tokens
    [[0, 3], [1, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    ffd: list[list[int]] = []
    free: list[int] = []
    for i in order:
        if lengths[i] > max_length:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the packing length {max_length}")
        for r, space in enumerate(free):
            if lengths[i] <= space:
                ffd[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            ffd.append([i])
            free.append(max_length - lengths[i])
    starts = [ffd]
    shortest_first: list[list[int]] = [[] for _ in ffd]
    load = [0] * len(ffd)
    for i in order:
        r = min(range(len(load)), key=load.__getitem__)
        if load[r] + lengths[i] > max_length:
            break
        shortest_first[r].append(i)
        load[r] += lengths[i]
    else:
        starts.append(shortest_first)

    def row_lengths(rows):
        return sorted((sum(lengths[i] for i in row) for row in rows), reverse=True)

    best = min((_trade_down(lengths, rows) for rows in starts), key=row_lengths)
    return sorted(sorted(row) for row in best)


def _trade_down(lengths: Sequence[int], rows: list[list[int]]) -> list[list[int]]:
    """Step 3 of :func:`pack_rows`: trades from the longest row until it has none (``rows`` is not changed)."""
    rows = [list(row) for row in rows]
    load = [sum(lengths[i] for i in row) for row in rows]
    while rows:
        top = max(range(len(rows)), key=load.__getitem__)
        for j in sorted(range(len(rows)), key=load.__getitem__):
            gap = load[top] - load[j]
            if gap < 2:  # no whole-token shift d with 0 < d < gap, here or in any longer row
                return rows
            trades = [(abs(gap - 2 * d), a, b, d) for a in rows[top] for b in (None, *rows[j])
                      if 0 < (d := lengths[a] - (0 if b is None else lengths[b])) < gap]
            if trades:
                _, a, b, d = min(trades, key=lambda t: t[0])
                rows[top].remove(a)
                rows[j].append(a)
                if b is not None:
                    rows[j].remove(b)
                    rows[top].append(b)
                load[top] -= d
                load[j] += d
                break
        else:
            return rows
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
