"""`alignkit.models.grouped` (each distinct prompt computed once) against its naive form, the plain forward
over prompt + completion (`sequence_logprobs`): logprobs, entropies and parameter gradients."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from alignkit.logprobs import sequence_logprobs
from alignkit.models import build_tiny, grouped
from alignkit.rollout import generate

CASES = {"llama": dict(), "qwen2": dict(arch="qwen2", seed=1), "gqa": dict(num_heads=4, num_kv_heads=2, seed=2)}


def _batch(model, tok):
    """9 rows (3 prompts x 3), completions cut to different lengths (1..10 tokens, right-padded) as EOS would."""
    ro = generate(model, tok, ["hello there", "a", "what is 12+7 ?"], num_samples=3, max_new_tokens=10, seed=1)
    lengths = torch.tensor([10, 3, 7, 1, 10, 5, 2, 9, 6])
    mask = (torch.arange(10)[None] < lengths[:, None]).long()
    ids = ro.completion_ids.masked_fill(mask == 0, tok.pad_token_id)
    return ro.prompt_ids, ro.prompt_mask, ids, mask


def _naive(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    c = completion_ids.shape[1]
    ids, attn = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    lp, ent = sequence_logprobs(model, ids, attn, temperature=temperature, return_entropy=True)
    return lp[:, -c:], ent[:, -c:] * completion_mask


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_equal_the_plain_forward(case):
    model, tok = build_tiny(**CASES[case])
    batch = _batch(model, tok)
    assert len(set(map(tuple, batch[0].tolist()))) == 3  # 9 rows, 3 distinct prompts
    model.train()
    lp, ent = grouped.grouped_completion_logprobs(model, *batch, temperature=0.7, return_entropy=True)
    ref_lp, ref_ent = _naive(model, *batch, 0.7)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)  # a loss that weighs tokens differently
    got, want = _grads(model, (lp * weights).sum()), _grads(model, (ref_lp * weights).sum())
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=1e-4, msg=name)


def test_slices_that_split_a_group_give_the_same_values():
    model, tok = build_tiny()
    batch = _batch(model, tok)
    whole = grouped.grouped_completion_logprobs(model, *batch)
    parts = [grouped.grouped_completion_logprobs(model, *(t[s:s + 2] for t in batch)) for s in range(0, 9, 2)]
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-6, rtol=0)


def test_prompt_groups_are_consecutive_equal_rows():
    ids = torch.tensor([[0, 5], [0, 5], [6, 5], [6, 5], [0, 5]])
    mask = torch.tensor([[0, 1], [0, 1], [1, 1], [1, 1], [0, 1]])
    first, group = grouped.prompt_groups(ids, mask)
    assert first.tolist() == [0, 2, 4] and group.tolist() == [0, 0, 1, 1, 2]


def test_which_models_qualify():
    model, _ = build_tiny()
    assert grouped.supports(model.train()) and grouped.supports(model.eval())
    assert not grouped.supports(get_peft_model(build_tiny(seed=3)[0], LoraConfig(r=2, target_modules=["q_proj"])))
    model.config.attention_dropout = 0.1
    assert not grouped.supports(model.train()) and grouped.supports(model.eval())
