"""Typed records of the rollout engine: `Rollout` (public) and `Samples` (what a backend returns).

Shapes, with N prompts, G = `group_size` samples per prompt, B = N * G rows, P = longest prompt and
C = longest completion (<= max_new_tokens). Rows are group-contiguous: row `i * G + j` is sample `j` of
prompt `i`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch

FinishReason = Literal["eos", "stop", "length"]
FINISH_REASONS: tuple[str, ...] = ("eos", "stop", "length")


@dataclass
class Samples:
    """Raw output of one backend, before text decoding.

    completion_ids: [B, C] int64, pad id after each row's end.
    rollout_logprobs: [B, C] fp32, 0 after each row's end.
    lengths: [B] int64, generated tokens per row, EOS / stop-completing token included.
    finish_reasons: B strings, each in `FINISH_REASONS`.
    """

    completion_ids: torch.Tensor
    rollout_logprobs: torch.Tensor
    lengths: torch.Tensor
    finish_reasons: list[str]


@dataclass
class Rollout:
    """Completions sampled for a batch of prompts, G per prompt, group-contiguous.

    Tensors (all on the model's device):
        prompt_ids: [B, P] int64, LEFT-padded with the pad id (row `i*G + j` holds prompt `i`).
        prompt_mask: [B, P] int64, 1 = real prompt token.
        completion_ids: [B, C] int64, RIGHT-padded with the pad id after each row's end.
        response_mask: [B, C] int64, 1 for every generated token up to and including the token that ended the
            row: the EOS token (finish "eos"), the token that completed a stop string (finish "stop"), or the
            last token (finish "length"); 0 after it.
        rollout_logprobs: [B, C] fp32, the sampler's log-probability of each generated token, 0 where
            `response_mask` is 0. It is `log_softmax(logits / T)[token]` under the temperature-scaled but
            UNFILTERED distribution (top-k / top-p are ignored here), i.e. exactly what a fresh forward pass at
            temperature T gives and what the losses use; greedy decoding (T = 0) reports T = 1 logprobs.
            `temperature` says which T they are at.

    Python fields:
        completions: B decoded completion texts. Special tokens are skipped, so the EOS token is not in the
            text; a stop-string row is cut BEFORE the stop string (the stop string is not included, like
            vLLM's default `include_stop_str_in_output=False`).
        finish_reasons: B of "eos", "stop", "length".
        group_size: G.
        temperature: T of `rollout_logprobs` (1.0 for greedy, or for the vllm backend in its default
            "raw_logprobs" mode).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    response_mask: torch.Tensor
    rollout_logprobs: torch.Tensor
    completions: list[str]
    finish_reasons: list[str]
    group_size: int
    temperature: float

    def __post_init__(self) -> None:
        b = self.prompt_ids.shape[0]
        c = self.completion_ids.shape
        if self.prompt_mask.shape != self.prompt_ids.shape:
            raise ValueError(f"prompt_mask {tuple(self.prompt_mask.shape)} != prompt_ids {tuple(self.prompt_ids.shape)}")
        if self.response_mask.shape != c or self.rollout_logprobs.shape != c or c[0] != b:
            raise ValueError("completion_ids, response_mask and rollout_logprobs must all be [B, C] with B = prompt rows")
        if len(self.completions) != b or len(self.finish_reasons) != b:
            raise ValueError(f"completions and finish_reasons must have {b} entries")
        if self.group_size < 1 or b % self.group_size:
            raise ValueError(f"{b} rows do not split into groups of {self.group_size}")

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_prompts(self) -> int:
        """N = B / G."""
        return len(self) // self.group_size

    @property
    def prompt_index(self) -> torch.Tensor:
        """[B] int64: the prompt each row samples (0,0,...,1,1,...)."""
        return torch.arange(self.num_prompts, device=self.prompt_ids.device).repeat_interleave(self.group_size)

    @property
    def completion_lengths(self) -> torch.Tensor:
        """[B] int64: generated tokens per row (EOS included)."""
        return self.response_mask.sum(-1)

    @property
    def input_ids(self) -> torch.Tensor:
        """[B, P + C] prompt then completion, the layout `alignkit.logprobs.sequence_logprobs` takes."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[B, P + C] 1 = real token (prompt tokens and completion tokens up to the end)."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def sequence_response_mask(self) -> torch.Tensor:
        """[B, P + C] `response_mask` aligned with `input_ids` (0 over the prompt)."""
        return torch.cat([torch.zeros_like(self.prompt_mask), self.response_mask], dim=1)

    def to(self, device: torch.device | str) -> Rollout:
        """A copy with every tensor on `device`."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


def completion_id_lists(completion_ids: torch.Tensor, response_mask: torch.Tensor) -> list[list[int]]:
    """Each row's completion token ids [B, C] without the padding after it (``response_mask`` [B, C]): what
    TRL-style reward functions receive as ``completion_ids``.

    >>> completion_id_lists(torch.tensor([[5, 6, 0], [7, 0, 0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    [[5, 6], [7]]
    """
    lengths = response_mask.sum(-1).tolist()
    return [row[:n] for row, n in zip(completion_ids.tolist(), lengths)]
