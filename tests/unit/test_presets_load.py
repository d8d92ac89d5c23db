"""Every shipped preset loads with the config class of the command its first line names: a renamed or removed
key in a recipe's config must be renamed in the presets too (configs/ppo/arith_tiny.yaml once kept
``monitor.kl_alarm`` after the key became ``monitor.kl_limit`` and failed to load)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from alignkit.cli import PIPELINES, RECIPES
from alignkit.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "alignkit" / "configs"
PRESETS = sorted(CONFIGS.glob("*/*.yaml"))


def command_of(path: Path) -> tuple[str, str]:
    """(module, config class) of the command in the preset's first line, e.g. ``# alignkit ppo -c ...``."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r"#\s*alignkit (pipeline (\S+)|(\S+)) -c ", first)
    assert m, f"{path}: the first line must name its command ('# alignkit <recipe> -c <this file>'), got {first!r}"
    module, cls, _ = PIPELINES[m.group(2)] if m.group(2) else RECIPES[m.group(3)]
    return module, cls


def test_there_are_presets():
    assert len(PRESETS) >= 10


@pytest.mark.parametrize("path", PRESETS, ids=[f"{p.parent.name}/{p.name}" for p in PRESETS])
def test_preset_loads(path):
    module, cls = command_of(path)
    load_config(getattr(importlib.import_module(module), cls), path)
