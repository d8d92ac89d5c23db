"""Schedules and controllers of sampling and training knobs (temperature, KL weight, curriculum, group size).

Small stateful helpers with ``state_dict`` / ``load_state_dict`` so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


def piecewise_constant(step: int, points: Sequence[Sequence[float]], default: float) -> float:
    """Value of a step schedule ``[[start_step, value], ...]`` (sorted by step) at ``step``; ``default``
    before the first point. The lecture's temperature schedule 1.5 -> 1.2 -> 0.9 is
    ``[[0, 1.5], [100, 1.2], [200, 0.9]]``.

    >>> [piecewise_constant(s, [[0, 1.5], [100, 1.2], [200, 0.9]], 1.0) for s in (0, 99, 100, 250)]
    [1.5, 1.5, 1.2, 0.9]
    """
    value = default
    for start, v in points:
        if step >= start:
            value = float(v)
    return value


def interpolate(step: int, total: int, start: float, end: float, shape: str = "linear") -> float:
    """From ``start`` at step 0 to ``end`` at ``total``: 'constant', 'linear' or 'cosine'.

    >>> interpolate(5, 10, 1.0, 0.0), interpolate(5, 10, 1.0, 0.0, "cosine"), interpolate(5, 10, 1.0, 0.0, "constant")
    (0.5, 0.5, 1.0)
    """
    if shape == "constant" or total <= 0:
        return start
    t = min(max(step / total, 0.0), 1.0)
    w = t if shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))
    return start + (end - start) * w


class Curriculum:
    """Walks ordered difficulty levels: advances to the next level once the success rate over the last
    ``window`` steps passes ``threshold`` (and the window is full)."""

    def __init__(self, levels: Sequence[int], *, threshold: float, window: int):
        self.levels, self.threshold, self.window = list(levels), threshold, window
        self.index = 0
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def level(self) -> int:
        return self.levels[self.index]

    def update(self, success_rate: float) -> bool:
        """Record one step's success rate; True if the curriculum advanced."""
        self.recent.append(success_rate)
        full = len(self.recent) == self.window
        if full and sum(self.recent) / self.window > self.threshold and self.index + 1 < len(self.levels):
            self.index += 1
            self.recent.clear()
            return True
        return False

    def state_dict(self) -> dict:
        return {"index": self.index, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]
        self.recent = deque(state["recent"], maxlen=self.window)


class AdaptiveGroupSize:
    """Larger groups for prompts the model is unsure of, smaller ones where it is confident (lecture).

    The success probability p of a prompt is estimated from its own past groups, else from its level's,
    else unknown. G = round(g_min + (g_max - g_min) * 4 p (1 - p)): g_max at p = 0.5, g_min at p in {0, 1};
    unknown prompts get ``default``. Estimates are exponential moving averages with weight ``decay``.

    >>> a = AdaptiveGroupSize(4, 16, default=8)
    >>> a.size("q", level=1), a.update("q", 1, 0.5), a.size("q", 1), a.update("q", 1, 1.0), a.size("q", 1)
    (8, None, 16, None, 13)
    """

    def __init__(self, g_min: int, g_max: int, *, default: int, decay: float = 0.5):
        self.g_min, self.g_max, self.default, self.decay = g_min, g_max, default, decay
        self.by_prompt: dict[str, float] = {}
        self.by_level: dict[str, float] = {}

    def size(self, key: str, level=None) -> int:
        p = self.by_prompt.get(key, self.by_level.get(str(level)) if level is not None else None)
        if p is None:
            return self.default
        return round(self.g_min + (self.g_max - self.g_min) * 4 * p * (1 - p))

    def update(self, key: str, level, success_rate: float) -> None:
        for table, k in ((self.by_prompt, key), (self.by_level, str(level))):
            if level is None and table is self.by_level:
                continue
            old = table.get(k)
            table[k] = success_rate if old is None else self.decay * old + (1 - self.decay) * success_rate

    def state_dict(self) -> dict:
        return {"by_prompt": self.by_prompt, "by_level": self.by_level}

    def load_state_dict(self, state: dict) -> None:
        self.by_prompt, self.by_level = dict(state["by_prompt"]), dict(state["by_level"])
