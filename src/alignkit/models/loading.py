"""Load a causal LM and its tokenizer from a local directory (never the hub; safetensors preferred)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _local_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory not found: {str(p)!r} (alignkit loads local paths only)")
    return p


def load_tokenizer(
    path: str | Path, *, padding_side: str = "right", trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a local directory; a tokenizer without pad token pads with EOS."""
    tok = AutoTokenizer.from_pretrained(
        _local_dir(path), local_files_only=True, trust_remote_code=trust_remote_code,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(
    path: str | Path, *, dtype: str = "float32", device: str | torch.device = "cpu",
    trust_remote_code: bool = False, attn_implementation: str | None = None,
) -> PreTrainedModel:
    """AutoModelForCausalLM from a local directory, in `dtype` (float32 | bfloat16 | float16 | auto), on
    `device`, in eval mode. Weights come from safetensors when the directory has them."""
    p = _local_dir(path)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)}")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        p, dtype=DTYPES[dtype], local_files_only=True, trust_remote_code=trust_remote_code,
        use_safetensors=True if any(p.glob("*.safetensors")) else None, **kwargs,
    )
    return model.to(device).eval()
