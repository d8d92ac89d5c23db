"""Shared parts of the real-size benchmarks (issue 18): ``real_grpo_vs_trl.py``, ``real_rollout.py``,
``real_train_vs_trl.py``.

The workload: SmolLM2-135M-Instruct (the real-model test tier's model, built by ``scripts/build_real_model.py``
into ``$ALIGNKIT_CACHE``), fp32, chat prompts of two-digit arithmetic asked in words ("What is 47 plus 18?
Answer with the number."), reward = 1 when the last integer of the completion equals the answer, else 0.

The arithmetic floor every script prints (the issue's definition): with N the model's parameters (the tied
embedding / LM head counted once: the head is a real [576 x 49152] matmul per token),

    floor FLOPs = 6 N x trained tokens + 2 N x forward-only tokens (sampled tokens, prompt prefill, a reference
                  model's forward)
    floor s     = floor FLOPs / R,  R = this CPU's best fp32 matmul rate on the model's own projection shapes

Attention score FLOPs are left out (at <= 200 tokens they are a few percent of 2N per token), as are
elementwise work and the optimizer: the floor is a lower bound, and ``share = floor s / measured s`` is the
fraction of the machine's matmul speed a run reaches.

Everything here but ``matmul_rate``, ``Watch`` and ``real_model_dir`` is pure and checked in
tests/unit/test_bench_real.py.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
TRL_VENV_HINT = ('python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 "trl==1.16.*" && '
                 '.venv-trl/bin/pip install -e .')
REWARD_SPEC = "_real:last_integer_reward"  # importable by the children: benchmarks/ is their sys.path[0]
_INT = re.compile(r"-?\d[\d,]*")


# ----------------------------------------------------------------------------------------------------------
# Model and workload
# ----------------------------------------------------------------------------------------------------------
def real_model_dir() -> Path:
    """The cached SmolLM2-135M-Instruct directory (scripts/build_real_model.py's ``model_dir``); exits with the
    build command when it is not built."""
    spec = importlib.util.spec_from_file_location("build_real_model", ROOT / "scripts" / "build_real_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    d = module.model_dir()
    if not (d / ".complete").is_file():
        raise SystemExit(f"the real model is not built ({d}): run `.venv/bin/python scripts/build_real_model.py`")
    return d


def resolve_model_dir(name: str | None) -> Path:
    """None or "real": the real model; "tiny": alignkit's bundled tiny base (checks a script's plumbing in
    seconds, no figure of issue 18); else a model directory."""
    if name in (None, "real"):
        return real_model_dir()
    if name == "tiny":
        return ROOT / "src" / "alignkit" / "assets" / "tiny-base"
    return Path(name).expanduser()


def word_problems(n: int, *, seed: int = 0) -> list[dict]:
    """``n`` chat prompts of two-digit arithmetic asked in words, each ``{"prompt": [user message], "answer": str}``.

    Half plus, half minus (a >= b, so answers are >= 0); operands 10-99; seeded.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if i % 2:
            a, b = max(a, b), min(a, b)
            question, answer = f"What is {a} minus {b}?", a - b
        else:
            question, answer = f"What is {a} plus {b}?", a + b
        rows.append({"prompt": [{"role": "user", "content": f"{question} Answer with the number."}],
                     "answer": str(answer)})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def last_integer(text: str) -> int | None:
    """The last integer written in ``text`` ("1,234" is 1234), or None.

    >>> last_integer("47 plus 18 is 65."), last_integer("no digits"), last_integer("-3 or 1,200")
    (65, None, 1200)
    """
    found = _INT.findall(text)
    if not found:
        return None
    digits = found[-1].rstrip(",").replace(",", "")
    return int(digits) if digits not in ("", "-") else None


def last_integer_reward(completion, *, answer, **_) -> float:
    """1.0 when the completion's last integer equals ``answer``, else 0.0. ``completion`` may be TRL's
    conversational form (a list with one assistant message)."""
    if isinstance(completion, list):
        completion = completion[0]["content"] if completion else ""
    value = last_integer(completion)
    return float(value is not None and value == int(answer))


# ----------------------------------------------------------------------------------------------------------
# Floor arithmetic (pure)
# ----------------------------------------------------------------------------------------------------------
def floor_flops(n_params: float, *, trained_tokens: float = 0.0, forward_tokens: float = 0.0) -> float:
    """6 N per trained token (forward + backward) + 2 N per forward-only token (sampled, prefilled, reference).

    >>> floor_flops(100, trained_tokens=3, forward_tokens=5)
    2800.0
    """
    return float(6 * n_params * trained_tokens + 2 * n_params * forward_tokens)


def floor_seconds(flops: float, rate_gflops: float) -> float:
    """Seconds the FLOPs take at ``rate_gflops`` (GFLOP/s)."""
    return flops / (rate_gflops * 1e9)


def floor_share(flops: float, rate_gflops: float, measured_s: float) -> float:
    """Fraction of the machine's matmul rate a run reached: floor seconds / measured seconds."""
    return floor_seconds(flops, rate_gflops) / measured_s


def grpo_floor_tokens(prompt_tokens: list[int], group_size: int, completion_tokens: int, *, beta: float) -> dict:
    """The essential token counts of one GRPO step: each distinct prompt prefilled once (forward only) and
    trained once (its G completions share it, as alignkit's grouped logprobs do), every completion token sampled
    (forward) and trained; with beta > 0 a reference forward over the same tokens.

    prompt_tokens: length of each distinct prompt; completion_tokens: all completion tokens of the step.

    >>> grpo_floor_tokens([10, 20], 4, 100, beta=0.04)
    {'trained': 130, 'forward': 260}
    >>> grpo_floor_tokens([10, 20], 4, 100, beta=0.0)
    {'trained': 130, 'forward': 130}
    """
    del group_size  # the prompts are shared across the group: counted once
    p = sum(prompt_tokens)
    trained = p + completion_tokens
    forward = p + completion_tokens + (trained if beta > 0 else 0)
    return {"trained": trained, "forward": forward}


def n_params(model) -> int:
    """Distinct parameters (a tied embedding / LM head counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def projection_shapes(config: dict) -> list[tuple[int, int]]:
    """(in, out) of a Llama-family model's per-token matmuls: fused qkv, o, fused gate+up, down, LM head.

    >>> projection_shapes({"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
    ...                    "intermediate_size": 1536, "vocab_size": 49152, "head_dim": 64})
    [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 49152)]
    """
    h, heads = config["hidden_size"], config["num_attention_heads"]
    d = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    return [(h, (heads + 2 * kv) * d), (h, heads * d), (h, 2 * inter), (inter, h), (h, vocab)]


def matmul_rate(config: dict, threads: int, rows: int = 512, repeats: int = 10) -> float:
    """fp32 GFLOP/s of ``[rows, in] @ [in, out]`` on the model's projection shapes: the best shape's median
    over ``repeats`` warm calls (the floor's R)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for k, n in projection_shapes(config):
        a, b = torch.randn(rows, k), torch.randn(k, n)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best = max(best, 2 * rows * k * n / statistics.median(times) / 1e9)
    return best


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ratio_line(name: str, ours: float, theirs: float, bar: float, *, higher_is_better: bool = True) -> str:
    """'name: 3.41x (bar 3x: MET)' with ratio = ours / theirs (or theirs / ours for times).

    >>> ratio_line("s/step", 1.0, 4.0, 3, higher_is_better=False)
    's/step: 4.00x (bar 3x: MET)'
    """
    r = ours / theirs if higher_is_better else theirs / ours
    return f"{name}: {r:.2f}x (bar {bar:g}x: {'MET' if r >= bar else 'NOT met'})"


# ----------------------------------------------------------------------------------------------------------
# Logits watch: the largest [*, vocab] tensor a run creates, and its matmul FLOPs (one extra, untimed run)
# ----------------------------------------------------------------------------------------------------------
@contextmanager
def watch(vocab: int, out: dict):
    """Record, for every op run in the block, the largest newly allocated output (views are skipped) whose last
    dimension is ``vocab`` (its rows = numel / vocab, its MiB) and count matmul FLOPs (benchmarks/_flops.py's rules). A loss that materializes
    full-vocabulary logits for the whole micro-batch shows as max_vocab_rows >= its tokens."""
    import torch
    from _flops import _rules
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    rules = _rules()
    state = {"rows": 0, "mib": 0.0, "op": None, "flops": 0.0}

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            rule = rules.get(func._overloadpacket)
            if rule is not None:
                state["flops"] += rule(*args, **(kwargs or {}), out_val=result)
            if func.is_view:  # a view (transpose, slice, expand) allocates nothing
                return result
            for t in tree_leaves(result):
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == vocab and t.is_floating_point():
                    rows = t.numel() // vocab
                    if rows > state["rows"]:
                        state.update(rows=rows, mib=t.numel() * t.element_size() / 2**20, op=str(func))
            return result

    with Watch():
        yield
    out.update(max_vocab_rows=state["rows"], max_vocab_mib=state["mib"], max_vocab_op=state["op"],
               matmul_flops=state["flops"])
