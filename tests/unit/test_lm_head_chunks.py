"""The LM head in chunks (`alignkit.logprobs.head_logprobs`, issue 18) against its naive form, full [N, V]
logits: values, entropies, temperature and gradients, on random tensors and through the forwards that use it
(`sequence_logprobs`, `pair_logps`, the grouped completion logprobs) against their slow twins
(`slow_paths()`); which models take the route; and that no [rows > chunk, V] tensor is ever created."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import alignkit.logprobs as logprobs
from alignkit.data import RenderedExample
from alignkit.data.pairs import Pair, collate_pairs
from alignkit.logprobs import head_logprobs, head_route, sequence_logprobs
from alignkit.losses import entropy_from_logits
from alignkit.models import build_tiny, grouped
from alignkit.models.forwards import fast_paths_enabled, pair_logps, slow_paths


def naive(hidden, weight, bias, targets, temperature):
    z = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    return torch.log_softmax(z, -1).gather(-1, targets[:, None])[:, 0], entropy_from_logits(z)


def _leaves(n, h, v, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g)).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=g)).requires_grad_() if bias else None
    return hidden, weight, b, torch.randint(0, v, (n,), generator=g)


def _grads(leaves, loss):
    return torch.autograd.grad(loss, [x for x in leaves if x is not None], retain_graph=True)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_head_logprobs_equal_full_logits_values_and_gradients(temperature, chunk_rows, bias):
    hidden, weight, b, targets = _leaves(11, 8, 37, seed=chunk_rows, bias=bias)
    lp, ent = head_logprobs(hidden, weight, b, targets, temperature=temperature, entropy=True, chunk_rows=chunk_rows)
    ref_lp, ref_ent = naive(hidden, weight, b, targets, temperature)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == ent.shape == (11,)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    w_lp, w_ent = torch.linspace(-1, 1, 11), torch.linspace(0.5, -2, 11)  # weigh rows differently
    leaves = (hidden, weight, b)
    for got, want in [  # logprobs only, entropy only, both
        (_grads(leaves, (lp * w_lp).sum()), _grads(leaves, (ref_lp * w_lp).sum())),
        (_grads(leaves, (ent * w_ent).sum()), _grads(leaves, (ref_ent * w_ent).sum())),
        (_grads(leaves, (lp * w_lp + ent * w_ent).sum()), _grads(leaves, (ref_lp * w_lp + ref_ent * w_ent).sum())),
    ]:
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_head_logprobs_frozen_head_and_logprobs_only():
    hidden, weight, _, targets = _leaves(9, 6, 20, seed=1, bias=False)
    weight.requires_grad_(False)  # a LoRA policy's head: only the hidden states need a gradient
    lp = head_logprobs(hidden, weight, None, targets, temperature=0.9, chunk_rows=4)
    ref, _ = naive(hidden, weight, None, targets, 0.9)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    (got,), (want,) = _grads([hidden], lp.square().sum()), _grads([hidden], ref.square().sum())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        head_logprobs(hidden, weight, None, targets, temperature=0.0)
    assert head_logprobs(hidden[:0], weight, None, targets[:0]).shape == (0,)


def test_head_logprobs_bf16_autocast_close_to_full_logits():
    hidden, weight, b, targets = _leaves(7, 16, 30, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = head_logprobs(hidden, weight, b, targets, chunk_rows=2)
        logits = torch.nn.functional.linear(hidden, weight, b)  # bf16 under autocast, as the model's head
    ref = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    lp.sum().backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


# ---- through the models' forwards ----------------------------------------------------------------------

def _tiny():
    model, tok = build_tiny(seed=7)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random norm weights: the final norm before the head is then not the identity
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
    return model, tok


def _param_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 200, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("keep", [None, 5])
def test_sequence_logprobs_chunked_equals_full_logits(keep):
    model, _ = _tiny()
    assert head_route(model) is not None
    ids, mask = _batch()
    lp, ent = sequence_logprobs(model, ids, mask, temperature=0.7, return_entropy=True, logits_to_keep=keep)
    with slow_paths():
        assert not fast_paths_enabled()
        ref_lp, ref_ent = sequence_logprobs(model, ids, mask, temperature=0.7, return_entropy=True, logits_to_keep=keep)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)
    got = _param_grads(model, (lp * weights).sum() + ent.mean())
    with slow_paths():
        ref_lp, ref_ent = sequence_logprobs(model, ids, mask, temperature=0.7, return_entropy=True, logits_to_keep=keep)
    want = _param_grads(model, (ref_lp * weights).sum() + ref_ent.mean())
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_sequence_logprobs_packed_rows_chunked_equals_full_logits():
    model, _ = _tiny()
    ids, _ = _batch()
    mask = torch.ones_like(ids)
    pos = torch.tensor([list(range(5)) + list(range(7))] * 3)  # two examples per row
    lp = sequence_logprobs(model, ids, mask, position_ids=pos)
    with slow_paths():
        ref = sequence_logprobs(model, ids, mask, position_ids=pos)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)


def test_sequence_logprobs_env_switch_takes_the_full_logits(monkeypatch):
    monkeypatch.setenv("ALIGNKIT_SLOW_PATHS", "1")
    model, _ = _tiny()
    assert logprobs._fast_route(model) is None


def test_shared_prefix_pair_logps_chunked_equals_full_logits():
    model, _ = _tiny()
    prompt = [5, 6, 7, 8, 9, 10]
    pairs = [Pair(RenderedExample(prompt + [20, 21, 22], [0] * 6 + [1] * 3),
                  RenderedExample(prompt + [30, 31], [0] * 6 + [1] * 2), 0),
             Pair(RenderedExample([11, 12] + [40, 41, 42, 43], [0, 0, 1, 1, 1, 1]),
                  RenderedExample([11, 12] + [50], [0, 0, 1]), 1)]
    for share in (True, False):
        batch = collate_pairs(pairs, 0, share_prefix=share)
        got = pair_logps(model, batch)
        with slow_paths():
            want = pair_logps(model, batch)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        g = _param_grads(model, (got * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum())
        with slow_paths():
            w = _param_grads(model, (pair_logps(model, batch) * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum())
        for x, y in zip(g, w):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_which_models_take_the_head_route():
    model, _ = build_tiny(seed=1)
    decoder, head = head_route(model)
    assert decoder is model.model and head is model.lm_head
    lora = get_peft_model(build_tiny(seed=2)[0], LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert head_route(lora) is not None and head_route(lora)[1] is lora.get_base_model().lm_head
    on_head = get_peft_model(build_tiny(seed=3)[0], LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert head_route(on_head) is None  # the head's own adapter would be skipped
    capped, _ = build_tiny(seed=4)
    capped.config.final_logit_softcapping = 30.0
    assert head_route(capped) is None
    assert head_route(torch.nn.Linear(2, 2)) is None


class _VocabWatch(TorchDispatchMode):
    """The most rows of any newly allocated float tensor [..., vocab] (views skipped)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab and t.is_floating_point():
                    self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("lora", [False, True])
def test_no_logits_bigger_than_a_chunk_in_forward_and_backward(monkeypatch, lora):
    model, tok = _tiny()
    vocab = model.config.vocab_size
    monkeypatch.setattr(logprobs, "HEAD_CHUNK_BYTES", 4 * vocab * 4)  # 4 rows -> the floor, 16 rows a chunk
    if lora:
        model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    g = torch.Generator().manual_seed(5)
    prompt_ids = torch.randint(3, 200, (8, 6), generator=g).repeat_interleave(2, 0)
    completion_ids = torch.randint(3, 200, (16, 10), generator=g)
    ones_p, ones_c = torch.ones_like(prompt_ids), torch.ones_like(completion_ids)
    model.train()
    assert grouped.supports(model)
    with _VocabWatch(vocab) as w:
        lp, ent = grouped.grouped_completion_logprobs(model, prompt_ids, ones_p, completion_ids, ones_c,
                                                      temperature=0.8, return_entropy=True)
        (lp.sum() + ent.sum()).backward()
    assert 0 < w.rows <= 16 < lp.numel()  # 160 predicted tokens, at most a 16-row chunk of logits at once
    ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([ones_p, ones_c], 1)
    with _VocabWatch(vocab) as w:
        sequence_logprobs(model, ids, mask, return_entropy=True)[0].sum().backward()
    assert w.rows <= 16  # the model's own head runs on the last position only (16 rows x 1)
