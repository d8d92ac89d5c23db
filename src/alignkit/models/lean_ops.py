"""RMSNorm and SwiGLU as autograd functions that keep less for the backward than their composed forms.

Composed from PyTorch ops, autograd keeps what each op needs: RMSNorm(x) g = (x r) g keeps x, r and the
normalized x r (for g's gradient), and silu(a) b keeps a, b and silu(a). Per layer of a training forward that
is two [M, hidden] and one [M, intermediate] tensor more than the math needs. These functions keep one
tensor per input (RMSNorm: x r and r, one float per row; SwiGLU: a and b) and recompute the rest in the
backward: elementwise work, small next to the matmuls. Measured on SmolLM2-135M (30 layers), one GRPO
micro-batch of 16 rows (1,120 token rows, `benchmarks/real_head_memory.py --steps 4`): the forward+backward's
peak above the loaded model went from 2,760-2,861 to 2,418-2,515 MiB. Written here because PyTorch has no
public RMSNorm/SwiGLU with this saving on CPU: in eager mode `torch.nn.functional.rms_norm` keeps three
[M, n] tensors too (torch 2.13, measured with `saved_tensors_hooks`).

Naive forms: `rms_norm_naive`, `swiglu_naive`; tests/unit/test_lean_ops.py checks values and gradients
against them (and `torch.autograd.gradcheck` in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_naive(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm: g * (x / sqrt(mean(x^2) + eps)) in fp32, cast back to x's dtype before the gain."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def swiglu_naive(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, the Llama MLP's gated activation."""
    return F.silu(gate) * up


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in fp32 when it is narrower (bf16/fp16, as HF's norm computes), else as it is (fp32, fp64)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class _RMSNorm(torch.autograd.Function):
    """y = g * x^, x^ = x r, r = (mean(x^2) + eps)^-1/2 per row; x [M, n], g [n]. Saves x^ (at least fp32, as
    the composed form's fp32 copy of x), g and r [M, 1]. Backward, with u = dL/dy * g:
    dL/dg = sum_rows dL/dy * x^,  dL/dx = r (u - x^ mean(u * x^)) = r u - (r mean(u * x^)) x^."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = _wide(x)
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        xhat = xf * r
        ctx.save_for_backward(xhat, weight, r)
        ctx.dtype = x.dtype
        return weight * xhat.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        xhat, weight, r = ctx.saved_tensors
        gf = _wide(grad)
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            seen = xhat if ctx.dtype == xhat.dtype else _wide(xhat.to(ctx.dtype))  # the x^ the forward multiplied
            grad_w = (gf * seen).reshape(-1, xhat.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            u = gf * _wide(weight)
            coef = r * (u * xhat).mean(-1, keepdim=True)
            grad_x = torch.addcmul(u.mul_(r), xhat, coef, value=-1).to(ctx.dtype)
        return grad_x, grad_w, None


class _SwiGLU(torch.autograd.Function):
    """y = silu(a) b = a s(a) b, s the sigmoid. Saves a, b. Backward: dL/db = dL/dy silu(a),
    dL/da = dL/dy b silu'(a) with silu'(a) = s(a) (1 + a (1 - s(a))) (`aten.silu_backward`, one kernel)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm_naive`'s value; keeps x and one float per row for the backward (module docstring)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return rms_norm_naive(x, weight, eps)
    return _RMSNorm.apply(x, weight, eps)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`swiglu_naive`'s value; keeps gate and up for the backward (module docstring)."""
    if not torch.is_grad_enabled() or not (gate.requires_grad or up.requires_grad):
        return swiglu_naive(gate, up)
    return _SwiGLU.apply(gate, up)
