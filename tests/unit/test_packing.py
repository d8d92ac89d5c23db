"""Packed rows give each example exactly the logprobs it gets alone (no cross-example attention)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data import pad_batch, render_sft
from alignkit.data.packing import pack_batch, pack_rows
from alignkit.logprobs import sequence_logprobs
from alignkit.models import build_tiny


def first_fit_decreasing(lengths, max_length):
    """The naive equivalent of ``pack_rows`` (its previous version): FFD alone."""
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(max_length - lengths[i])
    return rows


def row_lengths(lengths, rows):
    return [sum(lengths[i] for i in row) for row in rows]


def test_pack_rows_balances_rows_and_too_long_raises():
    # FFD: 5 then 3 fill row 0 (8 tokens), 4 + 2 go to row 1 (6): padded to 8, 2 padding tokens.
    assert first_fit_decreasing([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    # balanced: swapping 5 and 4 (d = 1, half the gap of 2) gives 5 + 2 = 7 and 3 + 4 = 7: no padding
    assert pack_rows([5, 3, 4, 2], 8) == [[0, 3], [1, 2]]
    # FFD: 10+9+1 | 8+7+2 | 6 = 20, 17, 6 (padded to 20: 23 padding tokens); balanced: 15, 15, 13 (2)
    lengths = [10, 9, 8, 7, 6, 2, 1]
    assert row_lengths(lengths, first_fit_decreasing(lengths, 20)) == [20, 17, 6]
    assert row_lengths(lengths, pack_rows(lengths, 20)) == [13, 15, 15]
    # the shortest-row-first start is 3+2+2 | 3+2 = 7, 5 here; a 3-for-2 swap makes it 6, 6 like FFD's
    # 3+3 | 2+2+2, and on a tie FFD's rows are kept
    assert pack_rows([3, 3, 2, 2, 2], 7) == [[0, 1], [2, 3, 4]]
    assert pack_rows([], 8) == []
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than the packing length 8"):
        pack_rows([2, 9], 8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 64), max_size=48), st.integers(1, 64))
def test_pack_rows_properties_against_first_fit_decreasing(lengths, max_length):
    lengths = [min(n, max_length) for n in lengths]
    rows = pack_rows(lengths, max_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # every index exactly once
    assert all(row for row in rows) and all(row == sorted(row) for row in rows)
    assert all(n <= max_length for n in row_lengths(lengths, rows))
    ffd = first_fit_decreasing(lengths, max_length)
    assert len(rows) == len(ffd)
    assert max(row_lengths(lengths, rows), default=0) <= max(row_lengths(lengths, ffd), default=0)
    assert pack_rows(lengths, max_length) == rows  # deterministic


def test_pack_rows_cuts_padding_on_sft_like_batches():
    """Batches like the SFT benchmark's (32 examples of 17-53 tokens, rows of 128): FFD wastes 8.0% of the
    packed tokens on padding here, the balanced rows 1.2%."""
    gen = torch.Generator().manual_seed(0)
    waste = {"ffd": 0, "balanced": 0}
    total = {"ffd": 0, "balanced": 0}
    for _ in range(50):
        lengths = torch.randint(17, 54, (32,), generator=gen).tolist()
        for name, rows in (("ffd", first_fit_decreasing(lengths, 128)), ("balanced", pack_rows(lengths, 128))):
            width = max(row_lengths(lengths, rows))
            waste[name] += len(rows) * width - sum(lengths)
            total[name] += len(rows) * width
    assert waste["balanced"] / total["balanced"] < 0.5 * waste["ffd"] / total["ffd"]


def test_pack_rows_doctest():
    import doctest

    import alignkit.data.packing as packing

    assert doctest.testmod(packing).failed == 0


def test_packed_per_example_logprobs_equal_unpacked():
    model, tok = build_tiny()
    recs = [{"prompt": "12+7", "completion": "<answer>19</answer>"}, {"text": "hello world"},
            {"prompt": "3", "completion": "x"}, {"prompt": "45-5", "completion": "<think>45-5=40</think><answer>40</answer>"}]
    examples = [render_sft(tok, r) for r in recs]
    packed = pack_batch(examples, max_length=80, pad_token_id=tok.pad_token_id)
    assert packed["input_ids"].shape[0] < len(examples)  # several examples share a row
    with torch.no_grad():
        lp_packed = sequence_logprobs(model, packed["input_ids"], packed["attention_mask"],
                                      position_ids=packed["position_ids"])
        padded = pad_batch(examples, pad_token_id=tok.pad_token_id)
        lp_padded = sequence_logprobs(model, padded["input_ids"], padded["attention_mask"])
    padded["response_mask"][:, 0] = 0
    per_example_padded = (lp_padded * padded["response_mask"]).sum(-1)
    total_packed = (lp_packed * packed["response_mask"]).sum().item()
    assert total_packed == pytest.approx(per_example_padded.sum().item(), abs=1e-4)
    # each example's own sum, located by the same first-fit-decreasing grouping pack_batch used
    groups = pack_rows([len(e) for e in examples], 80)
    for r, group in enumerate(groups):
        col = 0
        for i in group:
            n = len(examples[i])
            got = (lp_packed[r, col:col + n] * packed["response_mask"][r, col:col + n]).sum()
            assert got.item() == pytest.approx(per_example_padded[i].item(), abs=1e-5), i
            col += n
