"""Load a causal LM and its tokenizer from a local directory, a GGUF file, or a Hugging Face Hub id.

Where a model comes from (:func:`model_source`):

- a local directory: loaded from its files only (safetensors preferred), never touching the network;
- a ``.gguf`` file (``gguf_file=`` names it inside the directory, or the path is the file itself): weights
  dequantized to dense tensors in the asked dtype (fp32 by default), tokenizer and chat template read from
  the same file. The model is a plain transformers model: it trains, and ``save_pretrained`` writes it as
  safetensors (``GgufConfig(dequantize=True)``: transformers keeps no quantizer on it, which is what makes
  a default GGUF load refuse to save). Needs ``pip install gguf`` (the ``alignkit[gguf]`` extra);
- anything else that looks like ``org/name``: a Hub id, passed to ``from_pretrained`` so the HF cache
  works; not cached and offline (``HF_HUB_OFFLINE=1``) or not found gives a one-line FileNotFoundError.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_dtype(name: str) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' -> that dtype; 'auto' -> bf16 on a CUDA GPU that has it, else fp32
    (never the checkpoint's own dtype: a bf16 checkpoint on a CPU still loads fp32)."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; allowed: {sorted(DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


@dataclass(frozen=True)
class ModelSource:
    """Where to load from: ``location`` (a local directory or a Hub id), ``gguf_file`` (a file name inside
    it, or None) and ``local`` (False: a Hub id)."""

    location: str
    gguf_file: str | None = None
    local: bool = True

    def kwargs(self) -> dict:
        """``from_pretrained`` keyword arguments shared by model and tokenizer."""
        kw = {"local_files_only": True} if self.local else {}
        return {**kw, "gguf_file": self.gguf_file} if self.gguf_file else kw


def model_source(path: str | Path, gguf_file: str | None = None) -> ModelSource:
    """Resolve ``path`` (``~`` expanded; + ``gguf_file``) to a :class:`ModelSource`; a path to a ``.gguf`` file
    is split into its directory and file name. Raises FileNotFoundError (one line) when nothing fits."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        if gguf_file not in (None, p.name):
            raise ValueError(f"model.path is the GGUF file {str(p)!r} but model.gguf_file names {gguf_file!r}")
        return ModelSource(str(p.parent), p.name)
    if p.is_dir():
        if gguf_file is not None and not (p / gguf_file).is_file():
            found = sorted(f.name for f in p.glob("*.gguf"))
            raise FileNotFoundError(f"GGUF file {gguf_file!r} not found in {str(p)!r} (it has: {found or 'none'})")
        return ModelSource(str(p), gguf_file)
    if _HUB_ID.match(str(path)) and not str(path).startswith((".", "/")):
        return ModelSource(str(path), gguf_file, local=False)
    raise FileNotFoundError(f"model {str(path)!r} is neither a local directory nor a Hub id (org/name)")


def _hub_error(source: ModelSource, err: Exception) -> FileNotFoundError:
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    why = "HF_HUB_OFFLINE is set and it is not in the HF cache" if offline else \
        "not found on the Hub or no network"
    first = " ".join(str(err).split())[:200]
    return FileNotFoundError(f"model {source.location!r} is neither a local directory nor available from the "
                             f"Hub ({why}): {first}")


def _load(fn, source: ModelSource, **kwargs):
    """``fn(source.location, ...)``; a Hub id that cannot be fetched becomes a one-line FileNotFoundError."""
    if source.local:
        return fn(source.location, **source.kwargs(), **kwargs)
    try:
        return fn(source.location, **source.kwargs(), **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error(source, err) from None


def resolve_chat_template(template: str) -> str:
    """``model.chat_template``: the text of an existing file, or the string itself when it is a Jinja
    template (has ``{{`` or ``{%``); anything else is an error (a mistyped file name is not a template)."""
    p = Path(template)
    if len(template) < 4096 and "\n" not in template and p.is_file():
        return p.read_text()
    if "{{" in template or "{%" in template:
        return template
    raise FileNotFoundError(f"model.chat_template {template!r} is neither a file nor a Jinja template")


def load_tokenizer(
    path: str | Path | ModelSource, *, padding_side: str = "right", trust_remote_code: bool = False,
    chat_template: str | None = None,
) -> PreTrainedTokenizerBase:
    """AutoTokenizer per :func:`model_source`; a tokenizer without pad token pads with EOS. ``chat_template``
    (a file or a template string) replaces the tokenizer's own; without one the tokenizer keeps what it has
    (None included: the data layer then says a template is needed)."""
    source = path if isinstance(path, ModelSource) else model_source(path)
    tok = _load(AutoTokenizer.from_pretrained, source, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    if chat_template is not None:
        tok.chat_template = resolve_chat_template(chat_template)
    return tok


def load_causal_lm(
    path: str | Path | ModelSource, *, dtype: str = "float32", device: str | torch.device = "cpu",
    trust_remote_code: bool = False, attn_implementation: str | None = None,
) -> PreTrainedModel:
    """AutoModelForCausalLM per :func:`model_source`, in ``dtype`` (float32 | bfloat16 | float16 | auto, see
    :func:`resolve_dtype`), on ``device``, in eval mode. A local directory's weights come from safetensors
    when it has them; a GGUF file is dequantized. ``attn_implementation``: None = transformers' default."""
    source = path if isinstance(path, ModelSource) else model_source(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if source.gguf_file:
        _require_gguf()
        try:
            from transformers import GgufConfig
        except ImportError:  # transformers before GgufConfig: a GGUF always loads dequantized
            pass
        else:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)  # dense, trainable, saveable
    elif source.local:
        kwargs["use_safetensors"] = True if any(Path(source.location).glob("*.safetensors")) else None
    model = _load(AutoModelForCausalLM.from_pretrained, source, dtype=resolve_dtype(dtype),
                  trust_remote_code=trust_remote_code, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if source.gguf_file and quantizer is not None and not any(
            type(m).__name__.startswith(("Gguf", "Ggml")) for m in model.modules()):
        quantizer.remove_quantization_config(model)  # dense weights: a plain model that save_pretrained accepts
    return model.to(device).eval()


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ImportError("loading a .gguf model needs the gguf package: pip install 'alignkit[gguf]'") from err
