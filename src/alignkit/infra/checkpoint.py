"""Atomic checkpoints and resume.

Layout of ``<run_dir>/checkpoints/step-N/``: ``model.safetensors`` (the full module state, LoRA adapters
included), ``<name>.safetensors``
for each extra module (e.g. PPO's critic), ``trainer.pt`` (optimizer, scheduler, RNG states: loaded with
``torch.load(weights_only=True)``), ``state.json`` (step, data position, anything JSON) and ``COMPLETE``,
written last. A checkpoint is written into a temporary directory beside its final name and renamed into
place, so a crash mid-save leaves a ``.tmp-*`` directory that :func:`latest_checkpoint` ignores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import torch

from alignkit.infra.seeding import rng_state, set_rng_state

_STEP_DIR = re.compile(r"^step-(\d+)$")


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
) -> Path:
    """Write ``checkpoints/step-<step>`` atomically and prune older complete ones beyond ``keep_last``.

    ``state`` must be JSON-serializable (data position, counters); ``tensors`` holds extra tensors (e.g. a
    torch.Generator state) saved with the optimizer; ``modules`` are extra models (e.g. a critic), each saved as
    ``<name>.safetensors`` with ``safetensors.torch.save_model``.
    """
    from safetensors.torch import save_model

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
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
    (tmp / "state.json").write_text(json.dumps({"step": step, **(state or {})}, indent=1))
    (tmp / "COMPLETE").write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and half-written directories excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "COMPLETE").is_file() and (p / "state.json").is_file()]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None,
                    modules: dict[str, torch.nn.Module] | None = None) -> tuple[dict, dict]:
    """Restore model weights, optimizer, scheduler, RNG states and the extra ``modules`` (saved under the same
    names) in place; returns (state, tensors)."""
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
    return json.loads((path / "state.json").read_text()), trainer.get("tensors", {})


class GracefulStop:
    """Turns SIGTERM (and SIGINT) into a flag the training loop polls: it saves a checkpoint and exits 0.

        with GracefulStop() as stop:
            for step in ...:
                ...
                if stop.requested: save(...); break
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        self.requested = True

    def __enter__(self):
        for s in self.signals:
            try:
                self._previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False
