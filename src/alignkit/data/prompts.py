"""Prompts for the RL recipes (GRPO, PPO): loading, rendering once, and seeded resumable draws.

Prompts are pooled by an integer ``level`` field (a curriculum walks the pools in order). A record
without one, or whose ``level`` is not an integer (``"hard"``, 2.5; a digit string such as a CSV cell
"2" counts as 2), goes to pool 0; its ``level`` stays an ordinary field passed to the reward functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field

from alignkit.data.schemas import DataError
from alignkit.data.source import DataSourceFields

SYNTHETIC = "<synthetic arithmetic>"


class PromptDataSection(DataSourceFields):
    train_file: str | None = Field(None, description="prompt records (prompt + ground-truth fields); None = synthetic arithmetic")
    eval_file: str | None = Field(None, description="held-out prompt records; None = the seeded arithmetic held-out set")
    levels: list[int] = Field([1, 2, 3], description="synthetic: arithmetic levels (a GRPO curriculum walks them in order)")
    n_train: int = Field(4000, gt=0, description="synthetic: training prompts (never a held-out question)")
    n_eval: int = Field(100, ge=0, description="held-out prompts answered greedily at evaluation (0 = no held-out evaluation: a caller that evaluates on its own, as the R1 pipeline does after every stage)")
    max_prompt_length: int = Field(64, gt=0, description="longest prompt in tokens")
    on_overflow: Literal["error", "drop"] = Field("error", description="a longer prompt: error, or drop and count")


@dataclass
class HeldOutProblem:
    question: object  # a string or chat messages
    answer: str | None
    fields: dict = field(default_factory=dict)  # the record's other fields, for reward functions


def pool_level(fields: dict) -> int:
    """The pool of a prompt: its ``level`` if that is an integer (or a string of digits), else 0.

    >>> pool_level({"level": 3}), pool_level({"level": "2"}), pool_level({"level": "hard"}), pool_level({})
    (3, 2, 0, 0)
    """
    level = fields.get("level")
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and level.strip().lstrip("-").isdigit():
        return int(level)
    return 0


def load_prompts(cfg: PromptDataSection, tokenizer, *, train_records=None, eval_records=None
                 ) -> tuple[dict[int, list], list, int]:
    """-> ({level: [(prompt_ids, prompt, fields)]}, held-out problems, dropped count).

    ``fields`` (everything of the record but the prompt) go to the reward functions; the pool is
    ``pool_level(fields)``. Prompts are rendered with the chat template once, here. A prompt longer than
    ``data.max_prompt_length`` is an error naming its file, row and field (``data.on_overflow=error``) or
    is dropped and counted (``drop``); no prompt left is an error. ``train_records`` / ``eval_records``: rows a
    Python caller holds (a datasets.Dataset or a list of dicts) instead of ``data.train_file`` / ``eval_file``.
    """
    from alignkit.data.arithmetic import arithmetic_eval_set, arithmetic_train_problems
    from alignkit.data.chat import render_prompt
    from alignkit.data.loading import load_records
    from alignkit.data.objects import as_records

    if train_records is not None:
        source = "<train_dataset>"
        rows = [(r.prompt, r.extra, r.row) for r in as_records(train_records, "prompt")]
        held_out = [HeldOutProblem(r.prompt, r.extra.get("answer"), dict(r.extra)) for r in
                    as_records(eval_records, "prompt", name="eval_dataset")][:cfg.n_eval] if eval_records is not None else []
    elif cfg.train_file is None:
        source = SYNTHETIC
        rows = [(p.question, {"answer": p.answer_text, "level": p.level}, n) for n, p in
                enumerate(arithmetic_train_problems(cfg.n_train, cfg.levels), start=1)]
        held_out = arithmetic_eval_set(cfg.levels)[:cfg.n_eval]
    else:
        source = cfg.train_file
        rows = [(r.prompt, r.extra, r.row) for r in
                load_records(cfg.train_file, "prompt", split=cfg.split, columns=cfg.columns)]
        held_out = [HeldOutProblem(r.prompt, r.extra.get("answer"), dict(r.extra)) for r in
                    load_records(cfg.eval_file, "prompt", split=cfg.eval_split or cfg.split,
                                 columns=cfg.columns)][:cfg.n_eval] if cfg.eval_file else []
    held_out = held_out if cfg.n_eval else []
    pools: dict[int, list] = {}
    dropped = 0
    for prompt, fields, row in rows:
        ids = render_prompt(tokenizer, prompt)
        if len(ids) > cfg.max_prompt_length:
            if cfg.on_overflow == "error":
                raise DataError(source, row, "prompt", f"{len(ids)} tokens with the chat template, longer than "
                                f"data.max_prompt_length={cfg.max_prompt_length}; raise data.max_prompt_length "
                                "or set data.on_overflow=drop")
            dropped += 1
            continue
        pools.setdefault(pool_level(fields), []).append((ids, prompt, dict(fields)))
    if not pools:
        raise DataError(source, None, None, f"no prompt left: all {dropped} are longer than "
                        f"data.max_prompt_length={cfg.max_prompt_length} (data.on_overflow=drop)")
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
        """n prompts of ``level``'s pool (None: all pools); an empty or unknown pool is an error (n > 0)."""
        key = "all" if level is None else str(level)
        pool = [x for lv in sorted(self.pools) for x in self.pools[lv]] if level is None else self.pools.get(level, [])
        if not pool and n > 0:
            what = "no prompts at all" if level is None else f"no prompts at level {level} (pools: {sorted(self.pools)})"
            raise ValueError(f"cannot draw {n} prompts: {what}; check data.train_file, data.levels and "
                             "data.max_prompt_length")
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


def no_eval_reason(cfg: PromptDataSection) -> str:
    """Why a prompt recipe has no held-out set (for its warning and summary)."""
    return "data.n_eval is 0" if cfg.n_eval == 0 else "data.train_file is set without data.eval_file"
