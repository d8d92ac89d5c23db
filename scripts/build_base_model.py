"""Build the bundled tiny base model: `python scripts/build_base_model.py` (about 45 s on 2 CPU cores).

It pretrains a fresh tiny Llama with `alignkit sft` on synthetic arithmetic and ships the result in
`src/alignkit/assets/tiny-base/` (safetensors + tokenizer + chat template, well under 10 MB). The data is
chosen so that the R1 stages have room to show what they do:

- completions are mostly plain ("68" or "23+45=68"); only `--r1-share` (default 8%) use the
  `<think>...</think><answer>...</answer>` format, so the model rarely uses it unprompted;
- training is short, so greedy answers are right on a fair share of held-out problems, far from all.

The held-out numbers are measured at the end and written to the model card (README.md) beside the weights.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

from alignkit.config import load_config
from alignkit.data import ideal_trace, write_jsonl
from alignkit.evaluation import EVAL_SEED, arithmetic_eval_set, arithmetic_train_problems, evaluate_model
from alignkit.models import BUNDLED_DIR, load_causal_lm, load_tokenizer
from alignkit.recipes import sft


def completion(problem, rng: random.Random, r1_share: float) -> str:
    u = rng.random()
    if u < r1_share:
        return ideal_trace(problem)
    return str(problem.answer) if u < (1 + r1_share) / 2 else f"{problem.question}={problem.answer}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR, help="where to write the model (default: the package assets)")
    ap.add_argument("--n-train", type=int, default=20000, help="training problems")
    ap.add_argument("--steps", type=int, default=900, help="SFT steps")
    ap.add_argument("--r1-share", type=float, default=0.08, help="share of completions in the R1 format")
    ap.add_argument("--hidden-size", type=int, default=96, help="model hidden size")
    ap.add_argument("--num-layers", type=int, default=3, help="transformer layers")
    ap.add_argument("--seed", type=int, default=0, help="seed")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    # the training questions exclude alignkit.evaluation's held-out set (levels 1-3, seed 1000)
    train_p, eval_p = arithmetic_train_problems(args.n_train), arithmetic_eval_set()
    work = Path(tempfile.mkdtemp(prefix="alignkit-base-"))
    write_jsonl([{"prompt": p.question, "completion": completion(p, rng, args.r1_share)} for p in train_p],
                work / "train.jsonl")
    write_jsonl([{"prompt": p.question, "completion": str(p.answer)} for p in eval_p], work / "eval.jsonl")
    cfg = load_config(sft.SFTConfig, None, [
        "model.path=tiny", f"model.hidden_size={args.hidden_size}", f"model.num_layers={args.num_layers}",
        f"data.train_file={work / 'train.jsonl'}", f"data.eval_file={work / 'eval.jsonl'}", "data.max_length=64",
        f"train.steps={args.steps}", "train.batch_size=64", "train.eval_every=200", f"train.seed={args.seed}",
        "optim.lr=3e-3", "optim.warmup_steps=20", f"output.dir={work}", "output.name=base", "output.tensorboard=false",
    ])
    summary = sft.run(cfg)

    # Held-out check with greedy decoding, scored like every other stage (alignkit.evaluation).
    final = work / "base" / "final"
    scores = evaluate_model(load_causal_lm(final), load_tokenizer(final), eval_p)
    accuracy, fmt = scores["accuracy"], scores["format"]
    print(f"held-out greedy accuracy {accuracy:.3f}, R1-format share {fmt:.3f}, eval loss {summary['end']['eval/loss']:.3f}")

    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(final, args.out)
    card = {"levels": [1, 2, 3], "eval_seed": EVAL_SEED, "n_train": args.n_train, "steps": args.steps, "r1_share": args.r1_share,
            "seed": args.seed, "hidden_size": args.hidden_size, "num_layers": args.num_layers,
            "held_out_greedy_accuracy": accuracy, "held_out_r1_format_share": fmt, "held_out_problems": len(eval_p)}
    (args.out / "alignkit_base.json").write_text(json.dumps(card, indent=1))
    (args.out / "README.md").write_text(
        "# alignkit tiny base model\n\nBuilt by `python scripts/build_base_model.py` (see its docstring).\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in card.items()) + "\n")
    shutil.rmtree(work)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
