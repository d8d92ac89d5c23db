"""Model and tokenizer loading (local directory, GGUF file or Hub id), and the tiny locally built model +
tokenizer used by tests and CPU runs."""

from alignkit.models.loading import load_causal_lm, load_tokenizer, model_source, resolve_dtype
from alignkit.models.policy import BUNDLED_DIR, load_policy, load_vllm, policy_source, resolve_model_path
from alignkit.models.tiny import build_tiny, build_tiny_model, build_tiny_tokenizer

__all__ = ["BUNDLED_DIR", "load_policy", "load_vllm", "policy_source", "resolve_model_path", "build_tiny", "build_tiny_model",
           "build_tiny_tokenizer", "load_causal_lm", "load_tokenizer", "model_source", "resolve_dtype"]
