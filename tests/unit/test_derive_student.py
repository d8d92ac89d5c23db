"""A student derived from its teacher: every k-th layer, the teacher's weights, same tokenizer."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.models import resolve_model_path
from alignkit.models.derive import derive_student, layer_indices, resolve_student_spec


def test_layer_indices_and_specs():
    assert layer_indices(30, 2) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 29]
    assert layer_indices(3, 2) == [0, 2] and layer_indices(1, 2) == [0] and layer_indices(5, 3) == [0, 4]
    assert resolve_student_spec("derive:every_other_layer") == 2 and resolve_student_spec("derive:keep_every=3") == 3
    assert resolve_student_spec("bundled-student") is None
    with pytest.raises(ValueError, match="derive:every_other_layer"):
        resolve_student_spec("derive:half")


def test_derived_student_copies_the_teachers_layers(tmp_path):
    info = derive_student("bundled", tmp_path / "s", keep_every=2)
    teacher = AutoModelForCausalLM.from_pretrained(resolve_model_path("bundled"))
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert info["layers"] == [0, 2] and student.config.num_hidden_layers == 2 < teacher.config.num_hidden_layers
    assert info["parameters"] < info["teacher_parameters"]
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"])
    assert torch.equal(s["model.norm.weight"], t["model.norm.weight"])
    for new, old in enumerate(info["layers"]):
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(s[f"model.layers.{new}.{name}"], t[f"model.layers.{old}.{name}"])
    ids = torch.tensor([[2, 5, 7, 9]])
    assert student(ids).logits.shape == teacher(ids).logits.shape  # same vocabulary: logit distillation applies
    tok = AutoTokenizer.from_pretrained(tmp_path / "s")
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(resolve_model_path("bundled")).get_vocab()
    assert json.loads((tmp_path / "s" / "derived_from.json").read_text())["teacher_layers"] == 3
