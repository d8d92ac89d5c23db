"""Run observability: metrics.jsonl (always), TensorBoard events, a PNG of the curves, phase timers."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch


def _scalar(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().float().item()
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class RunLogger:
    """Appends one JSON object per ``log`` call to ``run_dir/metrics.jsonl`` (flushed at once, so nothing is
    lost on a crash) and mirrors the numbers to TensorBoard when ``tensorboard`` is True.

    ``resume_step``: continuing from a checkpoint at that step, rows logged after it (by the interrupted
    run) are dropped so the file reads like one uninterrupted run. ``enabled=False`` (non-main processes)
    makes every call a no-op.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None,
                 enabled: bool = True, wandb_project: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            # output.resume with no checkpoint saved: the run starts again at step 0 (for any other earlier run
            # here, alignkit.infra.rundir.prepare_run_dir has refused or, with output.overwrite, emptied the dir)
            self.path.unlink()
        self._file = self.path.open("a")
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("output.wandb=true needs Weights & Biases: pip install wandb") from err
            self._wandb = wandb.init(project=wandb_project, name=self.run_dir.name, dir=str(self.run_dir))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict) -> dict:
        row = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
        if not self.enabled:
            return row
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(path: str | Path, out_png: str | Path, keys: list[str], *, title: str = "") -> Path | None:
    """Plot the given metric keys of a metrics.jsonl against step, one panel each; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


class PhaseTimer:
    """Named phase timers: ``with timer("generate"): ...``; ``timer.summary()`` -> {"time/generate": s}."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start

    def summary(self, reset: bool = True) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.totals.items()}
        if reset:
            self.totals.clear()
        return out


def progress(iterable=None, **kwargs):
    """A tqdm progress bar with ETA; redrawn at most every 10 s when stderr is not a terminal (log files,
    CI), so logs get a readable line now and then instead of one per step."""
    import sys

    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    return tqdm(iterable, **kwargs)
