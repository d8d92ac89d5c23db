"""A smaller student derived from its teacher: keep every k-th decoder layer, initialized from the teacher.

    derive_student("runs/r1/final_rl/final", "runs/r1/distill/student_init", keep_every=2)

Layer-dropping initialization (DistilBERT's "every other layer"): the student has the teacher's embeddings,
final norm, head and tokenizer, and the decoder layers ``layer_indices(n, k)``: 0, k, 2k, ... with the last
layer always kept (it writes into the head), e.g. 0, 2, ..., 26, 29 of SmolLM2-135M's 30 layers. Works for
decoders whose layers live in ``model.model.layers`` (Llama, Qwen2, Mistral, ...) and whose config has
``num_hidden_layers``. The result is a plain transformers directory (config, safetensors, tokenizer): same
tokenizer, so logit distillation applies.

``resolve_student_spec("derive:every_other_layer")`` / ``"derive:keep_every=3"`` reads the pipeline's
``student_model`` field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_SPEC = re.compile(r"^derive:(?:every_other_layer|keep_every=(?P<k>\d+))$")


def layer_indices(n_layers: int, keep_every: int) -> list[int]:
    """Teacher layers the student keeps: every ``keep_every``-th from 0, the last one always.

    >>> layer_indices(30, 2)[-3:], len(layer_indices(30, 2)), layer_indices(3, 2), layer_indices(4, 1)
    ([24, 26, 29], 15, [0, 2], [0, 1, 2, 3])
    """
    if keep_every < 1:
        raise ValueError(f"keep_every must be >= 1 (got {keep_every})")
    keep = list(range(0, n_layers, keep_every))
    if keep[-1] != n_layers - 1:  # the last layer replaces the last kept one (or joins the only one)
        if len(keep) > 1:
            keep[-1] = n_layers - 1
        else:
            keep.append(n_layers - 1)
    return keep


def resolve_student_spec(spec: str) -> int | None:
    """``keep_every`` of a ``derive:...`` spec, or None for a model path/name.

    >>> resolve_student_spec("derive:every_other_layer"), resolve_student_spec("derive:keep_every=3"), resolve_student_spec("bundled-student")
    (2, 3, None)
    """
    if not spec.startswith("derive:"):
        return None
    m = _SPEC.match(spec)
    if m is None:
        raise ValueError(f"student spec {spec!r}: use derive:every_other_layer or derive:keep_every=<k>")
    return int(m.group("k")) if m.group("k") else 2


def derive_student(teacher_dir: str | Path, out_dir: str | Path, *, keep_every: int = 2) -> dict:
    """Write the derived student to ``out_dir``; returns {"layers": kept teacher indices, "teacher_layers",
    "parameters", "teacher_parameters"}."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.models import load_tokenizer, resolve_model_path

    src = resolve_model_path(str(teacher_dir))
    teacher = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    cfg = teacher.config
    n = cfg.num_hidden_layers
    keep = layer_indices(n, keep_every)
    student_cfg = type(cfg).from_dict(cfg.to_dict())
    student_cfg.num_hidden_layers = len(keep)
    if isinstance(getattr(student_cfg, "layer_types", None), list) and len(student_cfg.layer_types) == n:
        student_cfg.layer_types = [cfg.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(student_cfg, dtype=torch.float32)
    prefix = "model.layers."
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            if int(idx) not in keep:
                continue
            key = f"{prefix}{keep.index(int(idx))}.{rest}"
        state[key] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and student_cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"cannot derive a student from {src}: missing {missing[:5]}, unexpected {unexpected[:5]} "
                         "(the layers must live in model.model.layers)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    load_tokenizer(src).save_pretrained(out)
    if getattr(teacher, "generation_config", None) is not None:
        teacher.generation_config.save_pretrained(out)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    info = {"teacher": str(src), "teacher_layers": n, "layers": keep, "parameters": count(student),
            "teacher_parameters": count(teacher)}
    (out / "derived_from.json").write_text(json.dumps(info, indent=1))
    return info
