"""The grouped training forward (`alignkit.models.grouped`, what every GRPO update runs) on the real model:
logprobs, entropies and parameter gradients equal the plain forward's (`slow_paths()`: model.forward's full
logits), on chat prompts of different lengths with completions cut at different lengths."""

import pytest
import torch

from alignkit.logprobs import sequence_logprobs
from alignkit.models import grouped
from alignkit.models.forwards import slow_paths
from alignkit.rollout import generate

pytestmark = pytest.mark.real

CHATS = [[{"role": "user", "content": "What is 12 plus 35?"}], [{"role": "user", "content": "Name a colour, please."}]]


def test_grouped_equals_the_plain_forward_on_the_real_model(real_model):
    model, tok = real_model
    ro = generate(model, tok, CHATS, num_samples=2, max_new_tokens=12, temperature=1.0, seed=3)
    lengths = torch.tensor([12, 5, 9, 1])
    mask = (torch.arange(ro.completion_ids.shape[1])[None] < lengths[:, None]).long()
    batch = (ro.prompt_ids, ro.prompt_mask, ro.completion_ids.masked_fill(mask == 0, tok.pad_token_id), mask)
    model.train()
    try:
        lp, ent = grouped.grouped_completion_logprobs(model, *batch, return_entropy=True)
        weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)
        model.zero_grad()
        ((lp * weights).sum() + ent.mean()).backward()
        got = {n: p.grad.clone() for n, p in model.named_parameters() if "layers.3." in n or n == "model.norm.weight"}
        ids, attn = torch.cat([batch[0], batch[2]], 1), torch.cat([batch[1], batch[3]], 1)
        with slow_paths():
            ref_lp, ref_ent = sequence_logprobs(model, ids, attn, return_entropy=True)
        c = mask.shape[1]
        ref_lp, ref_ent = ref_lp[:, -c:], ref_ent[:, -c:] * mask
        model.zero_grad()
        ((ref_lp * weights).sum() + ref_ent.mean()).backward()
        want = {n: p.grad.clone() for n, p in model.named_parameters() if n in got}
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    torch.testing.assert_close(lp, ref_lp, atol=2e-4, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=2e-4, rtol=0)
    assert got
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=2e-3, msg=name)
