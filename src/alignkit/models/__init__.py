"""Model and tokenizer loading, and the tiny locally built model + tokenizer used by tests and CPU runs."""

from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.models.policy import BUNDLED_DIR, load_policy, resolve_model_path
from alignkit.models.tiny import build_tiny, build_tiny_model, build_tiny_tokenizer

__all__ = ["BUNDLED_DIR", "load_policy", "resolve_model_path", "build_tiny", "build_tiny_model", "build_tiny_tokenizer", "load_causal_lm", "load_tokenizer"]
