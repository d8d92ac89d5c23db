"""Load the model a recipe trains, from a ModelSection: the bundled base model, a fresh tiny one, or a path."""

from __future__ import annotations

from pathlib import Path

from alignkit.config import ModelSection

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_DIR = ASSETS / "tiny-base"
BUNDLED = {"bundled": BUNDLED_DIR, "bundled-student": ASSETS / "tiny-student-base"}


def resolve_model_path(path: str) -> Path:
    """'bundled' -> the shipped tiny base model, 'bundled-student' -> its smaller sibling (the default
    distillation student); anything else must be a local model directory."""
    p = BUNDLED.get(path, Path(path))
    if not (p / "config.json").is_file():
        hint = " (build it with `python scripts/build_base_model.py`)" if path in BUNDLED else ""
        raise FileNotFoundError(f"model directory not found or has no config.json: {p}{hint}")
    return p


def load_policy(cfg: ModelSection):
    """-> (model, tokenizer) per the config; 'tiny' builds a fresh randomly initialized tiny model."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.models.tiny import build_tiny

    if cfg.path == "tiny":
        return build_tiny(arch=cfg.arch, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                          num_heads=cfg.num_heads)
    path = resolve_model_path(cfg.path)
    model = load_causal_lm(path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    return model, load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
