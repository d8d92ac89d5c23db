"""Seeded, resumable order of a dataset's examples for supervised recipes (SFT, reward model, DPO)."""

from __future__ import annotations

import torch


class ShuffledOrder:
    """Epochs of a seeded permutation of ``range(n)``; ``state_dict`` holds the permutation, the position in
    it and the generator, so a resumed run draws the same batches.

    >>> o = ShuffledOrder(5, seed=0)
    >>> a = o.fill(4); b = o.fill(4)           # b runs on into the next epoch
    >>> sorted(a + b[:1]) == list(range(5)), len(b)
    (True, 4)
    """

    def __init__(self, n: int, seed: int):
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.order = self._shuffle()
        self.cursor = 0

    def _shuffle(self) -> list[int]:
        return torch.randperm(self.n, generator=self.gen).tolist()

    def fill(self, k: int) -> list[int]:
        """k indices; a batch that crosses the end of an epoch continues into the next permutation."""
        idx: list[int] = []
        while len(idx) < k:
            if self.cursor >= len(self.order):
                self.order, self.cursor = self._shuffle(), 0
            take = self.order[self.cursor:self.cursor + k - len(idx)]
            self.cursor += len(take)
            idx += take
        return idx

    def take(self, k: int) -> list[int]:
        """k indices from one permutation: when fewer than k are left, the rest of the epoch is skipped."""
        if self.cursor + k > len(self.order):
            self.order, self.cursor = self._shuffle(), 0
        idx = self.order[self.cursor:self.cursor + k]
        self.cursor += k
        return idx

    def state_dict(self) -> dict:
        return {"order": torch.tensor(self.order), "cursor": self.cursor, "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.cursor = state["order"].tolist(), int(state["cursor"])
        self.gen.set_state(state["generator"])
