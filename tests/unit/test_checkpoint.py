"""Atomic checkpoints: half-written ones are ignored; state round-trips; pruning keeps the newest."""

import random

import torch

from alignkit.infra.checkpoint import (
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.models import build_tiny


def test_half_written_checkpoint_is_ignored(tmp_path):
    model, _ = build_tiny()
    save_checkpoint(tmp_path, 4, model=model, state={"cursor": 1})
    # a crash mid-save leaves a temporary directory, or a step dir without COMPLETE
    (tmp_path / "checkpoints" / ".tmp-step-8-999").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-8-999" / "state.json").write_text("{}")
    broken = tmp_path / "checkpoints" / "step-9"
    broken.mkdir()
    (broken / "state.json").write_text('{"step": 9}')
    assert latest_checkpoint(tmp_path).name == "step-4"


def test_state_rng_and_optimizer_round_trip_and_pruning(tmp_path):
    model, _ = build_tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    torch.manual_seed(123)
    random.seed(7)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, state={"cursor": step},
                        tensors={"g": torch.arange(3)}, keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-2", "step-3"]
    expected_torch, expected_py = torch.rand(3), random.random()

    fresh, _ = build_tiny(seed=1)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state, tensors = load_checkpoint(latest_checkpoint(tmp_path), model=fresh, optimizer=opt2)
    assert state == {"step": 3, "cursor": 3} and torch.equal(tensors["g"], torch.arange(3))
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # RNG restored to the state at save time: the same draws follow
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
