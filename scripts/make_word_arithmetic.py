"""Two-digit arithmetic asked in plain words, as chat prompts with the answer as a reward field: the task of the
real-model learning runs (GRPO, PPO, DPO on SmolLM2-135M-Instruct) and of the real-size benchmarks.

    python scripts/make_word_arithmetic.py --out data/word_arith        # train.jsonl (2000), held_out.jsonl (100)
    python scripts/make_word_arithmetic.py --out data/word_arith --pairs   # + pairs.jsonl (preference data)

Rows: ``{"prompt": [{"role": "user", "content": "What is 27 plus 82?"}], "answer": "109"}``; a and b are drawn
uniformly from 10..99, the operation from plus/minus (minus never goes below zero). The held-out questions are
drawn first (seed 1) and never appear in the training file (seed 2), so held-out accuracy measures questions the
model never trained on.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def word_problems(n: int, seed: int, exclude: set | None = None) -> list[tuple[dict, tuple]]:
    """``n`` distinct (row, key) pairs; ``key`` = (a, op, b) is never one of ``exclude``."""
    rng, out, seen = random.Random(seed), [], set(exclude or ())
    while len(out) < n:
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice(["plus", "minus"])
        if op == "minus" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        answer = a + b if op == "plus" else a - b
        out.append(({"prompt": [{"role": "user", "content": f"What is {a} {op} {b}?"}], "answer": str(answer)},
                    (a, op, b)))
    return out


RAMBLE = ("To {verb} {a} and {b}, we need to first find the difference between these two numbers. This is a "
          "classic example of a mathematical operation. So, {a} {sym} {b} = {wrong}.")


def preference_pair(row: dict, key: tuple, rng: random.Random) -> dict:
    """A DPO pair for one problem: chosen = the answer stated at once ("27 plus 82 is 109."), rejected = the
    rambling, wrong style the instruct model answers in (a made-up explanation ending in a wrong sum)."""
    a, op, b = key
    wrong = int(row["answer"]) + rng.choice([-10, -2, -1, 1, 2, 10])
    verb, sym = ("add", "+") if op == "plus" else ("subtract", "-")
    return {"prompt": row["prompt"], "chosen": f"{a} {op} {b} is {row['answer']}.",
            "rejected": RAMBLE.format(verb=verb, a=a, b=b, sym=sym, wrong=wrong), "answer": row["answer"]}


def write(out_dir: Path, n_train: int = 2000, n_held_out: int = 100, *, pairs: bool = False) -> tuple[Path, ...]:
    held = word_problems(n_held_out, 1)
    train = word_problems(n_train, 2, {k for _, k in held})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "train.jsonl", out_dir / "held_out.jsonl"
    for path, rows in zip(paths, (train, held)):
        path.write_text("".join(json.dumps(r) + "\n" for r, _ in rows))
    if pairs:
        rng = random.Random(3)
        (out_dir / "pairs.jsonl").write_text("".join(json.dumps(preference_pair(r, k, rng)) + "\n" for r, k in train))
        paths = (*paths, out_dir / "pairs.jsonl")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/word_arith", help="output directory")
    parser.add_argument("--n-train", type=int, default=2000, help="training prompts")
    parser.add_argument("--n-held-out", type=int, default=100, help="held-out prompts")
    parser.add_argument("--pairs", action="store_true", help="also write pairs.jsonl: DPO pairs of the training problems")
    args = parser.parse_args(argv)
    for p in write(Path(args.out), args.n_train, args.n_held_out, pairs=args.pairs):
        print(p)


if __name__ == "__main__":
    main()
