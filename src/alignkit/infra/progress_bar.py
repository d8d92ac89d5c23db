"""Progress of long loops: a tqdm bar on a terminal, plain log lines everywhere else (:func:`progress`)."""

from __future__ import annotations

import time


def progress(iterable=None, **kwargs):
    """Progress of a loop: ``for step in progress(range(n), desc="grpo", unit="step"): ...``.

    On a terminal (stderr is a TTY) or in a notebook, a tqdm bar with ETA, redrawn in place. Anywhere else (CI, ``| tee log``,
    a job scheduler's log file) plain lines that read well in a log, one at most every
    ``ALIGNKIT_PROGRESS_INTERVAL`` seconds (default 10) plus the last one, with the true count::

        grpo: step 12/100 (12%) 3.1 s/step ETA 4m32s reward=0.41 success=0.38

    Both take tqdm's keywords (``desc``, ``unit``, ``total``, ``initial``, ``disable``); ``set_postfix``,
    ``update`` and ``close`` work on both. Off a terminal it also turns off the per-load bars of transformers
    and the Hub ("Loading weights", "Writing model shards"; :func:`quiet_library_progress`).
    """
    import sys

    if sys.stderr.isatty() or "ipykernel" in sys.modules:  # a terminal, or a notebook (tqdm's widget)
        from tqdm.auto import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    quiet_library_progress()
    return LineProgress(iterable, **kwargs)


def quiet_library_progress() -> None:
    """Turn off the progress bars transformers, huggingface_hub and datasets draw on every model load, save
    or download (useless "\\r" redraws in a log file), unless HF_HUB_DISABLE_PROGRESS_BARS is set to 0."""
    import os
    import sys

    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1").lower() in ("0", "false", "no", "off"):
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub / transformers are imported
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import logging as ds_logging

        ds_logging.disable_progress_bar()


def _duration(seconds: float) -> str:
    """4m32s, 1h02m, 12s.

    >>> _duration(272), _duration(3725), _duration(9.6)
    ('4m32s', '1h02m', '10s')
    """
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class LineProgress:
    """The progress of :func:`progress` off a terminal: a plain line at most every ``interval`` seconds
    (``ALIGNKIT_PROGRESS_INTERVAL``, default 10) and one for the last item, to ``file`` (stderr).

    >>> import io
    >>> out = io.StringIO()
    >>> bar = LineProgress(range(3), desc="grpo", unit="step", file=out, interval=3600)
    >>> for step in bar:
    ...     bar.set_postfix(reward=f"{step / 4:.2f}")
    >>> print(out.getvalue(), end="")  # doctest: +ELLIPSIS
    grpo: step 3/3 (100%) ... ETA 0s reward=0.50
    """

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None, initial: int = 0,
                 unit: str = "it", disable: bool = False, file=None, interval: float | None = None, **_tqdm_only):
        import os

        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable) + initial
        self.iterable, self.desc, self.total, self.unit, self.disable = iterable, desc, total, unit, disable
        self.n = self.initial = initial
        self.file = file
        if interval is None:
            interval = float(os.environ.get("ALIGNKIT_PROGRESS_INTERVAL", "10"))
        self.interval = interval
        self.postfix: dict[str, str] = {}
        self.started = self.last_print = time.perf_counter()
        self.printed_n: int | None = None
        self.closed = False

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("LineProgress(None) is not iterable: call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return (self.total or 0) - self.initial

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        """``key=value`` pairs shown at the end of the next line (numbers with 4 significant digits)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in items.items()}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last_print >= self.interval or (self.total is not None and self.n >= self.total):
            self._print(now)

    def line(self, now: float | None = None) -> str:
        """``<desc>: <unit> n/total (pct%) <rate> ETA <time> k=v ...``"""
        now = time.perf_counter() if now is None else now
        done, elapsed = self.n - self.initial, now - self.started
        parts = [f"{self.desc}:" if self.desc else "", f"{self.unit} {self.n}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f}%)")
        if done > 0 and elapsed > 0:
            per = elapsed / done
            parts.append(f"{per:.1f} s/{self.unit}" if per >= 0.1 else f"{1 / per:.1f} {self.unit}/s")
            if self.total:
                parts.append(f"ETA {_duration(per * max(self.total - self.n, 0))}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return " ".join(p for p in parts if p)

    def _print(self, now: float) -> None:
        import sys

        if self.disable:
            return
        print(self.line(now), file=self.file or sys.stderr, flush=True)
        self.last_print, self.printed_n = now, self.n

    def close(self) -> None:
        """The last line (unless it is already out)."""
        if not self.closed and self.printed_n != self.n and self.n > self.initial:
            self._print(time.perf_counter())
        self.closed = True

    @staticmethod
    def write(text: str, file=None) -> None:
        import sys

        print(text, file=file or sys.stderr, flush=True)
