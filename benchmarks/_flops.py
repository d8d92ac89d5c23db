"""The matrix-multiply arithmetic of a benchmark run, and the floor it sets on this CPU (``--flops`` of
``grpo_vs_trl.py`` and ``ppo_vs_trl.py``).

A training step cannot take less time than its matrix multiplies take at the machine's own fp32 matmul rate.
With the step's matmul FLOPs F (every ``mm / addmm / bmm / baddbmm`` and attention kernel of the run, forward
and backward, by torch's own formulas in ``torch.utils.flop_counter``) and the rate R measured here on the
model's own shapes (fp32, the benchmark's thread count):

    floor = F / R                              seconds per step, with zero time for everything else
    bound = (other side's measured step) / floor   the largest speedup this many FLOPs allow

Not counted: elementwise work (norms, activations, softmax, the optimizer). R is the best rate of large, warm
products; the model's own multiplies run below it. So a floor is, if anything, low and a bound high. The
counting run is slower (every op goes through the counter); its times are not used.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from contextlib import contextmanager


def _rules() -> dict:
    """op -> FLOP formula, torch's own (``torch.utils.flop_counter``) for the matrix multiplies; the CPU kernels of
    ``scaled_dot_product_attention`` take (query, key, value, ...) as the GPU ones do, so theirs apply."""
    import torch
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    rules = {op: flop_registry[op] for op in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)}
    rules[aten._scaled_dot_product_flash_attention_for_cpu] = flop_registry[aten._scaled_dot_product_flash_attention]
    rules[aten._scaled_dot_product_flash_attention_for_cpu_backward] = flop_registry[
        aten._scaled_dot_product_flash_attention_backward]
    return rules


@contextmanager
def counting(out: dict):
    """Count the matmul FLOPs (attention included, forward and backward) of every op the block runs; on exit put
    the total and the per-op totals into ``out``. A counter per op, not a trace: memory stays flat however long
    the run (``torch.profiler`` with ``with_flops`` keeps every event: a 60 s TRL run under it grew to 24 GB
    and the OOM killer ended it). Not ``FlopCounterMode`` itself: its module tracker fails on the rollout's
    no-grad forwards."""
    from torch.utils._python_dispatch import TorchDispatchMode

    rules, counts = _rules(), Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            rule = rules.get(func._overloadpacket)
            if rule is not None:
                counts[str(func._overloadpacket)] += rule(*args, **(kwargs or {}), out_val=result)
            return result

    with Count():
        yield
    out["matmul_flops"] = float(sum(counts.values()))
    out["flops_by_op"] = {op: float(n) for op, n in counts.items()}


def counted_run(child, args, units) -> dict:
    """A benchmark child run with its FLOPs counted: ``child(args)``'s result plus matmul_flops, flops_by_op
    and ``units`` (``units(result)``: the steps or iterations it ran)."""
    counted: dict = {}
    with counting(counted):
        result = child(args)
    return {**result, **counted, "units": units(result)}


def matmul_rate(threads: int, rows: int = 2048, repeats: int = 20) -> float:
    """fp32 GFLOP/s of ``[rows, in] @ [in, out]`` on the bundled tiny model's projection shapes (both
    benchmarks' model), the best shape's median over ``repeats`` warm calls."""
    import json

    import torch

    from alignkit.models.policy import BUNDLED_DIR

    config = json.loads((BUNDLED_DIR / "config.json").read_text())
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    torch.set_num_threads(threads)
    best = 0.0
    for k, n in ((h, 3 * h), (h, h), (h, 2 * inter), (inter, h), (h, vocab)):
        a, b = torch.randn(rows, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best = max(best, 2 * rows * k * n / statistics.median(times) / 1e9)
    return best


def floor_report(unit: str, counted: dict[str, dict], measured: dict[str, float], threads: int) -> dict:
    """Measure the matmul rate, print the floor table (``floor_lines``) and return what goes in the JSON."""
    rate = matmul_rate(threads)
    print("\n" + "\n".join(floor_lines(unit, counted, measured, rate)))
    return {"rate_gflops": rate, **{side: {k: c[k] for k in ("matmul_flops", "flops_by_op", "units")}
                                    for side, c in counted.items()}}


def floor_lines(unit: str, flops: dict[str, dict], measured: dict[str, float], rate: float, bar: float = 3.0) -> list[str]:
    """Report lines: per side the matmul GFLOP per ``unit``, its floor at ``rate``, and alignkit's bound against
    TRL's measured time. ``flops[side]`` has matmul_flops and ``units`` (steps of the counted run);
    ``measured[side]`` is the timed runs' seconds per unit."""
    lines = [f"matmul floor (fp32 matmul rate on the model's shapes, this CPU: {rate:.1f} GFLOP/s)",
             f"  {'':10} {'GFLOP/' + unit:>16} {'floor s/' + unit:>17} {'measured s/' + unit:>20} {'floor/measured':>15}"]
    floor = {}
    for side, f in flops.items():
        per = f["matmul_flops"] / f["units"]
        floor[side] = per / (rate * 1e9)
        lines.append(f"  {side:10} {per / 1e9:16.2f} {floor[side]:17.3f} {measured[side]:20.3f} "
                     f"{floor[side] / measured[side]:15.0%}")
    if "alignkit" in floor and "trl" in measured:
        need = measured["trl"] / bar
        lines.append(f"  zero-overhead bound on alignkit's speedup: {measured['trl'] / floor['alignkit']:.2f}x; "
                     f"{bar:g}x needs alignkit's {unit} in {need:.3f} s, of which its matmuls alone take "
                     f"{floor['alignkit']:.3f} s ({floor['alignkit'] / need:.0%})")
    return lines
