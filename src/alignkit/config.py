"""Typed configuration: pydantic models, YAML presets, dotted command-line overrides.

Every field is documented (``Field(description=...)``); unknown keys and wrong types are errors reported
as one line that names the key. Configs are frozen: nothing mutates them at run time.

    cfg = load_config(SFTConfig, "configs/sft/arith_tiny.yaml", ["optim.lr=3e-4"])
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

C = TypeVar("C", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key (and file) at fault."""


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The first line of a YAML error's own description (without PyYAML's multi-line context)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err)
    return " ".join(str(problem).split())


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.subkey=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), (yaml.safe_load(raw) if raw.strip() else "")
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)})") from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; ConfigError (one line naming the file and line) if it is not UTF-8 or not YAML."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = p.read_bytes()[:err.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte 0x{err.object[err.start]:02x})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML: {_yaml_problem(err)}") from None


def parse_overrides(overrides: list[str]) -> dict:
    """['optim.lr=3e-4', 'train.steps=10'] -> {'optim': {'lr': '3e-4'}, 'train': {'steps': 10}} (YAML-typed values)."""
    tree: dict = {}
    for item in overrides:
        _set_dotted(tree, *_split_override(item))
    return tree


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``a.b.c=value`` at exactly that path of ``data`` (a copy): the value REPLACES what was there,
    so ``reward.weights={accuracy: 1}`` drops the preset's other weights, while ``r1_zero.train.steps=2``
    changes one key deep inside a section."""
    out = copy.deepcopy(data)
    for item in overrides:
        _set_dotted(out, *_split_override(item))
    return out


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}'"
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f" [and {err.error_count() - 1} more]" if err.error_count() > 1 else ""
    return f"{source}: '{loc}': {first['msg']}{got_text}{more}"


def _over_defaults(cls: type[BaseModel], data: dict, defaults: BaseModel) -> dict:
    """``data`` laid over the values of ``defaults`` section by section, so that setting one key of a section
    keeps the recipe's own defaults for the others (a recipe may default e.g. ``optim`` to other values than
    the section class does). Plain dict-valued fields are replaced, not merged. Unknown keys are kept, so
    validation reports them."""
    out: dict = dict(data)
    for name, field in cls.model_fields.items():
        ann, current = field.annotation, getattr(defaults, name)
        if name not in data:
            out[name] = current
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(data[name], dict):
            out[name] = _over_defaults(ann, data[name], current)
    return out


def build_config(cls: type[C], data: dict, *, source: str = "config") -> C:
    """Validate a nested dict into ``cls`` over the recipe's defaults; ConfigError names the bad key."""
    try:
        return cls.model_validate(_over_defaults(cls, data, cls()))
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build ``cls`` from a YAML file (optional) plus dotted overrides; raise ConfigError on any problem."""
    data: dict = {}
    source = "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        source = str(p)
        loaded = read_yaml(p) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded
    return build_config(cls, apply_overrides(data, overrides or []), source=source)


def choices(annotation: Any) -> list[Any] | None:
    """The allowed values of a choice field (``Literal[...]``, also inside ``Optional``), else None.

    >>> choices(Literal["constant", "linear"] | None)
    ['constant', 'linear', None]
    >>> choices(int) is None
    True
    """
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        found: list[Any] = []
        for arg in get_args(annotation):
            sub = [None] if arg is type(None) else choices(arg)
            if sub is None:
                return None
            found += sub
        return found if any(v is not None for v in found) else None
    return None


def describe(config: BaseModel | type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """Flatten a config into (dotted key, default, description) rows, for --help and the docs.

    The defaults are read from an INSTANCE (``cls()`` when given a class), so a recipe's own section
    defaults (``Field(default_factory=lambda: OptimSection(lr=1e-4))``) show, not the section class's. A
    choice field's description ends with its allowed values, ``(one of: a|b|c)``.

    >>> class Cfg(Section):
    ...     optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=1e-4, schedule="constant"))
    >>> for row in describe(Cfg)[:5]:
    ...     print(row)
    ('optim.lr', '0.0001', 'peak AdamW learning rate')
    ('optim.weight_decay', '0.0', 'AdamW weight decay')
    ('optim.betas', '(0.9, 0.999)', 'AdamW betas')
    ('optim.warmup_steps', '10', 'linear warmup steps')
    ('optim.schedule', "'constant'", 'LR decay after warmup (one of: constant|linear|cosine)')
    """
    instance = config() if isinstance(config, type) else config
    rows = []
    for name, field in type(instance).model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            rows.extend(describe(value, key + "."))
            continue
        text = field.description or ""
        allowed = choices(field.annotation)
        if allowed:
            text = f"{text} (one of: {'|'.join(str(v) for v in allowed)})".strip()
        rows.append((key, repr(value), text))
    return rows


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------------------
# Sections shared by the recipes.
# ---------------------------------------------------------------------------------------------------------

class LoraSection(Section):
    enabled: bool = Field(False, description="train LoRA adapters (peft) instead of all weights")
    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: int = Field(16, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: str = Field("all-linear", description="'all-linear' or comma-separated module names")
    adapter_path: str | None = Field(None, description="start from this saved LoRA adapter (e.g. a run's "
                                     "final/adapter; needs enabled=true; its own r, alpha and targets apply)")


class ModelSection(Section):
    path: str = Field("bundled", description="'bundled' = the shipped tiny base model ('bundled-student': its "
                      "smaller sibling); 'tiny' = a fresh random tiny model; else a local model directory, a "
                      ".gguf file, or a Hugging Face Hub id (org/name, through the HF cache)")
    gguf_file: str | None = Field(None, description="name of a .gguf file in the directory model.path, loaded "
                                  "dequantized with its tokenizer (needs `pip install gguf`)")
    attn_implementation: str | None = Field(None, description="attention kernel passed to from_pretrained "
                                            "('eager', 'sdpa', 'flash_attention_2', ...; None: transformers' default)")
    chat_template: str | None = Field(None, description="Jinja chat template (a file path or the template "
                                      "itself) replacing the tokenizer's; None: the tokenizer's own")
    arch: Literal["llama", "qwen2"] = Field("llama", description="path=tiny: architecture")
    hidden_size: int = Field(64, gt=0, description="path=tiny: hidden size")
    num_layers: int = Field(2, gt=0, description="path=tiny: transformer layers")
    num_heads: int = Field(4, gt=0, description="path=tiny: attention heads")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype ('auto': bf16 on a GPU that has it, else fp32); bf16/fp16: frozen "
        "copies stay in it, the trained weights are fp32 masters and the forward autocasts to it")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    trust_remote_code: bool = Field(False, description="allow model code from the model directory (off: safer)")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA adapters")


class OptimSection(Section):
    lr: float = Field(3e-3, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps")
    schedule: Literal["constant", "linear", "cosine"] = Field("cosine", description="LR decay after warmup")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping max norm")


class RewardSection(Section):
    weights: dict[str, float] = Field({"accuracy": 1.0, "format": 1.0},
                                      description="reward name or module:function -> weight (0 = log only)")
    options: dict[str, dict[str, Any]] = Field({}, description="keyword options per reward, e.g. {language: {language: en}}")
    success_key: str = Field("accuracy", description="component whose value 1.0 means the task was solved")
    max_failed_share: float = Field(0.5, ge=0, le=1, description="stop the run when more than this share of the "
                                    "last failure_window samples failed to score (a reward raised, NaN, sandbox)")
    failure_window: int = Field(64, gt=0, description="samples over which max_failed_share is measured")
    workers: int | None = Field(None, ge=1, description="threads scoring sandboxed rewards (code) in parallel; "
                                "None = min(8, CPUs), at least 2 (1 = serial); results do not depend on it")
    when: dict[str, dict[str, Any]] = Field(
        {}, description="conditional components for mixed prompt sets: component (a reward.weights key, or 'model' "
        "for reward.model) -> {column: value}; it is computed only on rows whose columns all equal those values "
        "(== as given, no type conversion; a row lacking the column does not match) and is None (not applicable, "
        "left out of the total) elsewhere, e.g. {accuracy: {kind: task}, model: {kind: general}}")

    @field_validator("when", mode="before")
    @classmethod
    def _when_conditions_are_mappings(cls, when: Any) -> Any:
        if isinstance(when, dict):
            for key, condition in when.items():
                if not isinstance(condition, dict):
                    raise ValueError(f"reward.when.{key} must be a mapping {{column: value}} (e.g. {{kind: task}}), "
                                     f"got {type(condition).__name__} {condition!r}")
                if not condition:
                    raise ValueError(f"reward.when.{key} is empty: give at least one column: value (or leave "
                                     f"{key!r} out of reward.when to apply it to every row)")
                bad = [c for c in condition if not isinstance(c, str)]
                if bad:
                    raise ValueError(f"reward.when.{key}: column names must be strings, got {bad[0]!r}")
        return when

    def _when_components(self) -> list[str]:
        """The names reward.when may use: the weighted components (RLRewardSection adds 'model')."""
        return list(self.weights)

    @model_validator(mode="after")
    def _when_names_components(self):
        known = self._when_components()
        for key in self.when:
            if key not in known:
                hint = ""
                if key == "model":
                    rl = "model" in type(self).model_fields
                    hint = (" ('model' is the trained reward model: set reward.model)" if rl
                            else " (this recipe has no trained reward model)")
                raise ValueError(f"reward.when.{key}: {key!r} is not a reward component{hint}; the components are: "
                                 f"{', '.join(known) or '(none)'}")
        return self


class RLRewardSection(RewardSection):
    """RL recipes (GRPO, PPO): rule-based components plus, optionally, a trained reward model."""

    model: str | None = Field(None, description="trained reward model directory (alignkit rm's final/); None = rules only")
    model_weight: float = Field(1.0, description="weight of the reward model's score in the sequence reward")
    model_batch_size: int = Field(64, gt=0, description="rows per reward-model forward")

    def _when_components(self) -> list[str]:
        return list(self.weights) + (["model"] if self.model is not None and "model" not in self.weights else [])


class OutputSection(Section):
    dir: str = Field("runs", description="parent directory of runs")
    name: str = Field("run", description="run name: outputs go to <dir>/<name>/")
    tensorboard: bool = Field(True, description="write TensorBoard events")
    wandb: bool = Field(False, description="also log to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = Field("alignkit", description="W&B project of the run (output.wandb=true)")
    wandb_entity: str | None = Field(None, description="W&B entity (user or team); None: your default entity")
    wandb_tags: list[str] = Field([], description="W&B tags of the run")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0 = only at the end / on SIGTERM)")
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept")
    resume: bool = Field(False, description="continue from the newest complete checkpoint of this run")
    overwrite: bool = Field(False, description="delete an earlier run in <dir>/<name>/ and start again (without "
                            "this or resume, a directory holding a run is refused)")
    max_bad_steps: int = Field(5, ge=1, description="stop after this many consecutive non-finite steps")
