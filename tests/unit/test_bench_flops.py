"""benchmarks/_flops.py: the matmul FLOP count behind the benchmarks' arithmetic floor, checked by hand."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("_flops", Path(__file__).resolve().parents[2] / "benchmarks" / "_flops.py")
_flops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_flops)
counting, floor_lines = _flops.counting, _flops.floor_lines


def test_counting_forward_and_backward_matmuls():
    x = torch.randn(10, 6, requires_grad=True)
    w = torch.randn(6, 4, requires_grad=True)
    b = torch.randn(4)
    q, k = torch.randn(3, 5, 2), torch.randn(3, 2, 7)
    out: dict = {}
    with counting(out):
        y = torch.addmm(b, x, w)   # 2 * 10 * 6 * 4 = 480
        (y.sum() + (x @ w).sum()).backward()  # x @ w: 480; each backward: dx and dw, 480 each -> 4 * 480
        torch.bmm(q, k)            # 2 * 3 * 5 * 2 * 7 = 420
        x.detach() * 2.0           # elementwise: not a matmul
    assert out["matmul_flops"] == 480 + 480 + 4 * 480 + 420
    assert sum(out["flops_by_op"].values()) == out["matmul_flops"]


def test_counting_attention_on_cpu():
    q, k, v = (torch.randn(1, 2, t, 4, requires_grad=True) for t in (3, 5, 5))
    out: dict = {}
    with counting(out):
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    # q k^T and p v: 2 * (2 * [2 heads x 3 x 5 x 4]) = 480
    assert out["matmul_flops"] == 480
    with counting(out):
        y.sum().backward()
    assert out["matmul_flops"] == 5 * 240  # 4 products of the forward's size, and q k^T again (the kernel recomputes it)


def test_floor_lines_bound():
    flops = {"trl": {"matmul_flops": 20e9, "units": 2}, "alignkit": {"matmul_flops": 10e9, "units": 2}}
    lines = floor_lines("step", flops, {"trl": 0.6, "alignkit": 0.2}, rate=100.0)
    # alignkit: 5 GFLOP per step at 100 GFLOP/s = 0.05 s; TRL 0.6 s -> bound 12x; 3x needs 0.2 s, 25% of it matmuls
    assert "0.050" in lines[3] and "25%" in lines[3]
    assert lines[-1].startswith("  zero-overhead bound on alignkit's speedup: 12.00x; 3x needs alignkit's step in "
                                "0.200 s, of which its matmuls alone take 0.050 s (25%)")


def test_counted_run_and_floor_report(capsys):
    def child(args):  # a stand-in benchmark child: two "steps" of one [8, 4] @ [4, 2] product each
        for _ in range(2):
            torch.randn(8, 4) @ torch.randn(4, 2)
        return {"steps": [0.1, 0.1], "args": args}

    run = _flops.counted_run(child, "a", lambda r: len(r["steps"]))
    assert run["args"] == "a" and run["units"] == 2 and run["matmul_flops"] == 2 * (2 * 8 * 4 * 2)
    report = _flops.floor_report("step", {"alignkit": run}, {"alignkit": 0.1}, threads=1)
    assert report["rate_gflops"] > 0 and report["alignkit"] == {k: run[k] for k in ("matmul_flops", "flops_by_op", "units")}
    assert "alignkit" in capsys.readouterr().out
