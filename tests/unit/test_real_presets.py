"""The lecture's defaults as presets for a real model: each loads (no unknown key) with the lecture's numbers,
and its ``~/.cache/alignkit/...`` model path resolves with ``~`` expanded."""

import importlib
from pathlib import Path

import pytest

from alignkit.cli import RECIPES
from alignkit.config import load_config
from alignkit.models.loading import model_source
from alignkit.models.policy import resolve_model_path

ROOT = Path(__file__).resolve().parents[2]


def load(recipe):
    module, cls_name, _ = RECIPES[recipe]
    cls = getattr(importlib.import_module(module), cls_name)
    return load_config(cls, ROOT / "configs" / recipe / "real_lecture_defaults.yaml")


def test_grpo_lecture_defaults():
    cfg = load("grpo")
    assert (cfg.rollout.group_size, cfg.rollout.prompts_per_step) == (8, 32)
    assert cfg.optim.lr == 2e-6 and 0.01 <= cfg.loss.beta <= 0.05 and cfg.loss.beta == 0.04


def test_ppo_lecture_defaults():
    cfg = load("ppo")
    assert (cfg.rollout.prompts_per_step, cfg.loss.minibatch_size, cfg.loss.epochs) == (512, 64, 4)
    assert cfg.optim.lr == 1e-6 and cfg.kl.beta == 0.02 and cfg.loss.clip_eps == 0.2


def test_dpo_lecture_defaults():
    cfg = load("dpo")
    assert cfg.loss.beta == 0.1 and cfg.optim.lr == 5e-4 and cfg.train.batch_size == 64
    assert cfg.model.lora.enabled


@pytest.mark.parametrize("recipe", ["grpo", "ppo", "dpo"])
def test_model_path_is_the_real_model_cache_with_home_expanded(recipe, tmp_path, monkeypatch):
    path = load(recipe).model.path
    assert path == "~/.cache/alignkit/SmolLM2-135M-Instruct"
    monkeypatch.setenv("HOME", str(tmp_path))
    model = tmp_path / ".cache" / "alignkit" / "SmolLM2-135M-Instruct"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert model_source(path).location == str(model)
    assert resolve_model_path(path) == model
