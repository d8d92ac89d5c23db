"""GPU check (issue 18), sized for one 10-minute device call: random-initialized models of real shape (Qwen2.5-0.5B
and 1.5B, from the config dicts below: no weights travel), bf16, one GPU.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json                 # on the GPU machine
    python benchmarks/gpu_check.py --models qwen2.5-0.5b --parts decode,train --out $OUT/gpu.json
    .venv/bin/python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json  # CPU: hidden 64, 2 layers, fp32

Parts (``--parts``, in this order; each part's results are written to ``--out`` as soon as it ends, so a call
cut short still returns what finished; a part that would start after ``--budget-s`` seconds is skipped):

- ``decode``: per model, B prompts x G samples (``--decode-shape``, default 8x8) of ``--prompt-len`` random
  token ids, ``--max-new-tokens`` new tokens with EOS ignored (equal work), T = 1: alignkit's native sampler
  vs ``model.generate``, tokens/s, one warm-up then ``--repeats`` interleaved rounds (median). Against the HBM
  bandwidth limit: each decode step reads every weight once plus the KV cache of every row
  (``decode_bytes_per_step``), so tokens/s <= rows x bandwidth / bytes-per-step (``bandwidth_limit_tokens_per_s``).
- ``train``: training MFU: forward + backward + AdamW step of a [rows, seq] batch (``--train-shape``) through
  ``model(...).loss`` (what TRL runs) and through alignkit's grouped completion logprobs (GRPO's update path,
  G completions sharing each prompt); model FLOPs per token = 6N + 12 L h T (``train_flops_per_token``), MFU =
  achieved FLOP/s / the GPU's dense bf16 peak.
- ``grpo``: one GRPO step, alignkit ``grpo.run`` vs TRL ``GRPOTrainer`` (HF generate) on the 0.5B shape, same
  prompts (synthetic arithmetic through the tiny byte tokenizer's chat template), B x G, lengths, beta 0.04,
  bf16; median s/step after one warm-up step. TRL is imported if present (its wheel is pure Python and can
  travel with the tree); if not, that side is skipped with a message.

The tokenizer is alignkit's tiny byte tokenizer (267 ids); the models keep their real 151,936-row vocabulary
(ids the tokenizer never emits decode to nothing). Random weights: the numbers are speed only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # alignkit from the tree that travelled, installed or not
    sys.path.insert(0, str(ROOT / "src"))

QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True, "hidden_act": "silu", "attention_dropout": 0.0}
QWEN25_15B = {**QWEN25_05B, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
              "num_attention_heads": 12, "num_key_value_heads": 2}
TINY = {**QWEN25_05B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 267, "max_position_embeddings": 1024}
CONFIGS = {"qwen2.5-0.5b": QWEN25_05B, "qwen2.5-1.5b": QWEN25_15B, "tiny": TINY}
# name fragment -> (HBM GB/s, dense bf16 TFLOP/s): datasheet figures (SXM parts)
GPUS = {"H200": (4800.0, 989.0), "H100": (3350.0, 989.0), "A100": (2039.0, 312.0), "L4": (300.0, 121.0),
        "A10": (600.0, 125.0)}


# ----------------------------------------------------------------------------------------------------------
# Pure arithmetic (tests/unit/test_bench_gpu_check.py)
# ----------------------------------------------------------------------------------------------------------
def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def param_count(cfg: dict) -> int:
    """Parameters of a Qwen2 (q/k/v biases) / Llama (``attention_bias`` False) decoder from its config; a tied
    head counted once."""
    h, inter, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    d, heads, kv = head_dim(cfg), cfg["num_attention_heads"], cfg["num_key_value_heads"]
    bias = cfg.get("attention_bias", cfg["model_type"] == "qwen2")
    attn = h * heads * d + 2 * h * kv * d + heads * d * h + ((heads + 2 * kv) * d if bias else 0)
    per_layer = attn + 3 * h * inter + 2 * h  # q k v o, gate up down, two RMSNorm weights
    return v * h + layers * per_layer + h + (0 if cfg.get("tie_word_embeddings") else v * h)


def kv_bytes_per_token(cfg: dict, bytes_per_el: int = 2) -> int:
    """Bytes of keys and values one token of context holds, over all layers."""
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim(cfg) * bytes_per_el


def decode_bytes_per_step(cfg: dict, rows: int, context: float, bytes_per_el: int = 2) -> float:
    """Bytes one decode step must read from HBM: every weight once (the embedding row lookups aside, the tied
    head reads the whole matrix) plus the KV cache of ``rows`` rows of ``context`` tokens."""
    return param_count(cfg) * bytes_per_el + rows * context * kv_bytes_per_token(cfg, bytes_per_el)


def bandwidth_limit_tokens_per_s(cfg: dict, rows: int, prompt_len: int, new_tokens: int, hbm_gbs: float,
                                 bytes_per_el: int = 2) -> float:
    """Upper bound on decode tokens/s: ``rows`` tokens per step, a step no faster than its bytes at ``hbm_gbs``;
    the context averaged over the decode (prompt + half the new tokens)."""
    step_s = decode_bytes_per_step(cfg, rows, prompt_len + new_tokens / 2, bytes_per_el) / (hbm_gbs * 1e9)
    return rows / step_s


def train_flops_per_token(cfg: dict, seq_len: int) -> float:
    """Model FLOPs of training per token: 6N (forward + backward of every weight) + 12 L h T (attention scores
    and their use, forward + backward; PaLM's MFU formula with T the sequence length)."""
    return 6 * param_count(cfg) + 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def gpu_peaks(name: str, override_gbs: float | None = None, override_tflops: float | None = None):
    """(HBM GB/s, bf16 TFLOP/s) for a device name (None where unknown), the overrides winning."""
    found = next((v for k, v in GPUS.items() if k in name), (None, None))
    return override_gbs or found[0], override_tflops or found[1]


def parse_shape(text: str) -> tuple[int, int]:
    b, _, g = text.lower().partition("x")
    return int(b), int(g)


# ----------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------
def build(name: str, device, dtype):
    """A random-initialized model of the named config (seed 0) and the tiny byte tokenizer."""
    import torch
    import transformers

    from alignkit.models import build_tiny_tokenizer

    cfg = dict(CONFIGS[name])
    tok = build_tiny_tokenizer(model_max_length=cfg["max_position_embeddings"])
    config = transformers.AutoConfig.for_model(**cfg, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                               bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok, cfg


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def part_decode(name, args, device, dtype, peaks) -> dict:
    import torch

    from alignkit.rollout import generate

    model, tok, cfg = build(name, device, dtype)
    b, g = args.decode_shape
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 267, (args.prompt_len,), generator=gen).tolist() for _ in range(b)]
    ids = torch.tensor(prompts, device=device)

    def native():
        r = generate(model, tok, prompts, num_samples=g, max_new_tokens=args.max_new_tokens, temperature=1.0,
                     seed=0, ignore_eos=True)
        sync(device)
        return int(r.response_mask.sum())

    def hf():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, num_return_sequences=g, max_new_tokens=args.max_new_tokens,
                                 min_new_tokens=args.max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        sync(device)
        return out[:, ids.shape[1]:].numel()

    runners = {"native": native, "hf_generate": hf}
    for fn in runners.values():
        fn()
    rates = {k: [] for k in runners}
    for _ in range(args.repeats):
        for k, fn in runners.items():
            t = time.perf_counter()
            n = fn()
            rates[k].append(n / (time.perf_counter() - t))
    out = {"model": name, "params": param_count(cfg), "rows": b * g, "prompt_len": args.prompt_len,
           "new_tokens": args.max_new_tokens, **{f"{k}_tokens_per_s": statistics.median(v) for k, v in rates.items()},
           "rates_all": rates}
    out["native_vs_generate"] = out["native_tokens_per_s"] / out["hf_generate_tokens_per_s"]
    if peaks[0]:
        limit = bandwidth_limit_tokens_per_s(cfg, b * g, args.prompt_len, args.max_new_tokens, peaks[0],
                                             torch.finfo(dtype).bits // 8)
        out.update(bandwidth_limit_tokens_per_s=limit, native_share_of_limit=out["native_tokens_per_s"] / limit,
                   hf_share_of_limit=out["hf_generate_tokens_per_s"] / limit)
    return out


def part_train(name, args, device, dtype, peaks) -> dict:
    import torch

    from alignkit.models import grouped

    model, tok, cfg = build(name, device, dtype)
    model.train()
    rows, seq = args.train_shape
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=str(device).startswith("cuda"))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 267, (rows, seq), generator=gen).to(device)
    g = args.decode_shape[1]
    p = seq // 2
    prompt = ids[::g, :p].repeat_interleave(g, 0)[:rows]  # G completions share each prompt (GRPO's layout)
    completion = ids[:, p:]
    ones_p, ones_c = torch.ones_like(prompt), torch.ones_like(completion)

    def hf_step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def grouped_step():
        lp = grouped.grouped_completion_logprobs(model, prompt, ones_p, completion, ones_c)
        (-lp.mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = {"model": name, "rows": rows, "seq": seq, "grouped_supported": grouped.supports(model)}
    steps = {"hf_forward_backward": hf_step}
    if out["grouped_supported"]:
        steps["alignkit_grouped"] = grouped_step
    flops_tok = train_flops_per_token(cfg, seq)
    for k, fn in steps.items():
        fn()
        sync(device)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        s = statistics.median(times)
        out[k] = {"s_per_step": s, "tokens_per_s": rows * seq / s}
        if peaks[1]:
            # the grouped path computes each shared prompt once: its model FLOPs are fewer than rows x seq x 6N,
            # so its MFU is stated on the FLOPs it must do (distinct prompts + completions)
            tokens = rows * seq if k == "hf_forward_backward" else (rows // g) * p + rows * (seq - p)
            out[k]["mfu"] = mfu(tokens / s, flops_tok, peaks[1])
    if str(device).startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _reward(completions, **_):
    """A reward with variance on random weights: the share of digits in the completion's text."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def digit_share(completion, **_) -> float:
    return _reward([completion])[0]


def part_grpo(name, args, device, dtype, peaks) -> dict:
    import torch

    model, tok, cfg = build(name, "cpu", torch.float32)
    b, g = args.grpo_shape
    out: dict = {"model": name, "shape": f"{b}x{g}", "new_tokens": args.grpo_new_tokens, "beta": 0.04}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        model.save_pretrained(f"{work}/model")
        tok.save_pretrained(f"{work}/model")
        del model
        bf16 = dtype == torch.bfloat16
        total = args.grpo_steps + 1
        precision = "bf16" if bf16 else "'no'"  # quoted: YAML reads a bare no as false
        # alignkit
        from real_grpo_vs_trl import step_marks

        from alignkit.config import load_config
        from alignkit.recipes import grpo

        marks, rows = step_marks(grpo)
        cfg_ak = load_config(grpo.GRPOConfig, None, [
            f"model.path={work}/model", f"model.dtype={'bfloat16' if bf16 else 'float32'}", "data.levels=[2]",
            "data.n_train=256", "data.n_eval=1", f"rollout.prompts_per_step={b}", f"rollout.group_size={g}",
            f"rollout.max_new_tokens={args.grpo_new_tokens}", "reward.weights={\"gpu_check:digit_share\": 1.0}",
            "reward.success_key=gpu_check:digit_share", "loss.beta=0.04", "loss.mu=1",
            f"loss.micro_batch_size={b * g}", "loss.std_ddof=1", "optim.lr=1e-6", "optim.warmup_steps=0",
            "optim.schedule=constant", f"train.steps={total}", "train.eval_every=1000000",
            f"train.precision={precision}", "output.tensorboard=false", f"output.dir={work}/runs",
            "output.name=alignkit"])
        kwargs = {"callbacks": [lambda step, row: (marks.append(time.perf_counter()), rows.append(row))]} \
            if rows is not None else {}
        t = time.perf_counter()
        grpo.run(cfg_ak, **kwargs)
        steps = [b_ - a for a, b_ in zip(marks, marks[1:])]
        out["alignkit"] = {"s_per_step": statistics.median(steps[1:] or steps), "steps_s": steps,
                           "process_s": time.perf_counter() - t}
        if str(device).startswith("cuda"):
            out["alignkit"]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        # TRL
        try:
            import trl
            from trl import GRPOConfig, GRPOTrainer
        except ImportError as err:
            out["trl"] = f"skipped: trl is not importable ({err}); carry its wheel to compare"
            print(f"grpo: TRL side skipped ({err})", flush=True)
            return out
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

        from alignkit.data import make_split

        problems = make_split(256, 1, level=2, seed=0)[0]
        ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p.question}]} for p in problems])
        tmarks: list[float] = []

        class Marks(TrainerCallback):
            def on_step_begin(self, a, state, control, **k):
                if not tmarks:
                    tmarks.append(time.perf_counter())

            def on_step_end(self, a, state, control, **k):
                tmarks.append(time.perf_counter())

        trl_model = AutoModelForCausalLM.from_pretrained(f"{work}/model", dtype=dtype)
        config = GRPOConfig(
            output_dir=f"{work}/trl", max_steps=total, per_device_train_batch_size=b * g, gradient_accumulation_steps=1,
            num_generations=g, max_completion_length=args.grpo_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
            beta=0.04, num_iterations=1, loss_type="grpo", scale_rewards="group", learning_rate=1e-6,
            lr_scheduler_type="constant", warmup_steps=0, bf16=bf16, gradient_checkpointing=False,
            use_cpu=not str(device).startswith("cuda"), save_strategy="no", eval_strategy="no", report_to="none",
            logging_steps=1, disable_tqdm=True, seed=0, log_completions=False)
        trainer = GRPOTrainer(model=trl_model, args=config, train_dataset=ds,
                              processing_class=AutoTokenizer.from_pretrained(f"{work}/model"), reward_funcs=[_reward],
                              callbacks=[Marks()])
        t = time.perf_counter()
        trainer.train()
        steps = [b_ - a for a, b_ in zip(tmarks, tmarks[1:])]
        out["trl"] = {"version": trl.__version__, "s_per_step": statistics.median(steps[1:] or steps),
                      "steps_s": steps, "process_s": time.perf_counter() - t}
        if str(device).startswith("cuda"):
            out["trl"]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["ratio"] = out["trl"]["s_per_step"] / out["alignkit"]["s_per_step"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU check: the tiny config (hidden 64, 2 layers), fp32, "
                    "small shapes")
    ap.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b", help="decode/train models (default both)")
    ap.add_argument("--parts", default="decode,train,grpo", help="comma list of decode, train, grpo")
    ap.add_argument("--decode-shape", type=parse_shape, default=(8, 8), help="BxG for decode (default 8x8)")
    ap.add_argument("--prompt-len", type=int, default=64, help="decode prompt tokens (default 64)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="decode new tokens (default 256)")
    ap.add_argument("--train-shape", type=parse_shape, default=(16, 512), help="rows x seq for MFU (default 16x512)")
    ap.add_argument("--grpo-shape", type=parse_shape, default=(8, 8), help="BxG of the GRPO step (default 8x8)")
    ap.add_argument("--grpo-new-tokens", type=int, default=128, help="GRPO completion length cap (default 128)")
    ap.add_argument("--grpo-steps", type=int, default=2, help="timed GRPO steps after 1 warm-up (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (decode, train; default 3)")
    ap.add_argument("--budget-s", type=float, default=480, help="skip parts that would start after this (default 480)")
    ap.add_argument("--hbm-gbs", type=float, help="GPU memory bandwidth GB/s when the name is not in the table")
    ap.add_argument("--peak-tflops", type=float, help="GPU dense bf16 TFLOP/s when the name is not in the table")
    ap.add_argument("--out", type=Path, required=True, help="JSON results path (rewritten after every part)")
    args = ap.parse_args()
    import torch

    t0 = time.perf_counter()
    if args.tiny:
        args.models, args.decode_shape, args.prompt_len, args.max_new_tokens = "tiny", (2, 2), 8, 8
        args.train_shape, args.grpo_shape, args.grpo_new_tokens, args.grpo_steps, args.repeats = (4, 32), (2, 2), 8, 1, 1
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    peaks = gpu_peaks(name, args.hbm_gbs, args.peak_tflops) if cuda else (args.hbm_gbs, args.peak_tflops)
    report = {"device": name, "torch": torch.__version__, "dtype": str(dtype), "hbm_gbs": peaks[0],
              "peak_tflops": peaks[1], "args": {k: str(v) for k, v in vars(args).items()}, "parts": {}, "skipped": []}
    print(f"device {name}, {dtype}, HBM {peaks[0]} GB/s, peak {peaks[1]} TFLOP/s", flush=True)
    if not cuda and not args.tiny:
        print("no CUDA device: running the real shapes on CPU will be slow; use --tiny for a CPU check", flush=True)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))

    models = [m for m in args.models.split(",") if m]
    plan = [(part, m) for part in args.parts.split(",") if part for m in (models if part != "grpo" else
                                                                         [models[0]])]
    for part, model_name in plan:
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            report["skipped"].append(f"{part}/{model_name}: {elapsed:.0f} s elapsed > --budget-s {args.budget_s:g}")
            continue
        fn = {"decode": part_decode, "train": part_train, "grpo": part_grpo}[part]
        t = time.perf_counter()
        try:
            result = fn(model_name, args, device, dtype, peaks)
        except Exception as err:  # noqa: BLE001 - one part failing must not lose the others' results
            import traceback

            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        result["part_s"] = time.perf_counter() - t
        report["parts"][f"{part}/{model_name}"] = result
        save()
        summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()
                   if not isinstance(v, (dict, list)) and k != "traceback"}
        print(f"{part}/{model_name}: {json.dumps(summary)}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    report["total_s"] = time.perf_counter() - t0
    save()
    print(f"done in {report['total_s']:.0f} s; {args.out}")


if __name__ == "__main__":
    main()
