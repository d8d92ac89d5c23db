"""`FastDecoder` (the lean Llama-family forward of the native rollout loop) against its naive form,
`model.forward`: prefill and decode-step logits, on Llama, Qwen2 (q/k/v biases), grouped-query attention and
an untied LM head, plain and with peft LoRA adapters (random nonzero B; merged and unmerged); which models it
accepts; and the native loop with and without it (same samples, same greedy tokens, LoRA included)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from alignkit.models import build_tiny
from alignkit.models.decoder import FastDecoder, length_buckets
from alignkit.rollout import generate
from alignkit.rollout.native import left_pad

PROMPTS = [[40, 41, 42], [50, 51, 52, 53, 54, 55, 56], [60], [70, 71, 72, 73, 74]]

CASES = {
    "llama": dict(arch="llama"),
    "qwen2": dict(arch="qwen2", seed=1),
    "gqa": dict(arch="llama", num_heads=4, num_kv_heads=2, seed=2),
    "untied": dict(arch="qwen2", tie_word_embeddings=False, hidden_size=32, num_heads=2, seed=3),
}


def _randomize_norms(model):
    """Random RMSNorm weights (fresh models have all-ones), so folding them into the projections is tested."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
    return model


def with_lora(model, *, targets="all-linear", seed=0):
    """peft LoRA adapters with random A and B (peft starts B at 0, a no-op adapter)."""
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.copy_((0.3 if "lora_A" in name else 0.05) * torch.randn(p.shape, generator=g))
    return lora


@pytest.mark.parametrize("buckets", ["one", "per_length"])
@pytest.mark.parametrize("lora", [None, "merged", "unmerged", "q_v_only"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_and_steps_equal_model_forward(case, lora, buckets):
    model, _ = build_tiny(**CASES[case])
    model = _randomize_norms(model)
    if lora is not None:
        model = with_lora(model, targets=["q_proj", "v_proj"] if lora == "q_v_only" else "all-linear", seed=len(case))
    assert FastDecoder.supports(model)
    group, steps = 3, 5
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoder = FastDecoder(model, ids.shape[1] + steps, merge_lora=None if lora is None else lora != "unmerged")
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        # per_length: every prompt length its own bucket (3 widths below the padded one, NaN-filled cache first)
        if buckets == "per_length":
            decoder.prefill(ids, mask, positions, repeats=group)
            for cache in (*decoder.keys, *decoder.values):
                cache.fill_(float("nan"))  # the next prefill must not read stale or uninitialized columns
        logits = decoder.prefill(ids, mask, positions, repeats=group,
                                 bucket_overhead=None if buckets == "one" else 0)
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
        seq = ids.repeat_interleave(group, 0)
        seq_mask = mask.repeat_interleave(group, 0)
        next_pos = positions[:, -1].repeat_interleave(group) + 1
        for _ in range(steps):
            tokens = torch.randint(3, 200, (seq.shape[0],), generator=g)
            logits = decoder.step(tokens, next_pos)
            seq = torch.cat([seq, tokens[:, None]], 1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(tokens)[:, None]], 1)
            full_pos = (seq_mask.cumsum(-1) - 1).clamp(min=0)
            ref = model(input_ids=seq, attention_mask=seq_mask, position_ids=full_pos).logits[:, -1]
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
            next_pos = next_pos + 1


def test_length_buckets_minimize_the_padded_cost():
    """The dynamic program against every split of the sorted rows into contiguous runs (its naive form)."""
    import itertools
    import random

    rnd = random.Random(0)
    for _ in range(200):
        lengths = [rnd.randint(1, 40) for _ in range(rnd.randint(1, 7))]
        overhead = rnd.choice([0, 5, 30, 1000])
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))

        def cost(buckets, lengths=lengths, overhead=overhead):
            return sum(len(b) * max(lengths[i] for i in b) + overhead for b in buckets)

        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))])
                   for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k))
        got = length_buckets(lengths, overhead)
        assert sorted(i for b in got for i in b) == list(range(len(lengths)))
        assert cost(got) == best


def test_select_keeps_the_chosen_rows():
    model, _ = build_tiny()
    ids, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    a, b = FastDecoder(model, ids.shape[1] + 3), FastDecoder(model, ids.shape[1] + 3)
    keep, then = torch.tensor([3, 0, 1]), torch.tensor([2, 0])
    with torch.inference_mode():
        a.prefill(ids, mask, positions)
        b.prefill(ids[keep[then]], mask[keep[then]], positions[keep[then]])
        a.select(keep)  # right after the prefill: only the prompt columns are copied
        pos = positions[keep, -1] + 1
        step_a = a.step(torch.tensor([90, 91, 92]), pos)
        torch.testing.assert_close(step_a[then], b.step(torch.tensor([92, 90]), pos[then]), atol=1e-6, rtol=0)
        a.select(then)  # after a decode step: the prompt columns and the step's key/value column
        out_a, out_b = a.step(torch.tensor([7, 8]), pos[then] + 1), b.step(torch.tensor([7, 8]), pos[then] + 1)
        torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=0)


def test_which_models_qualify():
    model, _ = build_tiny()
    assert FastDecoder.supports(model)
    lora = get_peft_model(build_tiny(seed=4)[0], LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert FastDecoder.supports(lora) and FastDecoder.supports(lora.base_model.model)
    on_head = get_peft_model(build_tiny(seed=4)[0], LoraConfig(r=2, target_modules=["lm_head"]))
    assert not FastDecoder.supports(on_head)
    biased = get_peft_model(build_tiny(seed=4)[0], LoraConfig(r=2, target_modules=["q_proj"], lora_bias=True))
    assert not FastDecoder.supports(biased)
    dropout = get_peft_model(build_tiny(seed=4)[0], LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.1))
    assert not FastDecoder.supports(dropout.train()) and FastDecoder.supports(dropout.eval())
    merged = get_peft_model(build_tiny(seed=4)[0], LoraConfig(r=2, target_modules=["q_proj"]))
    merged.merge_adapter()
    assert not FastDecoder.supports(merged)
    gelu, _ = build_tiny(seed=5)
    gelu.config.hidden_act = "gelu"
    assert not FastDecoder.supports(gelu)
    with pytest.raises(ValueError, match="does not support"):
        FastDecoder(gelu, 16)


@pytest.mark.parametrize("case", ["llama", "qwen2", "gqa"])
def test_native_loop_same_samples_with_and_without_the_decoder(case):
    model, tok = build_tiny(**CASES[case])
    prompts = ["hello there", "a", "what is 12+7 ?"]
    kwargs = dict(num_samples=3, max_new_tokens=12, temperature=1.0, top_k=50, seed=3)
    fast = generate(model, tok, prompts, **kwargs)
    slow = generate(model, tok, prompts, fast=False, **kwargs)
    assert torch.equal(fast.completion_ids, slow.completion_ids)
    torch.testing.assert_close(fast.rollout_logprobs, slow.rollout_logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["llama", "qwen2", "gqa"])
def test_native_loop_with_lora_same_samples_and_greedy_tokens_with_and_without_the_decoder(case):
    """The fast decoder runs on LoRA policies (adapters merged into its snapshot): the same samples and
    logprobs as the peft model's own forward, greedy token-identical, and with the adapters disabled the
    base model's samples."""
    model, tok = build_tiny(**CASES[case])
    lora = with_lora(model, seed=11)
    prompts = ["hello there", "a", "what is 12+7 ?"]
    kwargs = dict(num_samples=3, max_new_tokens=12, temperature=1.0, top_k=50, seed=3)
    fast, slow = generate(lora, tok, prompts, **kwargs), generate(lora, tok, prompts, fast=False, **kwargs)
    assert torch.equal(fast.completion_ids, slow.completion_ids)
    torch.testing.assert_close(fast.rollout_logprobs, slow.rollout_logprobs, atol=1e-5, rtol=0)
    greedy = dict(num_samples=1, max_new_tokens=16, temperature=0.0)
    g_fast, g_slow = generate(lora, tok, prompts, **greedy), generate(lora, tok, prompts, fast=False, **greedy)
    assert torch.equal(g_fast.completion_ids, g_slow.completion_ids)
    with lora.disable_adapter():
        off, base = generate(lora, tok, prompts, **greedy), generate(lora, tok, prompts, fast=False, **greedy)
    assert torch.equal(off.completion_ids, base.completion_ids)
    assert not torch.equal(off.completion_ids, g_fast.completion_ids)  # the adapter changes the samples
