"""`alignkit <recipe> --help` prints the defaults each recipe really runs with (the recipe's own section
defaults, not the section class's), the allowed values of every choice field, and, for the pipeline, every
stage's keys; `alignkit --version` prints the version. Each row is checked against the built config."""

import importlib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

import alignkit
from alignkit.cli import PIPELINES, RECIPES, main


def leaves(cfg: BaseModel, prefix: str = ""):
    """(dotted key, value, field annotation) of every non-section field of a config instance."""
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value, field.annotation


def help_rows(argv, capsys) -> dict[str, str]:
    """{key: the line --help prints for it}."""
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        if line.startswith("  ") and "(default: " in line:
            rows[line.split()[0]] = line
    return rows


def default_of(line: str) -> str:
    return line.rsplit("(default: ", 1)[1][:-1]


def literal_values(annotation):
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return None


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_every_help_row_is_the_recipes_real_default(command, capsys):
    module, cls_name, _ = RECIPES[command]
    built = getattr(importlib.import_module(module), cls_name)()
    rows = help_rows([command], capsys)
    expected = list(leaves(built))
    assert set(rows) == {k for k, _, _ in expected}
    for key, value, annotation in expected:
        assert default_of(rows[key]) == repr(value), (command, key, rows[key])
        allowed = literal_values(annotation)
        if allowed:
            assert f"(one of: {'|'.join(map(str, allowed))})" in rows[key], rows[key]


def test_the_defaults_that_used_to_be_wrong(capsys):
    grpo = help_rows(["grpo"], capsys)
    assert default_of(grpo["optim.lr"]) == "0.0001"
    assert default_of(grpo["optim.warmup_steps"]) == "0"
    assert default_of(grpo["optim.schedule"]) == "'constant'"
    assert "(one of: constant|linear|cosine)" in grpo["optim.schedule"]
    distill = help_rows(["distill"], capsys)
    assert default_of(distill["student.path"]) == "'bundled-student'"
    assert default_of(distill["sampling.num_samples"]) == "4"
    for command in ("sft", "grpo", "dpo", "ppo", "rm"):
        module, cls_name, _ = RECIPES[command]
        name = getattr(importlib.import_module(module), cls_name)().output.name
        assert default_of(help_rows([command], capsys)["output.name"]) == repr(name)


def test_pipeline_help_lists_every_stage_key_with_the_value_it_runs_with(capsys):
    module, cls_name, _ = PIPELINES["r1"]
    mod = importlib.import_module(module)
    cfg = getattr(mod, cls_name)()
    rows = help_rows(["pipeline", "r1"], capsys)
    for key, value, _ in leaves(cfg):
        assert default_of(rows[key]) == repr(value), key
    plan = [s for s in mod.stages(cfg, Path(cfg.output_dir) / cfg.name) if s.config is not None]
    assert {s.name for s in plan} >= {"r1_zero", "cold_start_sft", "reasoning_rl", "final_rl", "distill"}
    for stage in plan:
        for key, value, _ in leaves(stage.config):
            assert default_of(rows[f"{stage.name}.{key}"]) == repr(value), (stage.name, key)
    assert "set by the pipeline" in rows["reasoning_rl.model.path"]
    assert "set by the pipeline" in rows["r1_zero.model.path"]  # follows base_model
    assert "set by the pipeline" not in rows["r1_zero.optim.lr"]


def test_pipeline_help_names_each_stages_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "r1", "--help"])
    out = capsys.readouterr().out
    assert "r1_zero.* : grpo options (see alignkit grpo --help)" in out
    assert "cold_start_sft.* : sft options" in out
    assert "rejection_sampling.* : rejection-sample options" in out


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    assert main([flag]) == 0
    assert capsys.readouterr().out.strip() == f"alignkit {alignkit.__version__}"
