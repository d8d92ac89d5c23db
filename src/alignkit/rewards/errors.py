"""Reward failures: the exception a reward raises when it cannot score a sample (as opposed to scoring it 0),
and the run-level check that stops a run whose rewards fail for most samples (docs/design.md, reliability
principles: nothing is silently ignored -- a reward failing for most samples stops the run with a clear
message)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class RewardError(Exception):
    """A reward could not be computed (verifier or sandbox failure, bad example fields).

    The scorer (``alignkit.rewards.registry.score``) turns it into a failed, counted sample that is left out
    of the loss; it is never a reward of 0.
    """


class RewardFailureError(RuntimeError):
    """Too many samples failed to be scored: the run stops (raised by ``RewardFailureMonitor.update``)."""


_ADVICE = ("Check: each example has the fields its rewards need (accuracy and digits need 'answer', code needs "
           "'tests'); a 'module:function' reward runs by hand on one example (alignkit.rewards.score); the code "
           "sandbox works (alignkit.rewards.run_in_sandbox('print(1)')). If failures are expected, raise max_share "
           "(reward.max_failed_share; 1.0 never stops).")


class RewardFailureMonitor:
    """Stops a run when the share of failed samples over the last ``window`` samples exceeds ``max_share``.

    A failed sample is a ``ScoredSample`` whose ``failed`` is set (a reward raised, returned a non-number,
    NaN/inf or a value beyond float32, or no reward applied to it). The check runs once ``window`` samples
    have been seen, so a small first batch does not stop a run; ``close()`` checks a run that ended before
    its window filled. Counters for the run's summary: ``counters()``; for a resumable run,
    ``state_dict()``/``load_state_dict()``.

    In a recipe (after the score phase of each step)::

        monitor = RewardFailureMonitor(max_share=0.5, window=64)
        for step in ...:
            scored = score_with_model(...)
            monitor.update(scored)            # raises RewardFailureError with what failed and what to check
        monitor.close()
        summary["rewards"] = monitor.counters()   # {'samples', 'failed_samples', 'failed_by_component', ...}

    >>> from alignkit.rewards import ScoredSample
    >>> m = RewardFailureMonitor(max_share=0.5, window=4)
    >>> m.update([ScoredSample(1.0, {"accuracy": 1.0}), ScoredSample(None, {}, None, "accuracy", "KeyError: 'answer'")])
    >>> m.counters()["failed_samples"], m.counters()["failed_by_component"]
    (1, {'accuracy': 1})
    >>> m.update([ScoredSample(None, {}, None, "accuracy", "KeyError: 'answer'")] * 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    alignkit.rewards.errors.RewardFailureError: rewards failed for 3 of the last 4 samples (75%, limit 50%): accuracy 3. ...
    """

    def __init__(self, max_share: float = 0.5, window: int = 64):
        if not 0.0 <= max_share <= 1.0:  # 1.0: never stop (every failure is still counted)
            raise ValueError(f"max_share must be in [0, 1], got {max_share}")
        if window < 1:
            raise ValueError(f"window must be at least 1 sample, got {window}")
        self.max_share, self.window = float(max_share), int(window)
        self.recent: deque[str | None] = deque(maxlen=self.window)
        self.samples = 0
        self.failed_samples = 0
        self.failed_by_component: dict[str, int] = {}
        self.skipped_by_component: dict[str, int] = {}
        self.last_error: tuple[str, str] | None = None

    def update(self, samples: Iterable) -> None:
        """Count ``samples`` (ScoredSample-like: ``failed``, ``error``, ``components``); raise
        ``RewardFailureError`` when the window is full and its failed share exceeds ``max_share``."""
        for s in samples:
            self.samples += 1
            self.recent.append(s.failed)
            for name, value in (s.components or {}).items():
                if value is None:
                    self.skipped_by_component[name] = self.skipped_by_component.get(name, 0) + 1
            if s.failed is not None:
                self.failed_samples += 1
                self.failed_by_component[s.failed] = self.failed_by_component.get(s.failed, 0) + 1
                self.last_error = (s.failed, s.error or "")
        if len(self.recent) == self.window:
            self._check()

    def close(self) -> None:
        """The same check over the samples seen, for a run that ended before its window filled."""
        if self.recent:
            self._check()

    def _check(self) -> None:
        failed = [name for name in self.recent if name is not None]
        if len(failed) <= self.max_share * len(self.recent):
            return
        by_name: dict[str, int] = {}
        for name in failed:
            by_name[name] = by_name.get(name, 0) + 1
        parts = ", ".join(f"{name} {count}" for name, count in sorted(by_name.items(), key=lambda kv: -kv[1]))
        last = f" Last error ({self.last_error[0]}): {self.last_error[1]}." if self.last_error else ""
        raise RewardFailureError(
            f"rewards failed for {len(failed)} of the last {len(self.recent)} samples "
            f"({len(failed) / len(self.recent):.0%}, limit {self.max_share:.0%}): {parts}.{last} {_ADVICE}")

    def counters(self) -> dict:
        """Run totals for summary.json: samples, failed_samples, failed_by_component, skipped_by_component
        (a component that returned None, "not applicable")."""
        return {"samples": self.samples, "failed_samples": self.failed_samples,
                "failed_by_component": dict(self.failed_by_component),
                "skipped_by_component": dict(self.skipped_by_component)}

    def state_dict(self) -> dict:
        return {**self.counters(), "recent": list(self.recent), "last_error": self.last_error}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.failed_samples = int(state["samples"]), int(state["failed_samples"])
        self.failed_by_component = dict(state["failed_by_component"])
        self.skipped_by_component = dict(state.get("skipped_by_component", {}))
        self.recent = deque(state.get("recent", []), maxlen=self.window)
        last = state.get("last_error")
        self.last_error = tuple(last) if last else None
