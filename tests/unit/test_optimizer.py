"""build_optimizer: fused AdamW where every parameter allows it, the same update as torch's default AdamW,
a fallback otherwise, and state dicts that survive a checkpoint (either way round)."""

import pytest
import torch

from alignkit.config import OptimSection
from alignkit.infra.checkpoint import load_checkpoint, save_checkpoint
from alignkit.infra.train import build_optimizer
from alignkit.models import build_tiny

CFG = OptimSection(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))


def default_adamw(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=CFG.lr,
                             weight_decay=CFG.weight_decay, betas=CFG.betas)


def train_steps(model, optimizer, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(3, 100, (2, 12), generator=gen)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_fused_adamw_gives_the_default_adamw_parameters():
    fused_model, default_model = build_tiny(seed=1)[0], build_tiny(seed=1)[0]
    fused = build_optimizer(fused_model, CFG)
    assert fused.defaults["fused"] is True
    train_steps(fused_model, fused, 5)
    train_steps(default_model, default_adamw(default_model), 5)
    moved = 0.0
    for (name, a), b, start in zip(fused_model.named_parameters(), default_model.parameters(),
                                   build_tiny(seed=1)[0].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
        moved = max(moved, float((a - start).detach().abs().max()))
    assert moved > 1e-3  # the steps did move the weights


def test_falls_back_to_the_default_adamw():
    class Complex(torch.nn.Module):  # fused AdamW takes floating-point tensors only
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))

    assert not build_optimizer(Complex(), CFG).defaults.get("fused")
    model = build_tiny()[0]
    model.model.norm.weight.requires_grad_(False)  # frozen parameters are not the optimizer's
    assert len(build_optimizer(model, CFG).param_groups[0]["params"]) == sum(p.requires_grad for p in model.parameters())


def test_falls_back_when_fused_construction_raises(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("fused kernel not built")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = build_optimizer(build_tiny()[0], CFG)
    assert isinstance(opt, real) and not opt.defaults.get("fused")


@pytest.mark.parametrize("save_fused,load_fused", [(True, True), (True, False), (False, True)])
def test_optimizer_state_round_trips_through_a_checkpoint(tmp_path, save_fused, load_fused):
    def make(fused):
        model = build_tiny(seed=2)[0]
        return model, build_optimizer(model, CFG) if fused else default_adamw(model)

    straight, opt = make(save_fused)
    train_steps(straight, opt, 3)
    save_checkpoint(tmp_path, 3, model=straight, optimizer=opt)
    train_steps(straight, opt, 2, seed=9)

    resumed, opt2 = make(load_fused)
    load_checkpoint(tmp_path / "checkpoints" / "step-3", model=resumed, optimizer=opt2)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    train_steps(resumed, opt2, 2, seed=9)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
