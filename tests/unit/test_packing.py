"""Packed rows give each example exactly the logprobs it gets alone (no cross-example attention)."""

import pytest
import torch

from alignkit.data import pad_batch, render_sft
from alignkit.data.packing import pack_batch, pack_rows
from alignkit.logprobs import sequence_logprobs
from alignkit.models import build_tiny


def test_pack_rows_first_fit_decreasing_and_too_long():
    assert pack_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than the packing length 8"):
        pack_rows([2, 9], 8)


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
