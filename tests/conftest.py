"""Test-wide settings: the models here are tiny, so one intra-op thread per process is fastest and keeps
subprocess tests (torchrun with 2 processes) from oversubscribing a 2-core machine. No test touches a hub."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    """The tiny tokenizer, built locally (shared helpers that are not fixtures live in tests/helpers.py)."""
    from alignkit.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()
