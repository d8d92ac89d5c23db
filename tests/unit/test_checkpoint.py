"""Atomic checkpoints: half-written ones are ignored and swept; state round-trips; pruning keeps the newest
of the same run; nothing is saved inside a non-finite streak; a changed lr applies on resume."""

import json
import random

import pytest
import torch

from alignkit.infra.checkpoint import (
    checkpoint_run_id,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.infra.train import NonFiniteGuard
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


def test_pruning_sorts_steps_as_numbers_and_sweeps_stale_temporaries(tmp_path):
    model, _ = build_tiny()
    stale = tmp_path / "checkpoints" / ".tmp-step-7-4242"  # a crash mid-save
    stale.mkdir(parents=True)
    for step in (8, 9, 10, 11):
        save_checkpoint(tmp_path, step, model=model, keep_last=2)
    assert not stale.exists()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-10", "step-11"]  # not step-8, step-9


def _own(tmp_path, run_id):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": run_id, "history": []}))


def test_checkpoints_carry_the_run_id_and_another_runs_are_never_pruned_or_resumed(tmp_path):
    model, _ = build_tiny()
    _own(tmp_path, "old")
    save_checkpoint(tmp_path, 50, model=model)
    _own(tmp_path, "new")  # (prepare_run_dir never allows this; the checkpoint layer still refuses to splice)
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model=model, keep_last=2)
    assert checkpoint_run_id(tmp_path / "checkpoints" / "step-50") == "old"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-4", "step-6"]
    assert latest_checkpoint(tmp_path).name == "step-6"  # not the other run's higher step
    assert (tmp_path / "checkpoints" / "step-50" / "COMPLETE").is_file()
    state, _ = load_checkpoint(latest_checkpoint(tmp_path), model=model)
    assert state == {"step": 6}  # the run id is bookkeeping, not part of the recipe's state


class _Guard:
    def __init__(self, bad):
        self.in_bad_streak, self.consecutive = bad, int(bad)


def test_no_checkpoint_is_written_inside_a_non_finite_streak(tmp_path):
    model, _ = build_tiny()
    assert save_checkpoint(tmp_path, 1, model=model, guards=[_Guard(False)]).name == "step-1"
    assert save_checkpoint(tmp_path, 2, model=model, guards=[_Guard(False), _Guard(True)]) is None
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-1"]


def test_non_finite_guard_names_the_checkpoint_to_resume_from(tmp_path):
    guard = NonFiniteGuard(2, run_dir=tmp_path)
    assert guard.check(1.0, 1.0, 1) and not guard.in_bad_streak
    assert not guard.check(float("nan"), 1.0, 2) and guard.in_bad_streak
    with pytest.raises(FloatingPointError, match="no checkpoint was saved"):
        guard.check(float("inf"), 1.0, 3)
    model, _ = build_tiny()
    save_checkpoint(tmp_path, 3, model=model)
    guard = NonFiniteGuard(1, run_dir=tmp_path)
    with pytest.raises(FloatingPointError, match=r"the last good checkpoint is .*checkpoints/step-3 \(resume"):
        guard.check(1.0, float("nan"), 4)


def test_a_changed_lr_applies_on_resume_and_is_logged(tmp_path, caplog):
    from alignkit.config import OptimSection
    from alignkit.infra.train import build_optimizer, build_scheduler, lr_factor

    old, new = OptimSection(lr=1e-2, warmup_steps=4, schedule="linear"), OptimSection(lr=4e-3, warmup_steps=4,
                                                                                      schedule="linear")
    model, _ = build_tiny()
    opt = build_optimizer(model, old)
    sched = build_scheduler(opt, old, 10)
    for _ in range(2):  # train 2 steps
        model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r", "history": [{"resumed_from": None}]}))
    save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched)

    fresh, _ = build_tiny()
    opt2 = build_optimizer(fresh, new)
    sched2 = build_scheduler(opt2, new, 10)
    with caplog.at_level("WARNING"):
        load_checkpoint(latest_checkpoint(tmp_path), model=fresh, optimizer=opt2, scheduler=sched2, optim=new)
    assert "optim.lr changed on resume: 0.01 -> 0.004" in caplog.text
    factor = lr_factor(2, warmup=4, total=10, schedule="linear")
    assert opt2.param_groups[0]["lr"] == pytest.approx(4e-3 * factor)
    assert opt2.param_groups[0]["initial_lr"] == 4e-3 and sched2.base_lrs == [4e-3]
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(4e-3 * lr_factor(3, warmup=4, total=10, schedule="linear"))
    assert opt2.state_dict()["state"][0]["step"] == 2  # the rest of the optimizer state is the checkpoint's
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["history"][-1]["changed"] == {"optim.lr": [0.01, 0.004]}
    # unchanged settings: nothing logged, nothing recorded, the state is exactly the checkpoint's
    caplog.clear()
    opt3 = build_optimizer(fresh, old)
    sched3 = build_scheduler(opt3, old, 10)
    load_checkpoint(latest_checkpoint(tmp_path), model=fresh, optimizer=opt3, scheduler=sched3, optim=old)
    assert "changed on resume" not in caplog.text
    assert opt3.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
