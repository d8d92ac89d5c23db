"""Atomic checkpoints and resume.

Layout of ``<run_dir>/checkpoints/step-N/``: ``model.safetensors`` (the full module state, LoRA adapters
included), ``<name>.safetensors``
for each extra module (e.g. PPO's critic), ``trainer.pt`` (optimizer, scheduler, RNG states: loaded with
``torch.load(weights_only=True)``), ``state.json`` (step, data position, anything JSON) and ``COMPLETE``,
written last. A checkpoint is written into a temporary directory beside its final name and renamed into
place, so a crash mid-save leaves a ``.tmp-*`` directory that :func:`latest_checkpoint` ignores and the next
save (or the next start, :func:`alignkit.infra.rundir.prepare_run_dir`) deletes.

Run ids: ``state.json`` carries the id of the run that wrote it (from ``<run_dir>/run.json``, written by
``prepare_run_dir``); pruning and :func:`latest_checkpoint` only ever consider checkpoints of the directory's
current run, so two runs are never spliced. A checkpoint with no id (written before ids existed) counts as
the current run's. Steps sort as numbers (step-10 after step-9).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from alignkit.infra.seeding import rng_state, set_rng_state

_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-step-"
RUN_FILE = "run.json"  # {"run_id": ..., "history": [...]}: see alignkit.infra.rundir
log = logging.getLogger(__name__)


def run_id_of(run_dir: str | Path) -> str | None:
    """The id of the run that owns ``run_dir`` (its run.json), or None if it has none yet."""
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_run_id(path: str | Path) -> str | None:
    """The run id stamped into a checkpoint's state.json (None: written before run ids existed)."""
    try:
        return json.loads((Path(path) / "state.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def sweep_temporary(run_dir: str | Path) -> list[Path]:
    """Delete the ``checkpoints/.tmp-step-*`` directories a crash mid-save left behind; returns them."""
    root = Path(run_dir) / "checkpoints"
    stale = sorted(p for p in root.glob(_TMP_PREFIX + "*")) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale:
        log.info("removed %d half-written checkpoint(s) in %s", len(stale), root)
    return stale


def _portable_rng(state: dict) -> dict:
    """NumPy's state holds an ndarray, which weights_only loading refuses: store it as a tensor."""
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    return {**state, "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss]}


def _restore_rng(state: dict) -> dict:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    return {**state, "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model,
    optimizer=None,
    scheduler=None,
    state: dict | None = None,
    tensors: dict | None = None,
    keep_last: int | None = 2,
    modules: dict[str, torch.nn.Module] | None = None,
    guards: Iterable = (),
) -> Path | None:
    """Write ``checkpoints/step-<step>`` atomically and prune older complete ones of the same run beyond
    ``keep_last``.

    ``state`` must be JSON-serializable (data position, counters); ``tensors`` holds extra tensors (e.g. a
    torch.Generator state) saved with the optimizer; ``modules`` are extra models (e.g. a critic), each saved as
    ``<name>.safetensors`` with ``safetensors.torch.save_model``. ``guards``: the run's
    :class:`~alignkit.infra.train.NonFiniteGuard` s; while any is inside a streak of non-finite steps nothing
    is written (returns None), so the newest checkpoint stays the last good one.
    """
    from safetensors.torch import save_model

    bad = [g for g in guards if g.in_bad_streak]
    if bad:
        kept = latest_checkpoint(run_dir)
        log.warning("step %d: not saving a checkpoint inside a streak of %d non-finite step(s); the newest stays %s",
                    step, max(g.consecutive for g in bad), kept or "none")
        return None
    run_id = run_id_of(run_dir)
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    sweep_temporary(run_dir)
    final = root / f"step-{step}"
    tmp = root / f"{_TMP_PREFIX}{step}-{os.getpid()}"
    tmp.mkdir()

    save_model(model, str(tmp / "model.safetensors"))  # any nn.Module (peft too); shared/tied tensors once
    for name, module in (modules or {}).items():
        save_model(module, str(tmp / f"{name}.safetensors"))
    trainer = {"rng": _portable_rng(rng_state()), "tensors": tensors or {}}
    if optimizer is not None:
        trainer["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        trainer["scheduler"] = scheduler.state_dict()
    torch.save(trainer, tmp / "trainer.pt")
    stamp = {"run_id": run_id} if run_id is not None else {}
    (tmp / "state.json").write_text(json.dumps({"step": step, **(state or {}), **stamp}, indent=1))
    (tmp / "COMPLETE").write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: str | Path, *, all_runs: bool = False) -> list[Path]:
    """Complete checkpoints of the directory's current run (all runs' with ``all_runs``), oldest first by
    step number; temporary and half-written directories excluded."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    done = [p for _, p in sorted(found) if (p / "COMPLETE").is_file() and (p / "state.json").is_file()]
    current = None if all_runs else run_id_of(run_dir)
    if current is None:
        return done
    return [p for p in done if checkpoint_run_id(p) in (None, current)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of the directory's current run, or None."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None,
                    modules: dict[str, torch.nn.Module] | None = None, optim=None) -> tuple[dict, dict]:
    """Restore model weights, optimizer, scheduler, RNG states and the extra ``modules`` (saved under the same
    names) in place; returns (state, tensors).

    ``optim`` (the run's ``OptimSection``): its lr, weight decay and betas replace the checkpoint's (an
    optimizer state dict restores its own), see :func:`apply_optim_settings`."""
    from safetensors.torch import load_model

    path = Path(path)
    try:
        load_model(model, str(path / "model.safetensors"))  # strict: a different model is an error
    except RuntimeError as err:
        raise RuntimeError(f"{path}: checkpoint does not match the model ({str(err)[:300]})") from None
    for name, module in (modules or {}).items():
        load_model(module, str(path / f"{name}.safetensors"))
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(trainer["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(_restore_rng(trainer["rng"]))
    if optim is not None and optimizer is not None:
        apply_optim_settings(optimizer, scheduler, optim, run_dir=path.parent.parent)
    state = json.loads((path / "state.json").read_text())
    state.pop("run_id", None)
    return state, trainer.get("tensors", {})


def apply_optim_settings(optimizer, scheduler, optim, *, prefix: str = "optim",
                         run_dir: str | Path | None = None) -> dict[str, list]:
    """After loading an optimizer (and scheduler) state: make the config's ``lr``, ``weight_decay`` and
    ``betas`` (attributes of ``optim``) the ones used from now on, keeping the schedule's position (the current
    LR is rescaled by new / old peak). Logs one line per changed setting, e.g. "optim.lr changed on resume:
    0.001 -> 0.002", records the changes in ``run_dir``'s run.json (:func:`note_resume`) and returns
    {"optim.lr": [old, new], ...}."""
    groups = optimizer.param_groups
    old_lrs = list(scheduler.base_lrs) if scheduler is not None else [g.get("initial_lr", g["lr"]) for g in groups]
    changes: dict[str, list] = {}
    for group, old_lr in zip(groups, old_lrs):
        if not math.isclose(old_lr, optim.lr, rel_tol=1e-12, abs_tol=0.0):
            changes[f"{prefix}.lr"] = [old_lr, optim.lr]
            group["lr"] = group["lr"] * optim.lr / old_lr if old_lr else optim.lr
        group["initial_lr"] = optim.lr
        if "weight_decay" in group and group["weight_decay"] != optim.weight_decay:
            changes[f"{prefix}.weight_decay"] = [group["weight_decay"], optim.weight_decay]
            group["weight_decay"] = optim.weight_decay
        if "betas" in group and tuple(group["betas"]) != tuple(optim.betas):
            changes[f"{prefix}.betas"] = [list(group["betas"]), list(optim.betas)]
            group["betas"] = tuple(optim.betas)
    if scheduler is not None:
        scheduler.base_lrs = [optim.lr] * len(groups)
        scheduler._last_lr = [g["lr"] for g in groups]
    for key, (old, new) in changes.items():
        log.warning("%s changed on resume: %s -> %s", key, old, new)
    if changes and run_dir is not None:
        note_resume(run_dir, changes)
    return changes


def _is_main() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


def note_resume(run_dir: str | Path, changes: dict) -> None:
    """Record settings changed on resume in the latest start of ``run.json``'s history (main process)."""
    path = Path(run_dir) / RUN_FILE
    if not _is_main() or not path.is_file():
        return
    record = json.loads(path.read_text())
    if record.get("history"):
        record["history"][-1].setdefault("changed", {}).update(changes)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)


class StopNow(KeyboardInterrupt):
    """A second SIGTERM/SIGINT: the run ends at once, without finishing (or saving) the step in progress."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by a second {signal.Signals(signum).name}")
        self.signum = signum


class GracefulStop:
    """Turns SIGTERM (and SIGINT) into a flag the training loop polls: it saves a checkpoint and exits 0.

        with GracefulStop() as stop:
            for step in ...:
                ...
                if stop.requested: save(...); break

    A second signal (the step hangs, or the user will not wait) raises :class:`StopNow` (a KeyboardInterrupt)
    at once, after putting back the OS default handlers, so a third one kills the process even if Python code
    no longer runs. Nothing is saved then: the newest complete checkpoint stays the one to resume from.
    An exception leaving the block is tagged ``during_training = True`` (the CLI prints a traceback for those).
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if not self.requested:
            self.requested = True
            print(f"alignkit: {name} received: stopping after this step with a checkpoint "
                  f"(send it again to stop at once, without saving)", file=sys.stderr, flush=True)
            return
        for s in self._previous:
            signal.signal(s, signal.SIG_DFL)
        print(f"alignkit: second {name}: stopping now; the step in progress is not saved",
              file=sys.stderr, flush=True)
        raise StopNow(signum)

    def __enter__(self):
        for s in self.signals:
            try:
                self._previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, exc_type, exc, tb):
        for s, h in self._previous.items():
            signal.signal(s, h)
        if exc is not None:
            try:
                exc.during_training = True
            except AttributeError:  # an exception type that takes no attributes
                pass
        return False
