"""The rollout engine: every completion alignkit samples goes through `generate`.

    from alignkit.rollout import generate
    rollout = generate(model, tokenizer, prompts, num_samples=8, max_new_tokens=128, temperature=1.0, seed=0)
    rollout.completion_ids, rollout.response_mask, rollout.rollout_logprobs  # [B, C], B = N * G

Backends: "native" (default; KV-cached decode loop, prefix shared across the group, finished rows dropped),
"hf" (`model.generate`, the reference), "vllm" (optional, GPUs). See `Rollout` for shapes and conventions.
"""

from alignkit.rollout.generate import BACKENDS, generate
from alignkit.rollout.sampling import sample_tokens
from alignkit.rollout.types import FINISH_REASONS, FinishReason, Rollout, Samples

__all__ = ["BACKENDS", "FINISH_REASONS", "FinishReason", "Rollout", "Samples", "generate", "sample_tokens"]
