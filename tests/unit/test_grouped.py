"""`alignkit.models.grouped` (each distinct prompt computed once) against its naive form, the plain forward
over prompt + completion with full logits (`sequence_logprobs` under `slow_paths()`): logprobs, entropies and
parameter gradients, plain and with LoRA adapters (peft, random nonzero B)."""

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from alignkit.logprobs import sequence_logprobs
from alignkit.models import build_tiny, grouped
from alignkit.models.forwards import completion_logprobs, slow_paths
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
    with slow_paths():  # model.forward's own [B, T, V] logits
        lp, ent = sequence_logprobs(model, ids, attn, temperature=temperature, return_entropy=True)
    return lp[:, -c:], ent[:, -c:] * completion_mask


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def with_lora(model, *, targets="all-linear", r=4, seed=0, dropout=0.0):
    """``model`` with peft LoRA adapters whose B is random (peft starts it at 0: the adapter would be a no-op)."""
    lora = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=dropout))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.copy_((0.3 if "lora_A" in name else 0.05) * torch.randn(p.shape, generator=g))
    return lora


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


@pytest.mark.parametrize("targets", ["all-linear", "q_proj,v_proj,down_proj"])
@pytest.mark.parametrize("case", ["llama", "qwen2", "gqa"])
def test_lora_values_and_gradients_equal_the_plain_forward(case, targets):
    model, tok = build_tiny(**CASES[case])
    batch = _batch(model, tok)
    lora = with_lora(model, targets=targets if targets == "all-linear" else targets.split(","), seed=len(case))
    lora.train()
    assert grouped.supports(lora)
    lp, ent = grouped.grouped_completion_logprobs(lora, *batch, temperature=0.7, return_entropy=True)
    ref_lp, ref_ent = _naive(lora, *batch, 0.7)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)
    got, want = _grads(lora, (lp * weights).sum() + ent.mean()), _grads(lora, (ref_lp * weights).sum() + ref_ent.mean())
    assert got and all("lora_" in name for name in got)  # the adapters train, the base does not
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=1e-4, msg=name)
    with torch.no_grad(), lora.disable_adapter():  # the reference of a LoRA run: the base model
        off = grouped.grouped_completion_logprobs(lora, *batch, temperature=0.7)
        base = _naive(lora, *batch, 0.7)[0]
    torch.testing.assert_close(off, base, atol=1e-5, rtol=0)
    assert (off - lp.detach()).abs().max() > 1e-2  # the adapter changes the logprobs


def test_lora_through_the_recipe_entry_point_with_and_without_gradients(monkeypatch):
    """`completion_logprobs` (what GRPO calls) on a LoRA policy takes the grouped path, under no_grad (old and
    reference logprobs) and with gradients (the update); both equal the slow twin."""
    model, tok = build_tiny(seed=5)
    prompt_ids, prompt_mask, ids, mask = _batch(model, tok)
    lora = with_lora(model, seed=9)
    b = SimpleNamespace(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=ids, response_mask=mask)
    calls, real = [], grouped.grouped_completion_logprobs
    monkeypatch.setattr(grouped, "grouped_completion_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        no_grad = completion_logprobs(lora, b, slice(0, 9), temperature=1.0)
    unmerged = completion_logprobs(lora, b, slice(0, 9), temperature=1.0)
    with slow_paths(), torch.no_grad():
        slow = completion_logprobs(lora, b, slice(0, 9), temperature=1.0)
    assert len(calls) == 2
    torch.testing.assert_close(no_grad, slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(unmerged.detach(), slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_the_backward_keeps_the_parameters_not_weight_copies(lora):
    """What autograd saves for the backward: activations, and the parameters themselves; no tensor of a
    weight's shape (or of concatenated/transposed weights) that is a copy. Folded copies (FastDecoder's form)
    stayed alive from forward to backward: 425 MB on SmolLM2-135M."""
    model, tok = build_tiny(seed=4)
    batch = _batch(model, tok)
    model = with_lora(model, seed=4) if lora else model
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_dims = {64, 128, 192, 256, 320, 512}  # hidden, q/k/v outs, inter, and their concatenations
    rows = {int(batch[1][::3].sum()), int(batch[3].sum()), int(batch[1][::3].numel()), int(batch[3].numel())}
    assert not rows & weight_dims  # token-row counts cannot be mistaken for weight dims
    copies = []

    def pack(t):
        if t.dim() == 2 and set(t.shape) <= weight_dims and t.untyped_storage().data_ptr() not in params:
            copies.append(tuple(t.shape))
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp = grouped.grouped_completion_logprobs(model, *batch)
    lp.sum().backward()
    assert not copies, f"weight copies saved for the backward: {copies}"


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
    assert grouped.supports(get_peft_model(build_tiny(seed=3)[0], LoraConfig(r=2, target_modules=["q_proj"])))
    dropout = get_peft_model(build_tiny(seed=3)[0], LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.1))
    assert not grouped.supports(dropout.train()) and grouped.supports(dropout.eval())  # no per-module dropout
    dora = get_peft_model(build_tiny(seed=3)[0], LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert not grouped.supports(dora)
    model.config.attention_dropout = 0.1
    assert not grouped.supports(model.train()) and grouped.supports(model.eval())
