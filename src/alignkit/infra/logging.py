"""Run observability: metrics.jsonl (always), TensorBoard events and W&B, sampled completions
(completions.jsonl), a PNG of the curves, phase timers. Progress lines live in :mod:`alignkit.infra.progress_bar`."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from alignkit.infra.progress_bar import LineProgress, progress, quiet_library_progress  # noqa: F401 (re-exported)


def _scalar(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().float().item()
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class RunLogger:
    """Appends one JSON object per ``log`` call to ``run_dir/metrics.jsonl`` (flushed at once, so nothing is
    lost on a crash) and mirrors the numbers to TensorBoard when ``tensorboard`` is True and to Weights &
    Biases when ``wandb_project`` is set.

    ``resume_step``: continuing from a checkpoint at that step, rows logged after it (by the interrupted
    run) are dropped so the file reads like one uninterrupted run. ``enabled=False`` (non-main processes)
    makes every call a no-op.

    W&B: ``wandb.init(project=wandb_project, entity=wandb_entity, tags=wandb_tags, config=<resolved config>,
    name=<run name>, dir=run_dir)``, started when ``wandb_project`` is set. The resolved config is ``config``
    (a config object or a dict), else the ``config.yaml`` the recipe wrote into ``run_dir``; where its
    ``output`` section has ``wandb_project`` / ``wandb_entity`` / ``wandb_tags`` (what the user set), they
    win over the arguments. The run name is the run directory's name (``<pipeline>/<stage>``
    for a pipeline stage's ``<stage>/run``). The same config goes to TensorBoard as text. A recipe builds it
    from its config with :meth:`from_config`; :meth:`completions` gives a :class:`CompletionLog` writing to
    the same TensorBoard / W&B run.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None,
                 enabled: bool = True, wandb_project: str | None = None, wandb_entity: str | None = None,
                 wandb_tags: list[str] | None = None, config=None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.resume_step = resume_step
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
        resolved = self._resolved_config(config)
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("output.wandb=true needs Weights & Biases: pip install wandb") from err
            output = resolved.get("output") if isinstance(resolved.get("output"), dict) else {}
            project = output.get("wandb_project", wandb_project)  # what the user set wins over the caller's
            entity = output.get("wandb_entity", wandb_entity)
            tags = output.get("wandb_tags", wandb_tags)
            self._wandb = wandb.init(project=project, entity=entity, tags=list(tags or []) or None,
                                     config=resolved or None, name=run_name(self.run_dir), dir=str(self.run_dir))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            if resolved and resume_step is None:
                import yaml

                text = yaml.safe_dump(resolved, sort_keys=False)
                self._tb.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    @classmethod
    def from_config(cls, run_dir: str | Path, cfg, *, resume_step: int | None = None,
                    enabled: bool = True) -> RunLogger:
        """The logger a recipe's config asks for: ``output.tensorboard``, and W&B when ``output.wandb`` (project,
        entity and tags from ``output.wandb_project`` / ``wandb_entity`` / ``wandb_tags``, the resolved ``cfg``
        as the run's config)::

            logger = RunLogger.from_config(run_dir, cfg, resume_step=start_step if ckpt else None,
                                           enabled=acc.is_main_process)
        """
        out = cfg.output
        return cls(run_dir, tensorboard=getattr(out, "tensorboard", True), resume_step=resume_step, enabled=enabled,
                   wandb_project=getattr(out, "wandb_project", "alignkit") if getattr(out, "wandb", False) else None,
                   wandb_entity=getattr(out, "wandb_entity", None), wandb_tags=list(getattr(out, "wandb_tags", [])),
                   config=cfg)

    def _resolved_config(self, config) -> dict:
        if config is None:
            saved = self.run_dir / "config.yaml"
            if not saved.is_file():
                return {}
            import yaml

            loaded = yaml.safe_load(saved.read_text())
            return loaded if isinstance(loaded, dict) else {}
        if hasattr(config, "model_dump"):
            return config.model_dump(mode="json")
        return dict(config)

    def completions(self, *, every: int = 1, max_rows: int = 8) -> CompletionLog:
        """A :class:`CompletionLog` in this run directory, writing its tables to this logger's TensorBoard
        and W&B run, resumed like metrics.jsonl (no-op where this logger is disabled)."""
        return CompletionLog(self.run_dir, every=every, max_rows=max_rows, tensorboard_writer=self._tb,
                             wandb_run=self._wandb, resume_step=self.resume_step, enabled=self.enabled)

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


def run_name(run_dir: str | Path) -> str:
    """The name a run is shown under: its directory's name, or ``<pipeline>/<stage>`` for a pipeline stage's
    ``<pipeline>/<stage>/run``.

    >>> run_name("runs/grpo"), run_name("runs/r1/r1_zero/run")
    ('grpo', 'r1/r1_zero')
    """
    p = Path(run_dir)
    return f"{p.parent.parent.name}/{p.parent.name}" if p.name == "run" and p.parent.name else p.name


def _number(v):
    """A JSON-safe reward value: a float, or None for 'not applicable', a failure (NaN) or an infinity."""
    if v is None:
        return None
    v = _scalar(v)
    return v if isinstance(v, float) and math.isfinite(v) else None


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
    return str(prompt)


def _cell(v) -> str:
    """One markdown table cell: pipes escaped, newlines as <br>, numbers to 3 decimals."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v).replace("|", "\\|").replace("\n", "<br>")


class CompletionLog:
    """Sampled completions with their rewards, per step, like TRL's ``log_completions``: rows of
    ``<run_dir>/completions.jsonl`` plus a text table in TensorBoard (tag ``completions``) and a
    ``wandb.Table`` (key ``completions``).

    Every ``every``-th step (``step % every == 0``) the first ``max_rows`` rows of the batch are logged (the
    rows of a group are contiguous, so with ``max_rows >= group_size`` the first group shows whole). One
    JSON object per row::

        {"step": 3, "prompt": "12+35=" or [{"role": "user", "content": ...}], "completion": "...",
         "accuracy": 1.0, "format": 0.0, "total": 0.5, "advantage": 0.7}

    Each reward component is a key; None (not applicable) and failed or non-finite values are null.
    ``total`` is the ``total=`` argument, else ``rewards["total"]``, else null; ``advantage`` is null when
    ``advantages`` is None. ``resume_step``: like :class:`RunLogger`, rows after it are dropped (None: an old
    file is replaced). ``enabled=False`` (non-main processes): every call is a no-op.

    From a recipe (GRPO, PPO), once per step after scoring and advantages::

        completions = logger.completions(every=cfg.train.log_completions_every, max_rows=8)
        ...
        completions.log(done, [p.prompt for p in prompts], texts,
                        {name: [c[name] for c in components] for name in names},
                        advantages.tolist(), total=rewards.tolist())
        ...
        completions.close()

    >>> import json, tempfile
    >>> d = tempfile.mkdtemp()
    >>> log = CompletionLog(d, max_rows=2)
    >>> rows = log.log(1, ["1+1=", "2+2="], ["2", "5"], {"accuracy": [1.0, 0.0], "format": [None, 1.0]},
    ...                [0.7, -0.7], total=[1.0, 0.5])
    >>> rows[0]
    {'step': 1, 'prompt': '1+1=', 'completion': '2', 'accuracy': 1.0, 'format': None, 'total': 1.0, 'advantage': 0.7}
    >>> log.close(); len(open(f"{d}/completions.jsonl").read().splitlines())
    2
    """

    def __init__(self, run_dir: str | Path, *, every: int = 1, max_rows: int = 8, tensorboard_writer=None,
                 wandb_run=None, resume_step: int | None = None, enabled: bool = True):
        if every < 1 or max_rows < 1:
            raise ValueError(f"CompletionLog: every and max_rows must be >= 1 (got {every}, {max_rows})")
        self.path = Path(run_dir) / "completions.jsonl"
        self.every, self.max_rows, self.enabled = every, max_rows, enabled
        self._tb, self._wandb = tensorboard_writer, wandb_run
        self._file = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if resume_step is not None and r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a")

    def log(self, step: int, prompts: list, completions: list[str], rewards: dict[str, list[float | None]],
            advantages: list[float] | None = None, *, total: list[float] | None = None) -> list[dict]:
        """Log (up to ``max_rows`` of) one step's samples when ``step % every == 0``; returns the rows written.
        ``prompts[i]`` is a string or a list of chat messages; every list is as long as ``completions``."""
        if not self.enabled or step % self.every:
            return []
        n = len(completions)
        columns = {"prompt": prompts, **rewards, **({"total": total} if total is not None else {})}
        if advantages is not None:
            columns["advantage"] = advantages
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"CompletionLog.log: {len(values)} {name!r} values for {n} completions")
        names = [k for k in rewards if k != "total"]
        rows = []
        for i in range(min(n, self.max_rows)):
            row = {"step": step, "prompt": prompts[i], "completion": completions[i]}
            row.update({k: _number(rewards[k][i]) for k in names})
            total_i = total[i] if total is not None else rewards["total"][i] if "total" in rewards else None
            row["total"] = _number(total_i)
            row["advantage"] = _number(advantages[i]) if advantages is not None else None
            rows.append(row)
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._file.flush()
        header = ["prompt", "completion", *names, "total", "advantage"]
        if self._tb is not None:
            table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            table += ["| " + " | ".join(_cell(_prompt_text(r["prompt"]) if k == "prompt" else r[k]) for k in header) + " |"
                      for r in rows]
            self._tb.add_text("completions", "\n".join(table), step)
        if self._wandb is not None:
            import wandb

            data = [[_prompt_text(r["prompt"]) if k == "prompt" else r[k] for k in header] for r in rows]
            self._wandb.log({"completions": wandb.Table(columns=["step", *header], data=[[step, *d] for d in data])},
                            step=step)
        return rows

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _moving_average(values: list[float], window: int) -> list[float]:
    """Centered mean over ``window`` values (``window // 2`` each side; NaN stays out of the mean), so the
    smoothed curve does not lag the raw one.

    >>> _moving_average([1.0, 3.0, float("nan"), 5.0], 2)
    [2.0, 2.0, 4.0, 5.0]
    """
    half, out = window // 2, []
    for i in range(len(values)):
        near = [v for v in values[max(0, i - half):i + half + 1] if math.isfinite(v)]
        out.append(sum(near) / len(near) if near else float("nan"))
    return out


def plot_metrics(path: str | Path, out_png: str | Path, keys: list[str], *, title: str = "",
                 columns: int = 3) -> Path | None:
    """Plot the given metric keys of a metrics.jsonl against step, one panel each, in a grid of at most
    ``columns`` columns, titled with ``title`` (default, or when it is just the directory's name: the run's
    name, ``<pipeline>/<stage>`` for a pipeline stage; :func:`run_name`); returns the PNG path, or None when
    no key was logged. Points are marked when there are few; many get a moving average over the faint raw curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not keys:
        return None
    run_dir = Path(path).parent
    if not title or title == run_dir.name:
        title = run_name(run_dir)
    ncols = min(columns, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.8 * nrows + 0.5), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if len(pts) < 30:
            ax.plot(xs, ys, marker=".")
        else:  # many noisy points: faint raw curve under a moving average of ~1/15 of the run
            ax.plot(xs, ys, alpha=0.3, color="C0")
            ax.plot(xs, _moving_average(ys, max(2, len(ys) // 15)), color="C0")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
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
