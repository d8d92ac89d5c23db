"""What fusing kernels would buy: two probes behind the GRPO and PPO speed bars (issues 6 and 7).

    .venv/bin/python benchmarks/fusion_probe.py                  # both probes (torch.compile takes ~4 min)
    .venv/bin/python benchmarks/fusion_probe.py --no-compile     # eager GRPO times and the PPO probe only
    .venv/bin/python benchmarks/fusion_probe.py --out probe.json

Both sides of grpo_vs_trl.py and ppo_vs_trl.py spend most of a step outside matrix multiplies (their
``--flops`` floors). These probes measure how much of that the two obvious remedies remove, on the same
bundled model, one thread:

1. GRPO: the training-side forward of ``alignkit grpo``
   (``alignkit.models.grouped.grouped_completion_logprobs``) as the recipe runs it in the benchmark's workload:
   16 prompts x G = 8, completions of at most 40 tokens, two micro-batches of 64; the reference pass (no grad)
   and the update (forward + backward). Eager against ``torch.compile(dynamic=True)``: inductor's generated
   C++ kernels fuse the elementwise work around the matrix multiplies, the library's remedy for many small
   kernels. The prompts are real arithmetic prompts; the completions are seeded random tokens whose lengths
   average ``--mean-length`` (14 = the benchmark's steady state, ~1,800 tokens per step): the forward's cost
   depends on lengths, not on which tokens. Compile time is reported apart; steady-state times are medians,
   eager and compiled interleaved. The eager update is also timed at other micro-batch sizes
   (``--micro-sizes``): a fixed cost per call would make small micro-batches slower.
2. PPO: one minibatch of ppo_vs_trl.py (8 sequences of prompt + 6 completion tokens, packed into one row)
   through transformers' ``model.forward`` (what ``alignkit ppo`` and TRL both run, twice per minibatch:
   policy and critic) against ``lean_forward``: the same weights and operations, functional, with none of the
   module, mask-building and output bookkeeping. Then the pair a minibatch really runs, policy logits and
   critic values, forward + backward: two ``model.forward`` calls against one lean pass that stacks the two
   trunks' weights (``lean_hidden``: every projection one ``bmm`` for both models). Each lean form is checked
   equal to ``model.forward`` first.

Results and their reading: docs/benchmarks.md ("Session 5").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------------------------------------
# 1. GRPO: grouped logprobs, eager vs torch.compile
# ----------------------------------------------------------------------------------------------------------
def grpo_batch(tokenizer, *, prompts: int, group: int, max_len: int, mean_length: float, seed: int) -> dict:
    """Left-padded real prompts [R, P] (each repeated G times, group-contiguous) and right-padded random
    completions [R, C] whose lengths are 1 + Exponential(mean_length - 1), capped at max_len."""
    from alignkit.data.chat import render_prompt
    from alignkit.evaluation import arithmetic_train_problems
    from alignkit.rollout.native import left_pad

    ids = [render_prompt(tokenizer, p.question) for p in arithmetic_train_problems(prompts, [1, 2, 3])]
    p_ids, p_mask = left_pad(ids, tokenizer.pad_token_id, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    rows = prompts * group
    lengths = (1 + torch.empty(rows).exponential_(1 / (mean_length - 1), generator=gen)).round().long().clamp(1, max_len)
    c_mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()
    c_ids = torch.randint(2, len(tokenizer), c_mask.shape, generator=gen) * c_mask
    return {"prompt_ids": p_ids.repeat_interleave(group, 0), "prompt_mask": p_mask.repeat_interleave(group, 0),
            "completion_ids": c_ids, "completion_mask": c_mask}


def grpo_probe(args) -> dict:
    from alignkit.config import ModelSection
    from alignkit.models import grouped, load_policy

    model, tokenizer = load_policy(ModelSection(path="bundled"))
    batch = grpo_batch(tokenizer, prompts=16, group=8, max_len=40, mean_length=args.mean_length, seed=0)
    rows = batch["prompt_ids"].shape[0]

    def passes(fn, size: int = 64):  # the reference pass and the update over micro-batches of `size` rows
        micro = [slice(i, i + size) for i in range(0, rows, size)]

        def ref():
            with torch.no_grad():
                for s in micro:
                    fn(model, *(batch[k][s] for k in batch))

        def update():
            for s in micro:
                fn(model, *(batch[k][s] for k in batch)).sum().backward()
            model.zero_grad(set_to_none=True)
        return ref, update

    eager_ref, eager_update = passes(grouped.grouped_completion_logprobs)
    out = {"tokens": int(batch["completion_mask"].sum()), "rows": rows,
           "prompt_width": batch["prompt_ids"].shape[1], "completion_width": batch["completion_ids"].shape[1]}
    sizes = [int(x) for x in args.micro_sizes.split(",") if x.strip()]
    by_size: dict[int, list[float]] = {}
    for _ in range(args.rounds):  # eager update by micro-batch size, interleaved: a cost per call would show here
        for size in sizes:
            by_size.setdefault(size, []).append(median_ms(passes(grouped.grouped_completion_logprobs, size)[1], args.repeats))
    out["eager_update_ms_by_micro_batch"] = {size: statistics.median(v) for size, v in by_size.items()}
    if args.no_compile:
        out.update(eager_ref_ms=median_ms(eager_ref, args.repeats), eager_update_ms=median_ms(eager_update, args.repeats))
        return out
    compiled = torch.compile(grouped.grouped_completion_logprobs, dynamic=True)
    comp_ref, comp_update = passes(compiled)
    for name, fn in (("update", comp_update), ("ref", comp_ref)):  # first calls compile (and recompile per shape)
        start = time.perf_counter()
        fn()
        fn()
        out[f"compile_{name}_s"] = time.perf_counter() - start
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so load changes hit both alike
        for name, fn in (("eager_ref", eager_ref), ("compiled_ref", comp_ref),
                         ("eager_update", eager_update), ("compiled_update", comp_update)):
            times.setdefault(name, []).append(median_ms(fn, args.repeats))
    out.update({f"{k}_ms": statistics.median(v) for k, v in times.items()})
    out["rounds"] = {k: [round(x, 2) for x in v] for k, v in times.items()}
    return out


# ----------------------------------------------------------------------------------------------------------
# 2. PPO: transformers' forward vs a lean functional forward on one packed minibatch
# ----------------------------------------------------------------------------------------------------------
def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[n, ...]: one model's tensor as a view, several stacked (a copy, differentiable)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, -1)
    return torch.cat([-x2, x1], -1)


def lean_hidden(trunks: list, input_ids: torch.Tensor, position_ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states [n, T, hidden] of n transformers Llama trunks (``model.model``; same shapes,
    own weights) on one packed row: input_ids, position_ids, segments [1, T] (segment id of each token;
    attention is causal within a segment). HF's operations, in its order, on its parameters, functionally (no
    module calls, hooks or mask utilities); with n = 2 every projection is one ``bmm`` over both trunks'
    stacked weights, so two models cost one sequence of kernels."""
    first = trunks[0]
    cfg, t = first.config, input_ids.shape[1]
    heads, kv_heads, d, n = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, len(trunks)
    mask = (segments[0, :, None] == segments[0, None, :]) & torch.ones(t, t, dtype=torch.bool).tril()
    cos, sin = first.rotary_emb(first.embed_tokens.weight[:1][None], position_ids)  # [1, T, d]
    cos, sin = cos[:, :, None], sin[:, :, None]

    def rms(x, norms):
        eps = norms[0].variance_epsilon
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * _stacked([m.weight for m in norms])[:, None]

    def linear(x, mods):  # x [n, T, in] -> [n, T, out]
        if any(m.bias is not None for m in mods):
            raise ValueError("lean_hidden: projections with biases are not covered (a Llama has none)")
        return torch.bmm(x, _stacked([m.weight for m in mods]).transpose(1, 2))

    x = torch.cat([F.embedding(input_ids, tr.embed_tokens.weight) for tr in trunks])  # [n, T, hidden]
    for layers in zip(*(tr.layers for tr in trunks)):
        attn = [la.self_attn for la in layers]
        h = rms(x, [la.input_layernorm for la in layers])
        q = linear(h, [a.q_proj for a in attn]).view(n, t, heads, d)
        k = linear(h, [a.k_proj for a in attn]).view(n, t, kv_heads, d)
        v = linear(h, [a.v_proj for a in attn]).view(n, t, kv_heads, d)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           scale=attn[0].scaling, enable_gqa=heads != kv_heads)
        x = x + linear(o.transpose(1, 2).reshape(n, t, heads * d), [a.o_proj for a in attn])
        h = rms(x, [la.post_attention_layernorm for la in layers])
        mlp = [la.mlp for la in layers]
        x = x + linear(F.silu(linear(h, [m.gate_proj for m in mlp])) * linear(h, [m.up_proj for m in mlp]),
                       [m.down_proj for m in mlp])
    return rms(x, [tr.norm for tr in trunks])


def lean_forward(model, input_ids: torch.Tensor, position_ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Logits [1, T, V] of a transformers Llama causal LM on one packed row (see ``lean_hidden``)."""
    return F.linear(lean_hidden([model.model], input_ids, position_ids, segments), model.lm_head.weight)


def ppo_minibatch(tokenizer, *, sequences: int, completion: int, seed: int):
    """One packed row: `sequences` real prompts, each + `completion` random tokens ending in EOS."""
    from alignkit.data.chat import render_prompt
    from alignkit.evaluation import arithmetic_train_problems

    gen = torch.Generator().manual_seed(seed)
    seqs = [render_prompt(tokenizer, p.question) + torch.randint(2, len(tokenizer), (completion - 1,), generator=gen).tolist()
            + [tokenizer.eos_token_id] for p in arithmetic_train_problems(sequences, [1, 2, 3])]
    ids = torch.tensor([sum(seqs, [])])
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    seg = torch.cat([torch.full((len(s),), i) for i, s in enumerate(seqs)])[None]
    return ids, pos, seg


def ppo_probe(args) -> dict:
    from alignkit.config import ModelSection
    from alignkit.models import load_policy
    from alignkit.models.value import ValueModel

    model, tokenizer = load_policy(ModelSection(path="bundled"))
    critic = ValueModel.from_causal_lm(model, seed=0)  # the policy's trunk, copied, and a value head
    with torch.no_grad():  # weights of its own, as after training
        for p in critic.trunk.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    model.train(), critic.train()
    ids, pos, seg = ppo_minibatch(tokenizer, sequences=8, completion=6, seed=0)

    def hf():
        return model(input_ids=ids, position_ids=pos, use_cache=False).logits

    def lean():
        return lean_forward(model, ids, pos, seg)

    def hf_pair():  # what a PPO minibatch runs: the policy's logits and the critic's per-token head outputs
        hidden = critic.trunk(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        return hf(), critic.head(hidden)

    def lean_pair():
        both = lean_hidden([model.model, critic.trunk], ids, pos, seg)
        return F.linear(both[:1], model.lm_head.weight), critic.head(both[1:])

    with torch.no_grad():
        max_diff = max(float((a - b).abs().max()) for a, b in ((lean(), hf()), *zip(lean_pair(), hf_pair())))
    if max_diff > 1e-4:
        raise RuntimeError(f"the lean forward differs from model.forward by {max_diff}")

    def loss(out):
        return out.logsumexp(-1).sum() if torch.is_tensor(out) else out[0].logsumexp(-1).sum() + out[1].sum()

    def backward_of(fn):
        def run():
            loss(fn()).backward()
            model.zero_grad(set_to_none=True), critic.zero_grad(set_to_none=True)
        return run

    cases = [("hf_forward", hf, False), ("lean_forward", lean, False),
             ("hf_forward_backward", backward_of(hf), True), ("lean_forward_backward", backward_of(lean), True),
             ("hf_pair_forward_backward", backward_of(hf_pair), True),
             ("lean_pair_forward_backward", backward_of(lean_pair), True)]
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, fn, grad in cases:
            with torch.set_grad_enabled(grad):
                times.setdefault(name, []).append(median_ms(fn, args.repeats * 4))
    out = {"tokens": ids.shape[1], "max_abs_diff": max_diff}
    out.update({f"{k}_ms": statistics.median(v) for k, v in times.items()})
    out["rounds"] = {k: [round(x, 3) for x in v] for k, v in times.items()}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", default="grpo,ppo", help="comma-separated: grpo, ppo")
    ap.add_argument("--no-compile", action="store_true", help="GRPO probe: eager times only (skips ~4 min of compiling)")
    ap.add_argument("--mean-length", type=float, default=14.0, help="GRPO probe: mean completion length (tokens)")
    ap.add_argument("--micro-sizes", default="32,64,128",
                    help="GRPO probe: micro-batch sizes (rows) at which the eager update is also timed")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per round and case (x4 for the PPO probe)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    if "grpo" in probes:
        g = result["grpo"] = grpo_probe(args)
        print(f"GRPO grouped logprobs, {g['rows']} rows, {g['tokens']} completion tokens "
              f"(P={g['prompt_width']}, C={g['completion_width']}):")
        for name in ("ref", "update"):
            line = f"  {name:6}: eager {g[f'eager_{name}_ms']:7.1f} ms"
            if f"compiled_{name}_ms" in g:
                line += (f" | compiled {g[f'compiled_{name}_ms']:7.1f} ms ({g[f'eager_{name}_ms'] / g[f'compiled_{name}_ms']:.2f}x)"
                         f" | compile {g[f'compile_{name}_s']:.0f} s")
            print(line)
        print("  eager update by micro-batch size: " + ", ".join(
            f"{size} rows {ms:.1f} ms" for size, ms in g["eager_update_ms_by_micro_batch"].items()))
    if "ppo" in probes:
        p = result["ppo"] = ppo_probe(args)
        print(f"PPO minibatch, {p['tokens']} packed tokens (lean vs model.forward max |diff| {p['max_abs_diff']:.1e}):")
        for name in ("forward", "forward_backward", "pair_forward_backward"):
            print(f"  {name:21}: model.forward {p[f'hf_{name}_ms']:6.2f} ms | lean {p[f'lean_{name}_ms']:6.2f} ms "
                  f"({p[f'hf_{name}_ms'] / p[f'lean_{name}_ms']:.2f}x)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
