"""Load the model a recipe trains, from a ModelSection: the bundled base model, a fresh tiny one, a local
directory, a GGUF file, or a Hub id (see :mod:`alignkit.models.loading`)."""

from __future__ import annotations

from pathlib import Path

from alignkit.config import ModelSection

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_DIR = ASSETS / "tiny-base"
BUNDLED = {"bundled": BUNDLED_DIR, "bundled-student": ASSETS / "tiny-student-base"}


def resolve_model_path(path: str) -> Path:
    """'bundled' -> the shipped tiny base model, 'bundled-student' -> its smaller sibling (the default
    distillation student); anything else must be a local model directory (with a config.json)."""
    p = BUNDLED.get(path, Path(path).expanduser())
    if not (p / "config.json").is_file():
        hint = " (build it with `python scripts/build_base_model.py`)" if path in BUNDLED else ""
        raise FileNotFoundError(f"model directory not found or has no config.json: {p}{hint}")
    return p


def policy_source(cfg: ModelSection):
    """The :class:`~alignkit.models.loading.ModelSource` of ``cfg.path`` / ``cfg.gguf_file`` (bundled names
    resolved; a local directory without GGUF file must hold a config.json)."""
    from alignkit.models.loading import model_source

    if cfg.path in BUNDLED or (Path(cfg.path).is_dir() and cfg.gguf_file is None):
        ggufs = sorted(f.name for f in Path(cfg.path).glob("*.gguf"))
        if ggufs and not (Path(cfg.path) / "config.json").is_file():
            raise FileNotFoundError(f"{cfg.path!r} has no config.json but holds {ggufs}: set model.gguf_file")
        return model_source(resolve_model_path(cfg.path))
    return model_source(cfg.path, cfg.gguf_file)


def load_policy(cfg: ModelSection):
    """-> (model, tokenizer) per the config, the model in ``cfg.dtype`` (frozen copies keep it; the copy that
    trains gets fp32 master weights in ``prepare_model``); 'tiny' builds a fresh randomly initialized tiny
    model. ``cfg.chat_template`` replaces the tokenizer's template; ``cfg.attn_implementation`` is passed
    to ``from_pretrained`` (None: transformers' default; a tiny model is built with 'eager')."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer, resolve_chat_template, resolve_dtype
    from alignkit.models.tiny import build_tiny

    if cfg.path == "tiny":
        model, tokenizer = build_tiny(arch=cfg.arch, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                                      num_heads=cfg.num_heads)
        if cfg.attn_implementation:
            model.set_attn_implementation(cfg.attn_implementation)
        if cfg.chat_template is not None:
            tokenizer.chat_template = resolve_chat_template(cfg.chat_template)
        return model.to(resolve_dtype(cfg.dtype)), tokenizer
    source = policy_source(cfg)
    model = load_causal_lm(source, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                           attn_implementation=cfg.attn_implementation)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code, chat_template=cfg.chat_template)
    return model, tokenizer


def load_vllm(cfg: ModelSection, *, seed: int = 0):
    """A ``vllm.LLM`` on the weights :func:`load_policy` would load, for sampling from a fixed model
    (rejection sampling's ``backend: vllm``): a local directory or Hub id as is, a GGUF file by its path (vLLM
    reads its tokenizer from it), in ``cfg.dtype``. Untested in this project: no GPU with vLLM runs its
    tests. Training recipes refuse vLLM: nothing syncs trained weights into it."""
    if cfg.path == "tiny":
        raise ValueError("backend=vllm loads the model by path: use a saved model, not model.path=tiny")
    try:
        import vllm
    except ImportError as err:
        raise ImportError("backend='vllm' needs vLLM, an optional GPU dependency: pip install 'alignkit[vllm]' "
                          "(or use backend='native', which runs everywhere)") from err
    source = policy_source(cfg)
    model = str(Path(source.location) / source.gguf_file) if source.gguf_file else source.location
    return vllm.LLM(model=model, dtype=cfg.dtype, seed=seed, trust_remote_code=cfg.trust_remote_code)
