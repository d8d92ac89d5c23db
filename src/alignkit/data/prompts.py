"""Prompts for the RL recipes (GRPO, PPO): loading, rendering once, and seeded resumable draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from alignkit.config import Section


class PromptDataSection(Section):
    train_file: str | None = Field(None, description="prompt records (prompt + ground-truth fields); None = synthetic arithmetic")
    eval_file: str | None = Field(None, description="held-out prompt records; None = the seeded arithmetic held-out set")
    levels: list[int] = Field([1, 2, 3], description="synthetic: arithmetic levels (a GRPO curriculum walks them in order)")
    n_train: int = Field(4000, gt=0, description="synthetic: training prompts (never a held-out question)")
    n_eval: int = Field(100, gt=0, description="held-out prompts answered greedily at evaluation")
    max_prompt_length: int = Field(64, gt=0, description="longest prompt in tokens")
    on_overflow: Literal["error", "drop"] = Field("error", description="a longer prompt: error, or drop and count")


@dataclass
class HeldOutProblem:
    question: object  # a string or chat messages
    answer: str | None


def load_prompts(cfg: PromptDataSection, tokenizer) -> tuple[dict[int, list], list, int]:
    """-> ({level: [(prompt_ids, prompt, fields)]}, held-out problems, dropped count).

    ``fields`` (everything of the record but the prompt) go to the reward functions; records without a
    ``level`` field are level 0. Prompts are rendered with the chat template once, here.
    """
    from alignkit.data.chat import render_prompt
    from alignkit.data.loading import load_records
    from alignkit.evaluation import arithmetic_eval_set, arithmetic_train_problems

    if cfg.train_file is None:
        records = [{"prompt": p.question, "answer": p.answer_text, "level": p.level}
                   for p in arithmetic_train_problems(cfg.n_train, cfg.levels)]
        held_out = arithmetic_eval_set(cfg.levels)[:cfg.n_eval]
    else:
        records = [dict(r.extra, prompt=r.prompt) for r in load_records(cfg.train_file, "prompt")]
        held_out = [HeldOutProblem(r.prompt, r.extra.get("answer")) for r in
                    load_records(cfg.eval_file, "prompt")][:cfg.n_eval] if cfg.eval_file else []
    pools: dict[int, list] = {}
    dropped = 0
    for rec in records:
        ids = render_prompt(tokenizer, rec["prompt"], max_length=cfg.max_prompt_length, on_overflow=cfg.on_overflow)
        if ids is None:
            dropped += 1
            continue
        fields = {k: v for k, v in rec.items() if k != "prompt"}
        pools.setdefault(int(rec.get("level", 0)), []).append((ids, rec["prompt"], fields))
    return pools, held_out, dropped


class PromptSampler:
    """Seeded, resumable draws of n prompts from one level's pool (or all levels): a fresh permutation of
    the pool each pass, continued across passes so every draw is full."""

    def __init__(self, pools: dict[int, list], seed: int):
        self.pools = pools
        self.gen = torch.Generator().manual_seed(seed)
        self.orders: dict[str, list[int]] = {}
        self.cursors: dict[str, int] = {}

    def draw(self, n: int, level: int | None = None) -> list:
        key = "all" if level is None else str(level)
        pool = [x for lv in sorted(self.pools) for x in self.pools[lv]] if level is None else self.pools[level]
        out = []
        while len(out) < n:
            if self.cursors.get(key, len(pool)) >= len(pool):
                self.orders[key], self.cursors[key] = torch.randperm(len(pool), generator=self.gen).tolist(), 0
            take = self.orders[key][self.cursors[key]:self.cursors[key] + n - len(out)]
            self.cursors[key] += len(take)
            out += [pool[i] for i in take]
        return out

    def state_dict(self) -> dict:
        return {"orders": self.orders, "cursors": self.cursors, "generator": self.gen.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.orders, self.cursors = state["orders"], state["cursors"]
        self.gen.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
