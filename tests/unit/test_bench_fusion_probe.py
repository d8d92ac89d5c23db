"""benchmarks/fusion_probe.py: its lean forward is model.forward's computation, and its GRPO batch is the
benchmark's layout (so the times it prints compare like with like)."""

import importlib.util
import json
from pathlib import Path

import torch

from alignkit.config import ModelSection
from alignkit.models import load_policy

_spec = importlib.util.spec_from_file_location(
    "fusion_probe", Path(__file__).resolve().parents[2] / "benchmarks" / "fusion_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def test_lean_forward_matches_model_forward_values_and_gradients():
    model, tokenizer = load_policy(ModelSection(path="bundled"))
    ids, pos, seg = probe.ppo_minibatch(tokenizer, sequences=3, completion=4, seed=1)
    assert seg[0].tolist() == sorted(seg[0].tolist()) and int(seg.max()) == 2
    assert (pos[0][seg[0] == 1] == torch.arange(int((seg[0] == 1).sum()))).all()  # positions restart per sequence

    lean = probe.lean_forward(model, ids, pos, seg)
    lean.logsumexp(-1).sum().backward()
    lean_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    hf = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    hf.logsumexp(-1).sum().backward()
    torch.testing.assert_close(lean, hf, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(lean_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_lean_forward_keeps_packed_sequences_apart():
    """A sequence's logits do not change when another sequence is packed in front of it."""
    model, tokenizer = load_policy(ModelSection(path="bundled"))
    ids, pos, seg = probe.ppo_minibatch(tokenizer, sequences=2, completion=3, seed=2)
    first = int((seg[0] == 0).sum())
    with torch.no_grad():
        both = probe.lean_forward(model, ids, pos, seg)
        alone = probe.lean_forward(model, ids[:, first:], pos[:, first:], seg[:, first:])
    torch.testing.assert_close(both[:, first:], alone, atol=1e-5, rtol=1e-5)


def test_grpo_batch_layout():
    _, tokenizer = load_policy(ModelSection(path="bundled"))
    b = probe.grpo_batch(tokenizer, prompts=4, group=3, max_len=10, mean_length=5.0, seed=0)
    assert b["prompt_ids"].shape[0] == b["completion_ids"].shape[0] == 12
    assert torch.equal(b["prompt_ids"][0], b["prompt_ids"][2]) and not torch.equal(b["prompt_ids"][2], b["prompt_ids"][3])
    assert (b["prompt_mask"][:, -1] == 1).all()  # left padding
    lengths = b["completion_mask"].sum(-1)
    assert lengths.min() >= 1 and lengths.max() <= 10 and b["completion_ids"].shape[1] == lengths.max()
    assert (b["completion_mask"].cumprod(-1) == b["completion_mask"]).all()  # right padding
    assert (b["completion_ids"][b["completion_mask"] == 0] == 0).all()


def test_lean_hidden_of_two_trunks_is_each_trunk_alone():
    """Stacking the policy's and a critic's trunk (one bmm per projection) gives each model's own hidden
    states and parameter gradients."""
    from alignkit.models.value import ValueModel

    model, tokenizer = load_policy(ModelSection(path="bundled"))
    critic = ValueModel.from_causal_lm(model, seed=0)
    with torch.no_grad():
        for p in critic.trunk.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids, pos, seg = probe.ppo_minibatch(tokenizer, sequences=3, completion=4, seed=3)
    both = probe.lean_hidden([model.model, critic.trunk], ids, pos, seg)
    (both[0].square().sum() + both[1].sum()).backward()
    grads = {n: p.grad.clone() for n, p in [*model.model.named_parameters(), *critic.trunk.named_parameters(prefix="c")]}
    model.zero_grad(set_to_none=True), critic.zero_grad(set_to_none=True)
    h_policy = model.model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
    h_critic = critic.trunk(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
    (h_policy.square().sum() + h_critic.sum()).backward()
    torch.testing.assert_close(both[0:1], h_policy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:2], h_critic, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0], both[1])
    for name, p in [*model.model.named_parameters(), *critic.trunk.named_parameters(prefix="c")]:
        torch.testing.assert_close(grads[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_main_runs_both_probes_without_compiling(tmp_path, capsys):
    out = tmp_path / "probe.json"
    result = probe.main(["--no-compile", "--rounds", "1", "--repeats", "1", "--micro-sizes", "64,128", "--out", str(out)])
    g, p = result["grpo"], result["ppo"]
    assert g["rows"] == 128 and set(g["eager_update_ms_by_micro_batch"]) == {64, 128}
    assert g["eager_ref_ms"] > 0 and g["eager_update_ms"] > 0 and "compiled_update_ms" not in g
    assert p["max_abs_diff"] <= 1e-4 and p["lean_pair_forward_backward_ms"] > 0
    assert json.loads(out.read_text())["grpo"]["eager_update_ms_by_micro_batch"].keys() == {"64", "128"}
    assert "eager update by micro-batch size: 64 rows" in capsys.readouterr().out
