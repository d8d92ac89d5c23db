"""Typed records of a step's rollouts, as the RL recipes use them (docs/design.md, style example 9:
records, not dicts of strings).

- :class:`GroupBatch` (GRPO, RLOO, ...): G_i completions for each prompt i, rows group-contiguous, groups of
  any size (``group_sizes``: adaptive G gives uneven groups). :func:`sample_groups` samples it (one
  ``generate`` call per distinct group size) and :func:`merge_rollouts` merges the per-prompt slices.
- :class:`PPOBatch`: one completion (or a few) per prompt, plus everything computed before the update;
  :meth:`PPOBatch.from_rollout` builds it from a sampled :class:`~alignkit.rollout.types.Rollout`.
- :func:`sample_rollout`: one ``generate`` call with the sampling options of a rollout config section (both
  recipes sample through it).

Both give ``sequences(rows)`` (padded prompt + completion) and ``packed(rows)`` (the same sequences packed
without padding: the fast path of ``alignkit.models.forwards.policy_forward``). ``batch["name"]`` reads a
field like ``batch.name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class _Rows:
    """Shared views of a batch with prompt_ids / prompt_mask [B, P] (left-padded) and completion_ids /
    response_mask [B, C] (right-padded)."""

    def __getitem__(self, key: str):
        return getattr(self, key)

    def sequences(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [R, P + C] of ``rows``: prompt then completion."""
        return (torch.cat([self.prompt_ids[rows], self.completion_ids[rows]], dim=1),
                torch.cat([self.prompt_mask[rows], self.response_mask[rows]], dim=1))

    def packed(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sequences of ``rows`` without padding, packed into rows of at most P + C tokens (so attention is
        never wider than the padded layout) -> (input_ids, attention_mask, position_ids) [N, P + C] and
        ``index`` [R, C]: the flat position (in N * (P + C)) of each completion token (0 past a row's end).
        Rows with an empty ``response_mask`` are left out. See ``alignkit.data.packing``."""
        from alignkit.data.packing import pack_rows

        idx = torch.arange(self.prompt_ids.shape[0])[rows].tolist()
        P, C = self.prompt_ids.shape[1], self.completion_ids.shape[1]
        width = P + C
        p_len = self.prompt_mask[idx].sum(-1).tolist()
        n_len = self.response_mask[idx].sum(-1).tolist()
        live = [i for i in range(len(idx)) if n_len[i] > 0]
        bins = pack_rows([p_len[i] + n_len[i] for i in live], width) if live else [[]]
        ids = self.prompt_ids.new_zeros(len(bins), width)
        attn, pos = torch.zeros_like(ids), torch.zeros_like(ids)
        index = torch.zeros(len(idx), C, dtype=torch.long)
        for b, group in enumerate(bins):
            col = 0
            for i in (live[k] for k in group):
                r, p, n = idx[i], p_len[i], n_len[i]
                ids[b, col:col + p + n] = torch.cat([self.prompt_ids[r, P - p:], self.completion_ids[r, :n]])
                attn[b, col:col + p + n] = 1
                pos[b, col:col + p + n] = torch.arange(p + n)
                index[i, :n] = b * width + col + p + torch.arange(n)
                col += p + n
            pos[b, col:] = torch.arange(width - col)  # trailing padding: a block of its own
        return ids, attn, pos, index.to(ids.device)

@dataclass
class GroupBatch(_Rows):
    """Completions of a step in groups, rows group-contiguous: prompt_ids, prompt_mask [B, P] (left-padded),
    completion_ids, response_mask [B, C] (right-padded; the mask covers the EOS); ``completions`` and
    ``finish_reasons`` (B strings); ``group_sizes`` [n_prompts] with sum B (uneven under adaptive G)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    response_mask: torch.Tensor
    completions: list[str]
    finish_reasons: list[str]
    group_sizes: list[int] = field(default_factory=list)


@dataclass
class PPOBatch(_Rows):
    """One iteration's rollouts and everything computed from them before the update (B rows, C = longest
    completion; every [B, C] tensor is aligned with ``completion_ids``, 0 where ``response_mask`` is 0).

    prompt_ids, prompt_mask: [B, P] left-padded prompts.  completion_ids, response_mask: [B, C] right-padded
    (the mask covers the EOS; zeroed for samples whose reward failed).  rewards: [B] sequence rewards (raw,
    0 for failed samples).  old_logprobs, ref_logprobs, values: [B, C] before the update (ref None without a
    reference).  kl: [B, C] per-token KL estimate in the reward.  token_rewards, advantages (whitened when
    asked), returns: [B, C].
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    completions: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_rollout(cls, out, rewards: torch.Tensor, valid: torch.Tensor) -> PPOBatch:
        """The batch of a sampled Rollout ``out``: ``rewards`` [B] (raw; 0 where ``valid`` [B] is False), and
        the response mask zeroed for the rows that are not ``valid`` (their reward failed: no loss)."""
        mask = out.response_mask * valid[:, None].to(out.response_mask.device)
        return cls(out.prompt_ids, out.prompt_mask, out.completion_ids, mask, rewards.float(),
                   completions=list(out.completions), finish_reasons=list(out.finish_reasons))


def sample_rollout(model, tokenizer, prompt_ids, num_samples: int, cfg, *, temperature: float, seed: int):
    """``num_samples`` completions of each prompt (token ids) in one ``generate`` call, with the sampling options
    of ``cfg`` (a rollout config section: max_new_tokens, top_k, top_p, stop, backend) -> Rollout."""
    from alignkit.rollout import generate

    return generate(model, tokenizer, prompt_ids, num_samples=num_samples, max_new_tokens=cfg.max_new_tokens,
                    temperature=temperature, top_k=cfg.top_k, top_p=cfg.top_p, stop=cfg.stop or None, seed=seed,
                    backend=cfg.backend)


def sample_groups(model, tokenizer, prompts, sizes, cfg, *, temperature: float, seed: int):
    """Generate sizes[i] completions for prompt i (``prompts[i][0]``: its ids), one ``generate`` call per distinct
    size, with the sampling options of ``cfg`` (a rollout config section) -> per-prompt (Rollout, row slice)
    parts in prompt order, for :func:`merge_rollouts`."""
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(sizes):
        by_size.setdefault(g, []).append(i)
    parts = {}
    for g, idx in sorted(by_size.items()):
        out = sample_rollout(model, tokenizer, [prompts[i][0] for i in idx], g, cfg, temperature=temperature,
                             seed=seed + g)
        for j, i in enumerate(idx):
            parts[i] = (out, slice(j * g, (j + 1) * g))
    return [parts[i] for i in range(len(prompts))]


def merge_rollouts(parts, pad_id: int) -> GroupBatch:
    """Per-prompt slices of (possibly several) Rollouts -> one group-contiguous batch of padded tensors."""
    def cat(name, side):
        chunks = [getattr(out, name)[sl] for out, sl in parts]
        width = max(c.shape[1] for c in chunks)
        fill = pad_id if name.endswith("_ids") else 0
        padded = [torch.nn.functional.pad(c, (width - c.shape[1], 0) if side == "left" else (0, width - c.shape[1]),
                                          value=fill) for c in chunks]
        return torch.cat(padded)

    return GroupBatch(cat("prompt_ids", "left"), cat("prompt_mask", "left"), cat("completion_ids", "right"),
                      cat("response_mask", "right"), [c for out, sl in parts for c in out.completions[sl]],
                      [f for out, sl in parts for f in out.finish_reasons[sl]],
                      [sl.stop - sl.start for _, sl in parts])
