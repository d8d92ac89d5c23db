"""benchmarks/_real.py: the real-size benchmarks' workload, reward and floor arithmetic, checked by hand."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # _real imports _flops as its sibling, as the scripts do
_spec = importlib.util.spec_from_file_location("_real", BENCH / "_real.py")
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)


def test_word_problems_are_two_digit_chat_questions_with_exact_answers():
    rows = _real.word_problems(20, seed=3)
    assert rows == _real.word_problems(20, seed=3)  # seeded
    for i, row in enumerate(rows):
        (message,) = row["prompt"]
        assert message["role"] == "user"
        words = message["content"].split()
        a, op, b = int(words[2]), words[3], int(words[4].rstrip("?"))
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert op == ("minus" if i % 2 else "plus")
        assert int(row["answer"]) == (a - b if op == "minus" else a + b) >= 0


@pytest.mark.parametrize("text, value", [
    ("47 plus 18 is 65.", 65), ("The answer is 1,234", 1234), ("-7", -7), ("none here", None),
    ("65, then 66,", 66), ("x - y", None),
])
def test_last_integer(text, value):
    assert _real.last_integer(text) == value


def test_last_integer_reward_plain_and_conversational():
    assert _real.last_integer_reward("So 47 + 18 = 65", answer="65") == 1.0
    assert _real.last_integer_reward("65, no wait, 64", answer="65") == 0.0
    assert _real.last_integer_reward([{"role": "assistant", "content": "It is 65."}], answer="65") == 1.0
    assert _real.last_integer_reward("", answer="1") == 0.0


def test_floor_arithmetic():
    # N = 1e8: 3 trained tokens at 6N + 5 forward-only tokens at 2N = 1.8e9 + 1.0e9
    flops = _real.floor_flops(1e8, trained_tokens=3, forward_tokens=5)
    assert flops == 2.8e9
    assert _real.floor_seconds(flops, 2.8) == pytest.approx(1.0)       # 2.8 GFLOP/s
    assert _real.floor_share(flops, 2.8, 4.0) == pytest.approx(0.25)  # measured 4 s: a quarter of the rate


def test_grpo_floor_tokens():
    # 2 prompts of 30 and 40 tokens, 100 completion tokens: prefill once per prompt, sample, train
    assert _real.grpo_floor_tokens([30, 40], 8, 100, beta=0.0) == {"trained": 170, "forward": 170}
    # beta > 0: the reference forward over the trained tokens again
    assert _real.grpo_floor_tokens([30, 40], 8, 100, beta=0.04) == {"trained": 170, "forward": 340}


def test_projection_shapes_smollm2_135m():
    config = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
              "intermediate_size": 1536, "vocab_size": 49152}
    # qkv: (9 + 2 * 3) * 64 = 960; gate+up: 2 * 1536
    assert _real.projection_shapes(config) == [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 49152)]


def test_n_params_counts_a_tied_head_once():
    import torch

    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "proj": torch.nn.Linear(4, 4)})
    assert _real.n_params(model) == 40 + 20


def test_watch_finds_the_largest_vocab_wide_allocation_and_counts_matmuls():
    import torch

    x, w = torch.randn(6, 4), torch.randn(4, 11)
    out: dict = {}
    with _real.watch(11, out):
        logits = x @ w                 # [6, 11]: 6 rows, 2 * 6 * 4 * 11 = 528 FLOPs
        logits[:2].t().t()             # views: not allocations
        torch.randn(3, 11) * 2         # 3 rows
    assert out["max_vocab_rows"] == 6
    assert out["matmul_flops"] == 528
    assert out["max_vocab_mib"] == pytest.approx(6 * 11 * 4 / 2**20)


def test_ratio_line():
    assert _real.ratio_line("tok/s", 6.0, 2.0, 2) == "tok/s: 3.00x (bar 2x: MET)"
    assert _real.ratio_line("s/step", 2.0, 3.0, 3, higher_is_better=False) == "s/step: 1.50x (bar 3x: NOT met)"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rollout_shapes_phases_and_eos_lengths():
    import torch

    rollout = _load("real_rollout")
    assert rollout.parse_shapes("4x4, 8x8") == [(4, 4), (8, 8)]
    with pytest.raises(argparse.ArgumentTypeError):
        rollout.parse_shapes("4by4")
    p = rollout.phase_breakdown({"prefill": 1.0, "decode_forward": 6.0, "missing": []}, 10.0)
    assert p["seconds"]["other"] == pytest.approx(3.0) and p["share"]["decode_forward"] == 0.6
    completion = torch.tensor([[5, 2, 7, 7], [5, 5, 5, 5], [2, 9, 9, 9]])
    assert rollout.first_eos_lengths(completion, [2]) == [2, 4, 1]  # up to and including EOS
    assert rollout.first_eos_lengths(completion, []) == [4, 4, 4]


def test_grpo_shape_parser():
    grpo = _load("real_grpo_vs_trl")
    assert grpo.parse_shape("8x8") == (8, 8)
    with pytest.raises(argparse.ArgumentTypeError):
        grpo.parse_shape("8x1")  # G must be >= 2


def test_train_records_steps_and_conversational_form():
    train = _load("real_train_vs_trl")
    sft, pref = train.records(6, seed=0)
    for s, p in zip(sft, pref):
        assert s["completion"] == p["chosen"] and s["completion"].endswith(f" {s['answer']}.")
        assert _real.last_integer(p["rejected"]) != int(p["answer"])  # the rejected answer is wrong
    conv = train.conversational(pref[:1])[0]
    assert conv["prompt"] == [{"role": "user", "content": pref[0]["prompt"]}]
    assert conv["rejected"] == [{"role": "assistant", "content": pref[0]["rejected"]}]
    # marks at the start of steps 0..4 and the end of step 4: warm-up 1, then 3 timed, the last left out
    assert train.step_times([0.0, 5.0, 6.0, 8.0, 11.0, 20.0], 1, 3) == [1.0, 2.0, 3.0]
    with pytest.raises(RuntimeError):
        train.step_times([0.0, 1.0], 1, 3)
