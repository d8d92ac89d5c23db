"""The rollout engine on the tiny model: greedy parity with `model.generate`, logprob parity with a fresh
forward pass, finish reasons and masks, group layout, seeding, and input errors."""

import pytest
import torch

from alignkit.logprobs import sequence_logprobs
from alignkit.models import build_tiny
from alignkit.rollout import Rollout, generate
from alignkit.rollout.native import left_pad

PROMPTS = ["hello", "a longer prompt, here", "xy", "The quick brown fox"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


@pytest.fixture(scope="module")
def tiny_qwen():
    return build_tiny(arch="qwen2", seed=1)


def _hf_greedy(model, tok, prompts, max_new_tokens, eos):
    ids, mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id,
                         torch.device("cpu"))
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tok.pad_token_id, eos_token_id=eos)
    return out[:, ids.shape[1]:].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_native_greedy_equals_hf_generate(arch, tiny, tiny_qwen):
    model, tok = tiny if arch == "llama" else tiny_qwen
    # pick as EOS a token row 1 emits mid-way, so rows finish at different steps and leave the batch
    free = _hf_greedy(model, tok, PROMPTS, 24, eos=None)
    eos = [tok.eos_token_id, free[1][6]]
    reference = _hf_greedy(model, tok, PROMPTS, 24, eos=eos)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        rollout = generate(model, tok, PROMPTS, max_new_tokens=24, temperature=0.0)
    finally:
        model.generation_config.eos_token_id = saved
    assert "eos" in rollout.finish_reasons and "length" in rollout.finish_reasons
    for row, ref, n in zip(rollout.completion_ids.tolist(), reference, rollout.completion_lengths.tolist()):
        assert row[:n] == ref[:n]
        assert all(t == tok.pad_token_id for t in row[n:])


def test_logprobs_match_fresh_forward(tiny):
    model, tok = tiny
    rollout = generate(model, tok, PROMPTS, num_samples=3, max_new_tokens=16, temperature=0.7, top_k=40,
                       top_p=0.9, seed=0)
    assert rollout.temperature == 0.7
    fresh = sequence_logprobs(model, rollout.input_ids, rollout.attention_mask, temperature=0.7)
    mask = rollout.sequence_response_mask.bool()
    width = rollout.prompt_ids.shape[1]
    torch.testing.assert_close(fresh[:, width:] * rollout.response_mask, rollout.rollout_logprobs,
                               atol=1e-5, rtol=0)
    assert mask.sum() == rollout.response_mask.sum()
    greedy = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0.0)
    assert greedy.temperature == 1.0
    fresh = sequence_logprobs(model, greedy.input_ids, greedy.attention_mask)
    torch.testing.assert_close(fresh[:, greedy.prompt_ids.shape[1]:] * greedy.response_mask,
                               greedy.rollout_logprobs, atol=1e-5, rtol=0)


def test_group_layout_and_prefix_sharing(tiny):
    model, tok = tiny
    one = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=0.0)
    three = generate(model, tok, PROMPTS, num_samples=3, max_new_tokens=10, temperature=0.0)
    assert len(three) == 12 and three.num_prompts == 4 and three.group_size == 3
    assert three.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # every sample of a group decodes greedily like the single-sample run (the shared cache is right)
    assert torch.equal(three.completion_ids, one.completion_ids.repeat_interleave(3, dim=0))
    assert torch.equal(three.prompt_ids, one.prompt_ids.repeat_interleave(3, dim=0))
    sampled = generate(model, tok, PROMPTS, num_samples=4, max_new_tokens=10, temperature=1.0, seed=0)
    assert len({tuple(r) for r in sampled.completion_ids[:4].tolist()}) > 1  # samples of a group differ


def test_seed_reproducible(tiny):
    model, tok = tiny
    kw = dict(num_samples=3, max_new_tokens=12, temperature=1.0, top_p=0.95)
    a = generate(model, tok, PROMPTS, seed=5, **kw)
    b = generate(model, tok, PROMPTS, seed=5, **kw)
    c = generate(model, tok, PROMPTS, seed=6, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    assert not torch.equal(a.completion_ids, c.completion_ids)
    torch.manual_seed(0)
    d = generate(model, tok, PROMPTS, **kw)
    torch.manual_seed(0)
    e = generate(model, tok, PROMPTS, **kw)
    assert torch.equal(d.completion_ids, e.completion_ids)  # seed=None follows torch's global RNG


def test_eos_stop_length_reasons_and_masks(tiny):
    model, tok = tiny
    free = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0.0)
    eos_tok = free.completion_ids[0, 0].item()  # prompt 0's first greedy token ends it at once
    stop = tok.decode(free.completion_ids[1, 1:3].tolist())  # completed by prompt 1's third token
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, eos_tok]
    try:
        runs = [generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0.0, stop=[stop], backend=b)
                for b in ("native", "hf")]
    finally:
        model.generation_config.eos_token_id = saved
    for r in runs:
        assert r.finish_reasons[0] == "eos" and r.response_mask[0].tolist()[:2] == [1, 0]
        assert r.completions[0] == tok.decode([]) or r.completions[0] == ""
        assert r.finish_reasons[1] == "stop" and r.completion_lengths[1].item() <= 3
        assert stop not in r.completions[1]
        for i, reason in enumerate(r.finish_reasons):
            n = r.completion_lengths[i].item()
            assert r.response_mask[i, :n].all() and not r.response_mask[i, n:].any()
            assert (r.completion_ids[i, n:] == tok.pad_token_id).all()
            assert (r.rollout_logprobs[i, n:] == 0).all()
            if reason == "length":
                assert n == 8
    assert runs[0].finish_reasons == runs[1].finish_reasons
    assert torch.equal(runs[0].response_mask, runs[1].response_mask)
    assert runs[0].completions == runs[1].completions


def test_stop_strings_while_sampling(tiny):
    model, tok = tiny
    stops = list("aeiou ")
    text = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    r = generate(model, tok, PROMPTS, num_samples=4, max_new_tokens=20, temperature=1.0, stop=stops, seed=3)
    assert "stop" in r.finish_reasons
    for i, reason in enumerate(r.finish_reasons):
        n = r.completion_lengths[i].item()
        ids = r.completion_ids[i, :n].tolist()
        if reason == "stop":  # the last kept token completes a stop string, none completes earlier
            assert any(s in text(ids) for s in stops)
            assert not any(s in text(ids[:-1]) for s in stops)
            assert not any(s in r.completions[i] for s in stops)
        elif reason == "length":
            assert not any(s in text(ids) for s in stops)


def test_token_id_prompts_and_record(tiny):
    model, tok = tiny
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    a = generate(model, tok, ids, max_new_tokens=6, temperature=0.0)
    b = generate(model, tok, PROMPTS, max_new_tokens=6, temperature=0.0)
    assert isinstance(a, Rollout) and torch.equal(a.completion_ids, b.completion_ids)
    assert a.input_ids.shape == (4, a.prompt_ids.shape[1] + a.completion_ids.shape[1])
    assert a.attention_mask.sum().item() == sum(map(len, ids)) + a.response_mask.sum().item()
    model.train()
    generate(model, tok, PROMPTS, max_new_tokens=2, temperature=0.0)
    assert model.training  # mode restored
    model.eval()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[]), "empty"),
        (dict(num_samples=0), "num_samples"),
        (dict(temperature=0.0, do_sample=True), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=["x" * 600]), "longer than the model's context"),
        (dict(prompts=["x" * 500], max_new_tokens=20), "exceeds the model's context"),
        (dict(prompts=[[]]), "empty"),
        (dict(prompts=[[5, 100_000]]), "vocabulary"),
        (dict(stop=[""]), "stop"),
        (dict(backend="tgi"), "backend"),
        (dict(backend="hf", compile=True), "compile"),
    ],
)
def test_bad_input_is_a_clear_error(tiny, kwargs, match):
    model, tok = tiny
    call = dict(prompts=["hi"], max_new_tokens=4)
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(model, tok, call.pop("prompts"), **call)


def test_vllm_missing_is_a_clear_error(tiny):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        model, tok = tiny
        with pytest.raises(ImportError, match="pip install"):
            generate(model, tok, ["hi"], max_new_tokens=2, backend="vllm")
    else:
        pytest.skip("vllm is installed")


@pytest.mark.slow
def test_compiled_decode_step_matches_eager(tiny):
    model, tok = tiny
    a = generate(model, tok, PROMPTS, num_samples=2, max_new_tokens=8, temperature=1.0, seed=0)
    b = generate(model, tok, PROMPTS, num_samples=2, max_new_tokens=8, temperature=1.0, seed=0, compile=True)
    assert torch.equal(a.completion_ids, b.completion_ids)
    torch.testing.assert_close(a.rollout_logprobs, b.rollout_logprobs, atol=1e-4, rtol=0)
    # rows that finish early stay in the compiled (static) batch but must end exactly as in eager mode
    free = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0.0)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, free.completion_ids[1, 0].item()]
    try:
        c, d = (generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0.0, compile=flag) for flag in (False, True))
    finally:
        model.generation_config.eos_token_id = saved
    assert "eos" in c.finish_reasons and c.finish_reasons == d.finish_reasons
    assert torch.equal(c.completion_ids, d.completion_ids) and torch.equal(c.response_mask, d.response_mask)
