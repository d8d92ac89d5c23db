"""bf16 training: fp32 master weights plus bf16 autocast train like fp32; bf16 weights updated directly do
not (small AdamW steps round away); CPU precision settings are applied or refused, never dropped."""

import pytest
import torch

from alignkit.config import LoraSection, ModelSection, OptimSection
from alignkit.infra.train import build_optimizer, mixed_precision, prepare_model, setup_accelerator
from alignkit.models import build_tiny


def batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 100, (4, 16), generator=gen) for _ in range(n)]


def run(dtype: str, *, lr: float, steps: int, optimizer: str = "adamw", seed: int = 0):
    """Losses of ``steps`` full-batch steps on a tiny model loaded in ``dtype`` the way recipes do it
    (setup_accelerator, prepare_model, build_optimizer, accelerator.prepare), and the largest weight change."""
    acc = setup_accelerator("no", dtype=dtype)
    cfg = ModelSection(path="tiny", dtype=dtype)
    model = build_tiny(seed=seed)[0].to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
    start = [p.detach().float().clone() for p in model.parameters()]
    model = prepare_model(model, cfg).train()
    if optimizer == "adamw":
        opt = build_optimizer(model, OptimSection(lr=lr))
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    model, opt = acc.prepare(model, opt)
    losses = []
    for ids in batches(steps, seed):
        loss = model(ids, labels=ids).loss
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    moved = max(float((p.detach().float() - s).abs().max()) for p, s in zip(model.parameters(), start))
    return losses, moved, model


@pytest.mark.parametrize("optimizer,lr", [("adamw", 3e-3), ("sgd", 0.5)])
def test_bf16_and_fp32_runs_fall_alike(optimizer, lr):
    fp32, _, _ = run("float32", lr=lr, steps=6, optimizer=optimizer)
    bf16, _, model = run("bfloat16", lr=lr, steps=6, optimizer=optimizer)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 masters
    assert fp32[-1] < fp32[0] - 0.05 and bf16[-1] < bf16[0] - 0.05  # both learn
    for a, b in zip(fp32, bf16):
        assert abs(a - b) < 0.02 * a, (fp32, bf16)  # bf16 autocast: within 2% of fp32 at every step


def test_small_lr_steps_change_bf16_run_weights():
    _, moved32, _ = run("float32", lr=2e-5, steps=3)
    _, moved16, _ = run("bfloat16", lr=2e-5, steps=3)
    # AdamW's first steps move each weight by ~lr: 3 steps ~ 6e-5 in both runs
    assert 3e-5 < moved32 < 1e-4 and abs(moved16 - moved32) < 0.2 * moved32


def test_bf16_weights_stepped_directly_do_not_move():
    """What fp32 masters fix: AdamW on bf16 weights with lr 2e-5 leaves most of them unchanged."""
    model = build_tiny()[0].to(torch.bfloat16).train()
    weight = model.model.layers[0].mlp.up_proj.weight
    before = weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    ids = batches(1)[0]
    model(ids, labels=ids).loss.backward()
    opt.step()
    big = before.abs() > 0.01  # |w| > 0.01: a bf16 ulp (>= 2^-14 ~ 6e-5) is larger than 2 x the step
    assert big.sum() > 100 and bool((weight[big] == before[big]).all())


def test_lora_base_stays_bf16_adapters_fp32():
    model = build_tiny()[0].to(torch.bfloat16)
    model = prepare_model(model, ModelSection(path="tiny", dtype="bfloat16", lora=LoraSection(enabled=True)))
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


def test_mixed_precision_from_config():
    assert mixed_precision("no", "float32") == "no"
    assert mixed_precision("no", "bfloat16") == "bf16"
    assert mixed_precision("bf16", "float32") == "bf16"
    if not torch.cuda.is_available():
        assert mixed_precision("no", "auto") == "no"
        with pytest.raises(ValueError, match="fp16 mixed precision .* needs a CUDA GPU"):
            mixed_precision("fp16", "float32")
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            mixed_precision("no", "float16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_cpu_bf16_precision_is_applied_and_logged(caplog):
    with caplog.at_level("INFO", logger="alignkit.infra.train"):
        acc = setup_accelerator("bf16")
    assert acc.mixed_precision == "bf16" and "CPU autocast" in caplog.text
    seen = []
    model = acc.prepare(build_tiny()[0])
    model.model.layers[0].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    ids = batches(1)[0]
    model(ids)
    assert seen == [torch.bfloat16]
