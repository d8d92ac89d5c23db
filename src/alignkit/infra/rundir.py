"""Run directories: a run starts fresh, resumes, or replaces an earlier run, and never splices two runs.

``<output.dir>/<output.name>/`` belongs to one run at a time. :func:`prepare_run_dir`, called by every recipe
before it loads anything, decides what happens to it:

- missing, empty, or holding only ``config.yaml`` / ``run.json`` (a start that failed before training):
  fresh; a new run id is written to ``run.json``;
- holding an earlier run (metrics, checkpoints, a final model, ...): refused, unless ``output.resume``
  (continue it from its newest complete checkpoint; same run id) or ``output.overwrite`` (delete it first,
  then start fresh with a new id). Both at once is an error.

``run.json`` holds ``run_id`` and a ``history`` of starts: when, and which checkpoint each resumed from,
plus the settings changed on resume (``load_checkpoint(..., optim=...)`` adds them). Checkpoints carry the
run id; see :mod:`alignkit.infra.checkpoint`. Half-written checkpoints (``checkpoints/.tmp-step-*``) are
deleted here and before every save. docs/runs.md has the rules.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from alignkit.infra.checkpoint import (
    RUN_FILE,
    checkpoint_run_id,
    complete_checkpoints,
    latest_checkpoint,
    run_id_of,
    sweep_temporary,
)

log = logging.getLogger(__name__)

# Files a start writes before any training: a directory holding only these is still fresh.
_START_FILES = frozenset({"config.yaml", RUN_FILE})
# Any of these marks a directory as one alignkit wrote (so output.overwrite may empty it).
_RUN_MARKERS = ("config.yaml", RUN_FILE, "metrics.jsonl", "checkpoints", "summary.json", "final")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked. One line naming the directory and what to do."""


@dataclass(frozen=True)
class RunDir:
    path: Path
    run_id: str
    resume_from: Path | None  # the checkpoint a resume continues from (None: starts at step 0)


def is_fresh(run_dir: str | Path) -> bool:
    """True if ``run_dir`` is missing or holds nothing but start files and empty directories."""
    path = Path(run_dir)
    if not path.exists():
        return True
    for entry in path.iterdir():
        if entry.name in _START_FILES:
            continue
        if entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir()):
            continue
        return False
    return True


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete everything in an alignkit run directory (refused for a directory alignkit did not write)."""
    path = Path(run_dir)
    if not any((path / m).exists() for m in _RUN_MARKERS):
        raise RunDirError(f"{path} does not look like an alignkit run directory (none of {', '.join(_RUN_MARKERS)}); "
                          "not deleting it for output.overwrite: pick another output.dir or output.name")
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _write_record(path: Path, record: dict) -> None:
    tmp = path / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path / RUN_FILE)


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool, is_main: bool = True) -> RunDir:
    """Check and set up ``run_dir`` for a start (see the module docstring); returns the run's id and the
    checkpoint a resume continues from. Only the main process (``is_main``) checks and writes; the others
    just read what is there. Raises :class:`RunDirError` (one line) when the directory cannot be used."""
    path = Path(run_dir)
    if resume and overwrite:
        raise RunDirError(f"{path}: output.resume and output.overwrite are both set: resume continues the run there, "
                          "overwrite deletes it; choose one")
    if not is_main:
        return RunDir(path, run_id_of(path) or "", latest_checkpoint(path) if resume else None)
    sweep_temporary(path)
    fresh = is_fresh(path)
    if not fresh and not (resume or overwrite):
        raise RunDirError(f"{path} already holds a run: set output.resume=true to continue it, or "
                          "output.overwrite=true to delete it and start again")
    if overwrite and not fresh:
        log.warning("output.overwrite: deleting the earlier run in %s", path)
        clear_run_dir(path)
    record = {}
    if resume and (path / RUN_FILE).is_file():
        try:
            record = json.loads((path / RUN_FILE).read_text())
        except ValueError:
            raise RunDirError(f"{path / RUN_FILE}: unreadable; set output.overwrite=true to start the run again") from None
    run_id = record.get("run_id") if resume else None
    if resume:
        run_id = run_id or _adopt_checkpoint_id(path)
        foreign = [c for c in complete_checkpoints(path, all_runs=True) if checkpoint_run_id(c) not in (None, run_id)]
        if foreign:
            raise RunDirError(f"{path}: checkpoint {foreign[-1].name} belongs to run {checkpoint_run_id(foreign[-1])}, "
                              f"not to this directory's run {run_id}; cannot resume from a mix of runs: "
                              "set output.overwrite=true to start again")
    run_id = run_id or uuid.uuid4().hex[:12]
    ckpt = latest_checkpoint(path) if resume else None
    if resume and ckpt is None and not fresh:
        log.warning("output.resume: no complete checkpoint in %s; the run starts again from step 0", path)
    path.mkdir(parents=True, exist_ok=True)
    start = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "resumed_from": str(ckpt.relative_to(path)) if ckpt is not None else None}
    history = record.get("history", []) if ckpt is not None else []
    _write_record(path, {"run_id": run_id, "history": [*history, start]})
    return RunDir(path, run_id, ckpt)


def _adopt_checkpoint_id(path: Path) -> str | None:
    """A directory without run.json (written before run ids existed, or by hand): the id its checkpoints
    share, if they all share one."""
    ids = {checkpoint_run_id(c) for c in complete_checkpoints(path, all_runs=True)} - {None}
    return ids.pop() if len(ids) == 1 else None
