"""Helpers the test files share: read a run's metrics and final weights, compare weights, run two processes.

    from tests.helpers import rows, series, final_weights, assert_same_weights, torchrun
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def rows(run_dir) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl``."""
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def series(run_dir, key: str) -> list:
    """The values of one metric over the run, in step order (rows without it skipped)."""
    return [r[key] for r in rows(run_dir) if key in r]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "final" / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max())


def free_port() -> int:
    """A TCP port free on localhost right now (the OS picks it), for a distributed run's master port, so
    parallel test runs and other jobs on the machine do not collide on a fixed one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N --master_port <free port>``: prefix of a command."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port())]
