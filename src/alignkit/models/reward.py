"""Reward models: a scalar head on a causal-LM trunk, stored as transformers' ``*ForSequenceClassification``
with ``num_labels=1``, so plain transformers loads and runs a trained one:

    model, tokenizer = build_reward_model(cfg.model)     # to train: from a policy dir, or a fresh tiny model
    model, tokenizer = load_reward_model("runs/rm/final")   # a trained one, eval mode
    AutoModelForSequenceClassification.from_pretrained("runs/rm/final")   # the same model, no alignkit

The score is ``score(h_t)``, a bias-free ``Linear(hidden, 1)`` on the final hidden state of the last token
that is not ``config.pad_token_id`` (transformers' rule; right or left padding alike). With the chat
template a completion ends with EOS, so that is where the score is read.

Decision: there is no separate "value head" class. A trunk plus ``Linear(hidden, 1)`` read at the last
real token is exactly what ``*ForSequenceClassification(num_labels=1)`` computes, and that class already
saves, loads and is understood by every tool (transformers, peft, TRL, vLLM's reward runner); a custom
module would add a second file format and nothing else. (PPO's per-token value model is another matter.)

Caveat: when ``pad_token_id == eos_token_id`` (tokenizers without a pad token) transformers' rule skips
the trailing EOS and reads the token before it; training and scoring do the same, so they still agree.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from alignkit.config import ModelSection


def reward_model_from_causal_lm(causal_lm: PreTrainedModel, *, pad_token_id: int, seed: int = 0) -> PreTrainedModel:
    """A ``*ForSequenceClassification`` (num_labels=1) with the causal LM's trunk weights (its LM head is
    dropped) and a new score head (``init_score_head``). Used for in-memory models such as ``model.path: tiny``."""
    config = causal_lm.config.__class__.from_dict(causal_lm.config.to_dict())
    config.num_labels, config.pad_token_id = 1, pad_token_id
    config.architectures = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(
            config, attn_implementation=causal_lm.config._attn_implementation, dtype=causal_lm.dtype)
    missing, unexpected = model.load_state_dict(causal_lm.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith("score.")] + [k for k in unexpected if not k.startswith("lm_head.")]
    if bad:
        raise RuntimeError(f"causal LM and reward model trunks differ: {bad[:5]}")
    return init_score_head(model, seed=seed)


def init_score_head(model, *, seed: int = 0):
    """Initialize a new score head ~ normal(0, 1 / sqrt(hidden + 1)) (OpenAI lm-human-preferences' reward
    head), seeded; the global RNG is left untouched. transformers' default (std 0.02) is ~6x smaller for a
    tiny model and makes the trunk's gradient, which scales with the head, start near zero."""
    weight = model.score.weight
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        weight.copy_(torch.randn(weight.shape, dtype=torch.float32) / math.sqrt(weight.shape[1] + 1))
    return model


def build_reward_model(cfg: ModelSection, *, seed: int = 0):
    """-> (reward model, tokenizer) to train, per the config: ``tiny`` a fresh tiny trunk; ``bundled`` or a
    local directory: that model's trunk (a causal LM's head is replaced by a new score head; a directory
    that already holds a reward model loads with its head)."""
    from alignkit.models.loading import load_tokenizer, resolve_dtype
    from alignkit.models.policy import load_policy, resolve_model_path

    if cfg.path == "tiny" or cfg.gguf_file or cfg.path.endswith(".gguf"):  # a GGUF file holds a causal LM
        causal_lm, tokenizer = load_policy(cfg)
        return reward_model_from_causal_lm(causal_lm, pad_token_id=tokenizer.pad_token_id, seed=seed), tokenizer
    path = resolve_model_path(cfg.path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code, chat_template=cfg.chat_template)
    attn = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=resolve_dtype(cfg.dtype), **attn,
        local_files_only=True,
        trust_remote_code=cfg.trust_remote_code, use_safetensors=True if any(path.glob("*.safetensors")) else None,
        output_loading_info=True)
    if any(k.startswith("score.") for k in info["missing_keys"]):  # a causal LM: its head is new
        init_score_head(model, seed=seed)
    return model, tokenizer


def load_reward_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: str = "float32",
                      trust_remote_code: bool = False):
    """-> (reward model in eval mode on ``device``, tokenizer) from a trained reward-model directory."""
    from alignkit.models.loading import DTYPES, load_tokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"reward model directory not found or has no config.json: {p}")
    model = AutoModelForSequenceClassification.from_pretrained(
        p, dtype=DTYPES[dtype], local_files_only=True, trust_remote_code=trust_remote_code,
        use_safetensors=True if any(p.glob("*.safetensors")) else None)
    if model.config.num_labels != 1:
        raise ValueError(f"{p}: not a reward model (num_labels={model.config.num_labels}, expected 1)")
    tokenizer = load_tokenizer(p, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scores [B] (fp32) of a padded batch [B, T]; see the module docstring for where they are read."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
