"""Sampling at real size (issue 18): alignkit's native sampler vs HF ``model.generate`` on SmolLM2-135M-Instruct,
chat prompts, EOS allowed; tokens/s, greedy identity, the 2N-per-token floor, and where native decode time goes.

    .venv/bin/python benchmarks/real_rollout.py                         # 4x4 and 8x8, 64 new tokens, 3 rounds
    .venv/bin/python benchmarks/real_rollout.py --shapes 8x8 --repeats 5 --profile --out rollout_real.json
    .venv/bin/python benchmarks/real_rollout.py --quick                 # smoke: tiny model, 2x2, 8 tokens, 1 round

Workload: ``_real.word_problems`` chat prompts ("What is 47 plus 18? Answer with the number."), rendered by the
model's chat template; per call B prompts x G samples (``--shapes``), at most ``--max-new-tokens`` new tokens,
temperature 1, top-p 1, no top-k, EOS (the tokenizer's and generation_config's) ends a row. fp32, ``--threads``.

Runners, timed interleaved in one process after one warm-up call each (load changes hit both alike), median
over ``--repeats`` rounds:

- ``hf_generate``: ``model.generate(do_sample=True, num_return_sequences=G)`` on the left-padded rendered
  prompts: what a TRL user's GRPOTrainer runs.
- ``native``: ``alignkit.rollout.generate(backend="native")`` end to end (logprobs, decoded text, Rollout).

tokens/s counts each row's completion up to and including its EOS (the same rule for both). The floor is 2N
FLOPs per sampled token plus 2N per prompt token prefilled once (N = parameters, the tied head once) at this
CPU's fp32 matmul rate on the model's shapes (``_real.matmul_rate``); share = floor seconds / measured seconds.

Greedy: ``temperature=0`` native vs ``model.generate(do_sample=False)``, G = 1, every prompt of the largest
shape: the token ids must be identical up to EOS (rows that differ are listed).

Phases (native, one extra call per shape, untimed above): wall time inside ``FastDecoder`` construction (weight
folding), ``prefill``, ``step`` (one decode forward), ``select`` (dropping finished rows), ``sample_tokens``
(temperature / top-k / top-p and the draw), ``_record_ends`` (EOS bookkeeping) and ``_to_rollout`` (decoding text,
building the Rollout); ``other`` = the rest of the call. ``--profile`` adds torch.profiler's top ops (self CPU
time) of one native call, so a later run can show which phase keeps the bar (3x model.generate) away.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from _real import floor_flops, floor_seconds, matmul_rate, n_params, resolve_model_dir, word_problems

PHASES = [("alignkit.models.decoder", "FastDecoder", "__init__", "decoder_setup"),
          ("alignkit.models.decoder", "FastDecoder", "prefill", "prefill"),
          ("alignkit.models.decoder", "FastDecoder", "step", "decode_forward"),
          ("alignkit.models.decoder", "FastDecoder", "select", "select_rows"),
          ("alignkit.rollout.native", None, "sample_tokens", "sample"),
          ("alignkit.rollout.native", None, "_record_ends", "end_bookkeeping"),
          ("alignkit.rollout.generate", None, "_to_rollout", "to_rollout")]


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'4x4,8x8' -> [(4, 4), (8, 8)]."""
    out = []
    for part in text.split(","):
        b, _, g = part.strip().lower().partition("x")
        if not (b.isdigit() and g.isdigit()) or int(b) < 1 or int(g) < 1:
            raise argparse.ArgumentTypeError(f"shapes look like 4x4,8x8; got {part!r}")
        out.append((int(b), int(g)))
    return out


def first_eos_lengths(completion, eos_ids: list[int]) -> list[int]:
    """Per row: tokens up to and including the first EOS (the row's length when it has none)."""
    import torch

    if not eos_ids:
        return [completion.shape[1]] * completion.shape[0]
    hit = torch.isin(completion, torch.tensor(eos_ids, device=completion.device))
    return torch.where(hit.any(-1), hit.int().argmax(-1) + 1, completion.shape[1]).tolist()


def eos_ids_of(model, tok) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    return sorted(set(ids) | ({tok.eos_token_id} if tok.eos_token_id is not None else set()))


def hf_call(model, tok, messages, group: int, new_tokens: int, *, greedy: bool = False):
    """model.generate on the rendered, left-padded prompts -> (completion ids [B*G, C], lengths to EOS)."""
    import torch

    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt", padding_side="left")
    eos = eos_ids_of(model, tok)
    kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    with torch.no_grad():
        out = model.generate(**enc, **kw, num_return_sequences=group, max_new_tokens=new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos)
    completion = out[:, enc["input_ids"].shape[1]:]
    return completion, first_eos_lengths(completion, eos)


def native_call(model, tok, messages, group: int, new_tokens: int, *, greedy: bool = False, seed: int = 0):
    from alignkit.rollout import generate

    r = generate(model, tok, messages, num_samples=group, max_new_tokens=new_tokens,
                 temperature=0.0 if greedy else 1.0, seed=seed, backend="native")
    return r.completion_ids, r.response_mask.sum(-1).tolist()


@contextmanager
def phase_timers(out: dict):
    """Wrap the native sampler's phase functions (by attribute; no file changes) and add their wall time to
    ``out[name]``. A function the library no longer has is skipped (listed in out['missing'])."""
    import importlib

    undo = []
    for module_name, cls, attr, name in PHASES:
        owner = importlib.import_module(module_name)
        owner = getattr(owner, cls, None) if cls else owner
        fn = getattr(owner, attr, None) if owner is not None else None
        if fn is None:
            out.setdefault("missing", []).append(f"{module_name}.{cls + '.' if cls else ''}{attr}")
            continue

        def timed(*a, _fn=fn, _name=name, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                out[_name] = out.get(_name, 0.0) + time.perf_counter() - t

        setattr(owner, attr, timed)
        undo.append((owner, attr, fn))
    try:
        yield
    finally:
        for owner, attr, fn in undo:
            setattr(owner, attr, fn)


def phase_breakdown(phases: dict, total: float) -> dict:
    """Phase seconds plus ``other`` = total - the timed phases (nested phases: FastDecoder.__init__ is not inside
    the others). Fractions of the total in ``share``.

    >>> phase_breakdown({"prefill": 1.0, "decode_forward": 6.0}, 10.0)["share"]
    {'prefill': 0.1, 'decode_forward': 0.6, 'other': 0.3}
    """
    timed = {k: v for k, v in phases.items() if k != "missing"}
    seconds = {**timed, "other": max(total - sum(timed.values()), 0.0)}
    return {"seconds": seconds, "total_s": total, "share": {k: round(v / total, 4) for k, v in seconds.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=parse_shapes, default=parse_shapes("4x4,8x8"), help="BxG list (default 4x4,8x8)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="longest completion (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--model-dir", help="'real' (default), 'tiny' (the bundled tiny base: a plumbing check) or a dir")
    ap.add_argument("--profile", action="store_true", help="torch.profiler top ops of one native call per shape")
    ap.add_argument("--quick", action="store_true", help="smoke: --shapes 2x2 --max-new-tokens 8 --repeats 1, "
                    "--model-dir tiny unless given")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.shapes, args.max_new_tokens, args.repeats = [(2, 2)], 8, 1
        args.model_dir = args.model_dir or "tiny"
    import torch

    from alignkit.models import load_causal_lm, load_tokenizer

    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model_dir)
    model, tok = load_causal_lm(model_dir).float().eval(), load_tokenizer(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    n = n_params(model)
    rate = matmul_rate(config, args.threads)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"model: {model_dir.name}{'' if args.model_dir in (None, 'real') else ' (NOT the issue-18 model)'}, "
          f"N = {n / 1e6:.1f}M, fp32; matmul rate {rate:.1f} GFLOP/s on its shapes; EOS ids {eos_ids_of(model, tok)}",
          flush=True)
    results = []
    for b, g in args.shapes:
        messages = [r["prompt"] for r in word_problems(b, seed=0)]
        prompt_tokens = sum(len(tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                                    add_special_tokens=False)["input_ids"]) for m in messages)
        runners = {"hf_generate": lambda m=messages, g=g: hf_call(model, tok, m, g, args.max_new_tokens),
                   "native": lambda m=messages, g=g: native_call(model, tok, m, g, args.max_new_tokens)}
        for fn in runners.values():  # warm-up
            fn()
        rates = {k: [] for k in runners}
        tokens = {k: [] for k in runners}
        secs = {k: [] for k in runners}
        for _ in range(args.repeats):
            for name, fn in runners.items():
                t = time.perf_counter()
                _, lengths = fn()
                dt = time.perf_counter() - t
                tokens[name].append(sum(lengths))
                secs[name].append(dt)
                rates[name].append(sum(lengths) / dt)
        row = {"shape": f"{b}x{g}", "prompt_tokens": prompt_tokens}
        for name in runners:
            med_tok = statistics.median(tokens[name])
            med_s = statistics.median(secs[name])
            floor = floor_seconds(floor_flops(n, forward_tokens=med_tok + prompt_tokens), rate)
            row[name] = {"tokens_per_s": statistics.median(rates[name]), "tokens_per_call": med_tok,
                         "s_per_call": med_s, "floor_s": floor, "floor_share": floor / med_s,
                         "tokens_per_s_all": rates[name]}
        row["ratio"] = row["native"]["tokens_per_s"] / row["hf_generate"]["tokens_per_s"]
        phases: dict = {}
        with phase_timers(phases):
            t = time.perf_counter()
            native_call(model, tok, messages, g, args.max_new_tokens, seed=1)
            total = time.perf_counter() - t
        row["native_phases"] = {**phase_breakdown(phases, total), "missing": phases.get("missing", [])}
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                native_call(model, tok, messages, g, args.max_new_tokens, seed=2)
            row["profile_top"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        results.append(row)
        print(f"\nshape {b}x{g}, max {args.max_new_tokens} new tokens, {prompt_tokens} prompt tokens; medians of "
              f"{args.repeats} round(s)")
        print(f"  {'':12} {'tok/s':>8} {'tok/call':>9} {'s/call':>8} {'floor s':>8} {'floor share':>12}")
        for name in runners:
            r = row[name]
            print(f"  {name:12} {r['tokens_per_s']:8.1f} {r['tokens_per_call']:9.0f} {r['s_per_call']:8.2f} "
                  f"{r['floor_s']:8.3f} {r['floor_share']:12.1%}")
        print(f"  native / model.generate: {row['ratio']:.2f}x tokens/s (bar 3x: {'MET' if row['ratio'] >= 3 else 'NOT met'})")
        p = row["native_phases"]
        print(f"  native phases of one call ({p['total_s']:.2f} s): " + ", ".join(
            f"{k} {v:.3f} s ({p['share'][k]:.0%})" for k, v in p["seconds"].items())
            + (f"; not found: {p['missing']}" if p["missing"] else ""))
        if args.profile:
            print(row["profile_top"])
    # greedy identity on the largest shape's prompts, G = 1
    b = max(b for b, _ in args.shapes)
    messages = [r["prompt"] for r in word_problems(b, seed=0)]
    hf_ids, hf_len = hf_call(model, tok, messages, 1, args.max_new_tokens, greedy=True)
    nat_ids, nat_len = native_call(model, tok, messages, 1, args.max_new_tokens, greedy=True)
    differ = [i for i in range(b) if hf_len[i] != nat_len[i]
              or hf_ids[i, :hf_len[i]].tolist() != nat_ids[i, :nat_len[i]].tolist()]
    greedy = {"rows": b, "identical": b - len(differ), "differ": differ}
    print(f"\ngreedy (G=1, {b} prompts): {greedy['identical']}/{b} rows identical to model.generate"
          + (f"; differ: {differ}" if differ else ""))
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load_before": load,
                                        "load_after": load_after, "n_params": n, "rate_gflops": rate,
                                        "results": results, "greedy": greedy}, indent=1))


if __name__ == "__main__":
    main()
