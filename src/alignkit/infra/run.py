"""The lifecycle every training recipe shares, around its step (a small object, not a trainer base class).

A recipe reads top to bottom:

    life = Run(cfg, desc="sft", seed=cfg.train.seed, callbacks=callbacks)  # accelerator, seed, run directory
    model, tokenizer = ...; optimizer = build_optimizer(...); scheduler = build_scheduler(...)
    model, optimizer = life.setup(model, optimizer, scheduler, objects={"data": order})   # resume, prepare
    life.begin(evaluate, {"data/dropped": dropped})      # evaluation before training, row 0 of metrics.jsonl
    with GracefulStop() as stop:
        for step in life.steps():
            ... the method's phases, inline ...
            life.log_samples(step + 1, prompts, completions, rewards, advantages)  # RL: completions.jsonl
            if life.end_step(metrics, stop):            # eval cadence, monitor, log, callbacks, checkpoint,
                break                                   # SIGTERM, time limit
    return life.finish(plots=[...])                     # final save, plots, summary.json

What it owns, once for every recipe: the accelerator (``train.precision`` / ``model.dtype``), seeding, the
run directory (:func:`alignkit.infra.rundir.prepare_run_dir`) and its resolved ``config.yaml``, the
:class:`~alignkit.infra.logging.RunLogger`, resume of the model, optimizer, scheduler, extra modules (PPO's
critic and its optimizer) and of every object with ``state_dict`` / ``load_state_dict`` (data order, prompt
sampler, curriculum, KL controllers, the health monitor), the atomic checkpoint (:meth:`Run.checkpoint`),
the non-finite guards, ``train.time_limit_s``, when to evaluate (``train.eval_every`` and the last step),
the health warnings of ``monitor`` (:mod:`alignkit.infra.monitor`, with the text checks on the completions
of :meth:`Run.log_samples`), the sampled completions (``completions.jsonl``), user callbacks (called with
``(step, metrics)`` for every logged row) and the finish. The signal handler is the recipe's own
``GracefulStop()`` (so a test can stand in for it) and is polled once per step by :meth:`Run.end_step`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

from alignkit.config import to_yaml
from alignkit.infra.checkpoint import (
    apply_optim_settings,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.infra.logging import PhaseTimer, RunLogger, plot_metrics, progress
from alignkit.infra.rundir import prepare_run_dir
from alignkit.infra.seeding import seed_everything
from alignkit.infra.train import NonFiniteGuard, eval_summary, global_sum, save_final, setup_accelerator

log = logging.getLogger("alignkit.run")

Callback = Callable[[int, dict], None]


def time_limit_field():
    """``train.time_limit_s`` of every training recipe."""
    from pydantic import Field

    return Field(None, gt=0, description="end after the step that passes this many seconds since the run started "
                 "(loading and evaluations included), with a final model; None = no limit")


def no_sync_unless_last(acc, modules, index: int, count: int):
    """Context of micro-batch ``index`` of ``count``: DDP all-reduces gradients on the last one only."""
    stack = ExitStack()
    if index < count - 1:
        for module in modules if isinstance(modules, (list, tuple)) else [modules]:
            stack.enter_context(acc.no_sync(module))
    return stack


class Run:
    """One run of a training recipe: see the module docstring. ``cfg`` has ``model``, ``train`` (``seed``,
    ``steps``, ``eval_every``, ``precision``, optionally ``time_limit_s``) and ``output`` sections, and
    optionally ``monitor`` (:class:`alignkit.infra.monitor.MonitorSection`)."""

    def __init__(self, cfg, *, desc: str, seed: int, seed_per_rank: bool = False, unit: str = "step",
                 callbacks: Iterable[Callback] | None = None):
        from alignkit.infra.monitor import HealthMonitor

        self.cfg, self.desc, self.unit = cfg, desc, unit
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        self.acc = setup_accelerator(cfg.train.precision, dtype=cfg.model.dtype)
        self.world, self.rank, self.is_main = self.acc.num_processes, self.acc.process_index, self.acc.is_main_process
        seed_everything(seed + (self.rank if seed_per_rank else 0))
        self.run_dir = Path(cfg.output.dir) / cfg.output.name
        prepare_run_dir(self.run_dir, resume=cfg.output.resume, overwrite=cfg.output.overwrite, is_main=self.is_main)
        self.callbacks = list(callbacks or [])
        self.timer = PhaseTimer()
        self.guard = NonFiniteGuard(cfg.output.max_bad_steps, run_dir=self.run_dir)
        self.guards = [self.guard]
        mu = getattr(getattr(cfg, "loss", None), "mu", None)  # optimizer steps per batch (GRPO), for the clip band
        self.monitor = HealthMonitor(cfg.monitor, mu=mu) if hasattr(cfg, "monitor") else None
        self.samples: list[str] | None = None
        self.completions = None
        self.total = cfg.train.steps
        self.time_limit = getattr(cfg.train, "time_limit_s", None)
        self.resumed_from = None
        self.start_step = self.step = 0
        self.interrupted = self.time_up = False
        self.metrics: dict = {}
        self.start_metrics: dict = {}
        self.evaluate: Callable[[int], dict] = lambda step: {}

    # ------------------------------------------------------------------------------------------------------
    def require_divisible(self, value: int, field: str, names: str, *factors: int) -> None:
        """A global count (``field`` = ``value``) that must split evenly over the product of ``factors``
        (``names`` says what they are, e.g. "processes x grad_accum")."""
        per = 1
        for f in factors:
            per *= f
        if value % per:
            raise ValueError(f"{field}={value} must divide by {names} = {' x '.join(map(str, factors))}; e.g. "
                             f"{field.rsplit('.', 1)[-1]}={per * max(1, value // per)}")

    def setup(self, model, optimizer, scheduler, *, objects: dict | None = None,
              extras: dict[str, tuple] | None = None):
        """Resume (``output.resume``) the model, optimizer, scheduler, each of ``objects`` (anything with
        ``state_dict`` / ``load_state_dict``) and each of ``extras`` {name: (module, optimizer, scheduler,
        OptimSection)}, then ``accelerator.prepare`` them; returns the prepared model and optimizer, then
        each extra's prepared module and optimizer. Call with the model at its initial weights."""
        self.objects = {"monitor": self.monitor, **(objects or {})} if self.monitor else dict(objects or {})
        extras = extras or {}
        ckpt = latest_checkpoint(self.run_dir) if self.cfg.output.resume else None
        if ckpt is not None:
            state, tensors = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                                             optim=self.cfg.optim, modules={k: v[0] for k, v in extras.items()})
            for name, (_, opt, sched, optim_cfg) in extras.items():
                opt.load_state_dict(tensors[f"{name}_optimizer"])
                sched.load_state_dict(tensors[f"{name}_scheduler"])
                apply_optim_settings(opt, sched, optim_cfg, prefix=name, run_dir=self.run_dir)
            for name, obj in self.objects.items():
                if name in tensors.get("objects", {}):
                    obj.load_state_dict(tensors["objects"][name])
            self.start_step = self.step = state["step"]
            self.resumed_from = ckpt
        prepared = self.acc.prepare(model, optimizer, *[x for m, o, _, _ in extras.values() for x in (m, o)])
        self.model, self.optimizer, self.scheduler = prepared[0], prepared[1], scheduler
        self.extras = {name: (prepared[2 + 2 * i], prepared[3 + 2 * i], extras[name][2])
                       for i, name in enumerate(extras)}
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))
        self.logger = RunLogger(self.run_dir, tensorboard=self.cfg.output.tensorboard, enabled=self.is_main,
                                resume_step=self.start_step if ckpt else None,
                                wandb_project="alignkit" if self.cfg.output.wandb else None)
        return prepared

    @property
    def plain(self):
        """The trained model without its DDP / accelerate wrappers (for sampling and evaluation)."""
        return self.acc.unwrap_model(self.model)

    def add_guard(self) -> NonFiniteGuard:
        """Another non-finite guard (e.g. PPO's critic); its skips count in the summary and block checkpoints."""
        guard = NonFiniteGuard(self.cfg.output.max_bad_steps, run_dir=self.run_dir)
        self.guards.append(guard)
        return guard

    # ------------------------------------------------------------------------------------------------------
    def log_samples(self, step: int, prompts: list, completions: list[str], rewards: dict[str, list],
                    advantages: list[float] | None = None, *, total: list[float] | None = None) -> None:
        """The step's sampled completions (RL recipes): the first rows to ``completions.jsonl`` / TensorBoard /
        W&B (:class:`~alignkit.infra.logging.CompletionLog`), and all of them to the monitor's text checks at
        the next :meth:`end_step`. ``rewards``: {component: one value per completion}."""
        if self.completions is None:
            self.completions = self.logger.completions(every=1, max_rows=8)
        self.completions.log(step, prompts, completions, rewards, advantages, total=total)
        self.samples = list(completions)

    def log(self, step: int, metrics: dict) -> None:
        """One row of metrics.jsonl (main process), seen by every callback."""
        row = self.logger.log(step, metrics)
        for callback in self.callbacks:
            callback(step, row)

    def begin(self, evaluate: Callable[[int], dict] | None = None, first_row: dict | None = None) -> dict:
        """The evaluation before training (``evaluate(step) -> {"eval/...": ...}``, also run at each eval
        step) and, unless resuming, row 0 of metrics.jsonl with it and ``first_row`` (data counts), when
        either has anything."""
        if evaluate is not None:
            self.evaluate = evaluate
        self.start_metrics = self.evaluate(self.start_step)
        self.metrics = dict(self.start_metrics)
        if self.resumed_from is None and (self.start_metrics or first_row):  # nothing to say: no row 0
            self.log(0, {**self.start_metrics, **(first_row or {})})
        self.loop_started = time.perf_counter()
        return self.start_metrics

    def steps(self):
        """The 0-based steps still to run, with a progress bar."""
        self.bar = progress(range(self.start_step, self.total), desc=self.desc, unit=self.unit,
                            disable=not self.is_main, initial=self.start_step, total=self.total)
        for step in self.bar:
            self.step = step
            yield step

    def end_step(self, metrics: dict, stop, *, postfix: dict | None = None) -> bool:
        """After the step's update: evaluation when due (every ``train.eval_every`` steps, at the last step and
        when the time limit ends the run), phase times, health warnings, the log row and callbacks, then a
        checkpoint every ``output.save_every`` steps or on SIGTERM. True when the run stops here (SIGTERM or
        ``train.time_limit_s``)."""
        done = self.step + 1
        if self.time_limit is not None:
            late = time.perf_counter() - self.started >= self.time_limit
            self.time_up = bool(global_sum(self.acc, int(late)))  # every process stops at the same step
        if done % self.cfg.train.eval_every == 0 or done == self.total or self.time_up:
            with self.timer("eval"):
                metrics.update(self.evaluate(done))
        metrics.update(self.timer.summary())
        if self.monitor is not None:
            warnings = self.monitor.check(metrics, self.samples)
            metrics["warnings"] = len(warnings)
            for line in warnings:
                log.warning("step %d: %s", done, line)
        self.samples = None
        self.metrics = metrics
        self.log(done, metrics)
        if postfix:
            self.bar.set_postfix({k: f"{metrics[v]:.3f}" for k, v in postfix.items() if v in metrics})
        self.interrupted = stop.requested
        if self.interrupted or (self.cfg.output.save_every and done % self.cfg.output.save_every == 0):
            self.checkpoint(done)
        if self.time_up and not self.interrupted:
            log.warning("time limit of %.0f s reached after step %d of %d", self.time_limit, done, self.total)
        return self.interrupted or self.time_up

    def checkpoint(self, step: int) -> None:
        """An atomic checkpoint of everything :meth:`setup` registered (main process; all processes wait)."""
        if self.is_main:
            tensors = {"objects": {k: v.state_dict() for k, v in self.objects.items()}}
            for name, (_, opt, sched) in self.extras.items():
                tensors[f"{name}_optimizer"], tensors[f"{name}_scheduler"] = opt.state_dict(), sched.state_dict()
            save_checkpoint(self.run_dir, step, model=self.plain, optimizer=self.optimizer, scheduler=self.scheduler,
                            modules={k: self.acc.unwrap_model(m) for k, (m, _, _) in self.extras.items()},
                            tensors=tensors, keep_last=self.cfg.output.keep_last, guards=self.guards)
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------------------------
    def finish(self, *, tokenizer, plots: list[str], failure: Exception | None = None,
               save: Callable[[Path], None] | None = None, **fields) -> dict:
        """Close the log; the summary (eval before / at the end, steps, interruption, time limit, skipped
        steps, wall time, ``fields``); unless interrupted: ``final/`` (and ``save(run_dir)`` for anything
        else), ``curves.png`` of ``plots`` and ``summary.json``. A ``failure`` is written into the summary
        and raised."""
        self.logger.close()
        if self.completions is not None:
            self.completions.close()
        summary = eval_summary(self.start_metrics, self.metrics, steps=self.step + 1, interrupted=self.interrupted,
                               time_limit_reached=self.time_up, non_finite_steps=sum(g.total for g in self.guards),
                               wall_s=time.perf_counter() - getattr(self, "loop_started", self.started),
                               run_dir=str(self.run_dir), **fields)
        if failure is not None:
            summary["stopped"] = str(failure)
            if self.is_main:
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            raise failure
        if self.is_main and not self.interrupted:
            save_final(self.plain, tokenizer, self.run_dir)
            if save is not None:
                save(self.run_dir)
            plot_metrics(self.logger.path, self.run_dir / "curves.png", plots, title=self.cfg.output.name)
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary
