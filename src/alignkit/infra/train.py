"""Training-loop building blocks shared by the recipes (functions, not a trainer class).

Distributed exactness: a recipe normalizes its loss by a count over the WHOLE global batch (all
micro-batches, all processes: :func:`global_sum`). DDP averages gradients over processes, so each process
multiplies its loss by the world size (:func:`backward`); the summed gradient is then exactly the gradient
of the full-batch loss, and 1 process x 8 micro-batches trains like 2 processes x 4 or 8 x 1.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from alignkit.config import LoraSection, ModelSection, OptimSection

log = logging.getLogger(__name__)


def mixed_precision(precision: str = "no", dtype: str = "float32") -> str:
    """The autocast a run uses: ``train.precision`` when set, else the one ``model.dtype`` implies
    ('bfloat16' -> 'bf16', 'float16' -> 'fp16', 'auto' -> 'bf16' where it resolves to bf16). Low-precision
    weights are never trained directly (AdamW steps of ~1e-5 round away in bf16): the trained copy holds
    fp32 master weights (:func:`fp32_master_weights`) and its forward runs under this autocast; frozen
    copies (reference, teacher, reward model) stay in ``model.dtype``. On a CPU, 'bf16' autocasts (torch's
    CPU autocast, often slower than fp32) and 'fp16' is refused: accelerate would silently not apply it."""
    from alignkit.models.loading import resolve_dtype

    if precision == "no":
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolve_dtype(dtype), "no")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("fp16 mixed precision (train.precision=fp16 or model.dtype=float16) needs a CUDA GPU; "
                         "on a CPU use bfloat16 / bf16 or float32")
    return precision


def setup_accelerator(precision: str = "no", *, dtype: str = "float32"):
    """An accelerate ``Accelerator``: one process, or DDP/FSDP/DeepSpeed under ``accelerate launch`` /
    ``torchrun`` (same code), with the autocast :func:`mixed_precision` picks from ``precision``
    (``train.precision``: 'no', 'bf16', 'fp16') and ``dtype`` (``model.dtype``); it applies to models
    passed through ``accelerator.prepare``. Runs in one process (a pipeline, tests) may differ in precision:
    accelerate's process-wide state keeps the first one's, so a different one resets that state (not the
    process group)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = mixed_precision(precision, dtype)
    if precision != "no" and not torch.cuda.is_available():
        log.info("mixed precision %s on CPU: torch CPU autocast (often slower than fp32)", precision)
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def global_sum(accelerator, value: float | int) -> float:
    """Sum of a per-process number over all processes (e.g. response tokens of the global batch)."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor(float(value), device=accelerator.device, dtype=torch.float64)
    return float(accelerator.reduce(t, reduction="sum"))


def backward(accelerator, loss: torch.Tensor) -> None:
    """Backward of a loss already normalized by a global count (see module docstring)."""
    accelerator.backward(loss * accelerator.num_processes)


_FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")


def fp32_master_weights(model: torch.nn.Module) -> int:
    """Upcast, in place, every trainable bf16/fp16 parameter to fp32 (frozen ones, e.g. a LoRA base, keep
    their dtype); returns how many. The optimizer then updates fp32 weights, and the forward runs in low
    precision only under autocast (:func:`mixed_precision`): with lr 2e-5, AdamW's ~2e-5 steps vanish in
    bf16 weights of magnitude > ~0.005 (bf16 keeps 8 bits of mantissa) but not in fp32 ones."""
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
            n += 1
    return n


def build_optimizer(model: torch.nn.Module, cfg: OptimSection) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, made fp32 first (:func:`fp32_master_weights`): torch's fused kernel (CPU and GPU) when every parameter is a
    floating-point tensor on a device that has it, else torch's default (foreach on CUDA, a per-tensor loop
    on CPU), also when the fused construction raises. Both compute the same update (a test asserts they agree
    to 1e-6 after several steps); on the bundled tiny model, 1 CPU thread, a fused step takes 0.34 ms against
    1.2 ms. Their state dicts load into each other (checkpoints from either resume with either)."""
    fp32_master_weights(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if all(p.is_floating_point() and p.device.type in _FUSED_ADAMW_DEVICES for p in params):
        try:
            return torch.optim.AdamW(params, **kwargs, fused=True)
        except (RuntimeError, ValueError):  # e.g. a torch build without the fused kernel for this device
            pass
    return torch.optim.AdamW(params, **kwargs)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR at ``step`` (0-based): linear warmup, then constant, linear or cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg: OptimSection, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.schedule)
    )


def apply_lora(model, cfg: LoraSection, *, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with peft LoRA adapters; only adapter weights stay trainable, plus, for
    ``task_type="SEQ_CLS"`` (a ``*ForSequenceClassification`` reward model), the new score head, which peft
    trains in full as a ``modules_to_save`` copy (with no adapter of its own). ``export_model`` merges both.
    ``cfg.adapter_path``: start from that saved adapter (``PeftModel.from_pretrained(..., is_trainable=True)``,
    e.g. a run's ``final/adapter``) with its own r, alpha and target modules instead of new adapters."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.adapter_path is not None:
        if not Path(cfg.adapter_path, "adapter_config.json").is_file():
            raise FileNotFoundError(f"lora.adapter_path: no adapter_config.json in {cfg.adapter_path!r}")
        model = PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=True)
        own = model.peft_config["default"]
        if (own.r, own.lora_alpha) != (cfg.r, cfg.alpha):
            log.info("lora.adapter_path: using the adapter's r=%d, alpha=%s (config: r=%d, alpha=%d)",
                     own.r, own.lora_alpha, cfg.r, cfg.alpha)
        return model
    targets = "all-linear" if cfg.target_modules == "all-linear" else [
        m.strip() for m in cfg.target_modules.split(",") if m.strip()]
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                        task_type=task_type)
    return get_peft_model(model, config)


def prepare_model(model, cfg: ModelSection, *, task_type: str = "CAUSAL_LM"):
    """The model to train: gradient checkpointing and LoRA as the config asks (``task_type``: see
    :func:`apply_lora`), then fp32 master weights for whatever trains (:func:`fp32_master_weights`; a LoRA
    base stays in ``model.dtype``). Call it after taking frozen copies, which keep ``model.dtype``."""
    if cfg.lora.adapter_path is not None and not cfg.lora.enabled:
        raise ValueError("model.lora.adapter_path needs model.lora.enabled=true (it trains that adapter)")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, task_type=task_type)
    fp32_master_weights(model)
    return model


def save_final(model, tokenizer, run_dir) -> None:
    """``run_dir/final``: the exported plain transformers model (safetensors; LoRA merged) and its tokenizer;
    for a LoRA model also ``final/adapter``, the adapter alone, which ``PeftModel.from_pretrained(base,
    final/adapter)`` loads and ``model.lora.adapter_path`` continues from. Saved in the dtype the weights
    have (fp32 masters of a bf16 run stay fp32)."""
    out = Path(run_dir) / "final"
    if hasattr(model, "peft_config"):  # before merging: merge_and_unload folds the adapter into the base
        model.save_pretrained(out / "adapter", safe_serialization=True)
    final = export_model(model)
    final.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def eval_summary(start_metrics: dict, metrics: dict, **fields) -> dict:
    """A recipe's summary: eval metrics before training ("start") and at the end ("end"), plus ``fields``."""
    return {"start": start_metrics, "end": {k: v for k, v in metrics.items() if k.startswith("eval/")}, **fields}


def export_model(model):
    """The plain transformers model to save: LoRA adapters merged, DDP/compile wrappers removed."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


class NonFiniteGuard:
    """Skips a step whose loss or gradient norm is not finite; too many in a row stop the run.

    ``in_bad_streak``: the last checked step was skipped; ``save_checkpoint(..., guards=[guard])`` writes nothing
    then, so the newest checkpoint is the last good one, which the error names (``run_dir``: where to look)."""

    def __init__(self, max_consecutive: int, *, run_dir: str | Path | None = None):
        self.max_consecutive = max_consecutive
        self.run_dir = run_dir
        self.consecutive = 0
        self.total = 0

    @property
    def in_bad_streak(self) -> bool:
        return self.consecutive > 0

    def _resume_hint(self) -> str:
        from alignkit.infra.checkpoint import latest_checkpoint

        if self.run_dir is None:
            return "the newest checkpoint of the run directory is the last good one"
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return "no checkpoint was saved"
        return f"the last good checkpoint is {ckpt} (resume from it with output.resume=true)"

    def check(self, loss: float, grad_norm: float, step: int) -> bool:
        """True if the step may be applied; False to skip it. Raises after ``max_consecutive`` bad steps."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                f"step {step}: {self.consecutive} consecutive non-finite steps (loss={loss}, grad_norm="
                f"{grad_norm}); stopping. Lower optim.lr or check the data; {self._resume_hint()}."
            )
        return False


def optimizer_step(model, optimizer, scheduler, *, max_grad_norm: float, guard: NonFiniteGuard, loss: float,
                   step: int) -> tuple[float, bool]:
    """Clip, then step (or skip a non-finite step); returns (grad_norm, applied). Under fp16 autocast
    (an accelerate optimizer with a GradScaler) gradients are unscaled before clipping, and a step whose
    scaled gradients overflowed (finite loss) is the scaler's to skip, not a non-finite step."""
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None:
        scaler.unscale_(optimizer.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm):
        optimizer.step()  # GradScaler sees the inf, skips the update and lowers the scale
        applied = False
    else:
        applied = guard.check(loss, grad_norm, step)
        if applied:
            optimizer.step()
        elif scaler is not None:
            scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, applied
