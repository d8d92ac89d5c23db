"""Preference pairs: rendering with the bad-input policy, and collation into one batch (chosen and rejected
together), plain or with their shared prefix computed once. Used by the reward-model and DPO recipes (and any
pairwise method: IPO, KTO-style, ORPO, SimPO...). The forward over these batches is
``alignkit.models.forwards.pair_logps``."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Pair:
    """A rendered pair (both sides start with the same prompt tokens); ``index`` keys a reference cache,
    ``margin`` is a required score gap (Llama 2's reward-model margin; 0 when the row has none)."""

    chosen: object  # RenderedExample
    rejected: object  # RenderedExample
    index: int = 0
    margin: float = 0.0


def render_pairs(tokenizer, records, *, max_length: int, on_overflow: str = "error", margin_field: str | None = None,
                 skip_identical: bool = True) -> tuple[list[Pair], list, dict]:
    """Records (typed or dicts) -> (pairs, their parsed records, {"dropped": over-long, "skipped_identical":
    chosen == rejected}). A pair over ``max_length`` is a DataError (``on_overflow="error"``) or dropped and
    counted; with ``skip_identical`` a pair whose sides render to the same tokens carries no preference: it is
    skipped, counted and logged. ``margin_field``: a numeric column read (and checked) as ``Pair.margin``."""
    from alignkit.data import DataError, parse_record, render_preference

    pairs, kept, counts = [], [], {"dropped": 0, "skipped_identical": 0}
    for i, raw in enumerate(records, start=1):
        rec = parse_record("preference", raw, row=i)
        margin = rec.extra.get(margin_field) if margin_field else None
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                   or not math.isfinite(margin)):
            raise DataError(rec.source, rec.row, margin_field, f"must be a finite number (got {margin!r})")
        out = render_preference(tokenizer, rec, max_length=max_length, on_overflow=on_overflow)
        if out is None:
            counts["dropped"] += 1
        elif skip_identical and out[0].input_ids == out[1].input_ids:
            counts["skipped_identical"] += 1
            log.warning("%s, row %d: chosen and rejected are identical; pair skipped", rec.source, rec.row)
        else:
            pairs.append(Pair(out[0], out[1], len(pairs), float(margin or 0.0)))
            kept.append(rec)
    if counts["dropped"]:
        log.warning("dropped %d pairs longer than max_length=%d", counts["dropped"], max_length)
    return pairs, kept, counts


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share.

    >>> common_prefix_length([5, 6, 7, 8], [5, 6, 9])
    2
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def collate_pairs(pairs: list[Pair], pad_token_id: int, *, share_prefix: bool = False) -> dict:
    """B pairs -> one batch holding chosen and rejected together; ``index`` [B] are the cache keys and
    ``margin`` [B] the pairs' margins.

    Plain (``share_prefix=False``, the slow twin): right-padded [2B, T] ``input_ids``, ``attention_mask``,
    ``response_mask``, chosen rows 0..B-1, rejected rows B..2B-1.

    Shared prefix (the fast path): ONE right-padded row per pair, ``chosen + rejected[S:]`` with S = the pair's
    common prefix (the prompt, and any common start of the two responses), so the prefix is computed once.
    [B, L] tensors: ``input_ids``; ``position_ids`` (the rejected part continues at S, as if it followed the
    prefix); ``segments`` 0 = shared prefix, 1 = rest of chosen, 2 = rest of rejected, 3 = padding (a token
    sees earlier tokens of its own segment and of the prefix: ``alignkit.models.forwards.prefix_sharing_mask``);
    ``prev`` = the column whose logits predict the token (column S-1 for the first token after the prefix);
    ``chosen_mask`` / ``rejected_mask`` = the column's token is a target of that side (a response token inside
    the prefix counts for both). ``pair_logps`` gives the same numbers for both layouts.
    """
    from alignkit.data import pad_batch

    index = torch.tensor([p.index for p in pairs], dtype=torch.long)
    margin = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    if not share_prefix:
        batch = pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id=pad_token_id)
        batch["response_mask"][:, 0] = 0  # the first token of a sequence is never a target
        return {**batch, "index": index, "margin": margin}
    rows = []
    for p in pairs:
        c, r = p.chosen, p.rejected
        S, Lc, Lr = common_prefix_length(c.input_ids, r.input_ids), len(c), len(r)
        rows.append((c.input_ids + r.input_ids[S:], list(range(Lc)) + list(range(S, Lr)),
                     [0] * S + [1] * (Lc - S) + [2] * (Lr - S),
                     [-1] + list(range(Lc - 1)) + ([S - 1] + list(range(Lc, Lc + Lr - S - 1)) if Lr > S else []),
                     [0] + c.response_mask[1:] + [0] * (Lr - S),
                     [0] + r.response_mask[1:S] + [0] * (Lc - S) + r.response_mask[S:]))
    width = max(len(row[0]) for row in rows)
    fills = (pad_token_id, 0, 3, 0, 0, 0)
    names = ("input_ids", "position_ids", "segments", "prev", "chosen_mask", "rejected_mask")
    out = {name: torch.tensor([row[k] + [fills[k]] * (width - len(row[0])) for row in rows], dtype=torch.long)
           for k, name in enumerate(names)}
    return {**out, "index": index, "margin": margin}


def row_length(pair: Pair, share_prefix: bool) -> int:
    """Columns the pair takes in a :func:`collate_pairs` batch (the sort key of length bucketing)."""
    c, r = pair.chosen.input_ids, pair.rejected.input_ids
    return len(c) + len(r) - common_prefix_length(c, r) if share_prefix else max(len(c), len(r))


def pair_lengths(batch: dict) -> torch.Tensor:
    """[2B] response token counts (EOS included), chosen then rejected, of a :func:`collate_pairs` batch in
    either layout (the length normalization of SimPO and ORPO).

    >>> from alignkit.data import RenderedExample
    >>> p = Pair(RenderedExample([5, 6, 7, 1], [0, 0, 1, 1]), RenderedExample([5, 6, 8, 9, 1], [0, 0, 1, 1, 1]))
    >>> pair_lengths(collate_pairs([p], 0)).tolist(), pair_lengths(collate_pairs([p], 0, share_prefix=True)).tolist()
    ([2, 3], [2, 3])
    """
    if "segments" in batch:
        return torch.cat([batch["chosen_mask"].sum(-1), batch["rejected_mask"].sum(-1)])
    return batch["response_mask"].sum(-1)
