"""Typed configs: YAML + dotted overrides; unknown keys, wrong types and missing files give one clear line."""

import json

import pytest
from pydantic import ValidationError

from alignkit.cli import main
from alignkit.config import ConfigError, describe, load_config, parse_overrides
from alignkit.infra.train import lr_factor
from alignkit.recipes.sft import SFTConfig


def test_overrides_are_yaml_typed_and_nested():
    assert parse_overrides(["optim.lr=0.5", "train.steps=10", "data.train_file=null", "output.name=x"]) == {
        "optim": {"lr": 0.5}, "train": {"steps": 10}, "data": {"train_file": None}, "output": {"name": "x"}}
    # YAML 1.1 reads 3e-4 as a string; the typed field converts it
    assert load_config(SFTConfig, None, ["optim.lr=3e-4"]).optim.lr == 3e-4
    with pytest.raises(ConfigError, match="must look like key.subkey=value"):
        parse_overrides(["optim.lr"])


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.1\ntrain:\n  steps: 7\n")
    cfg = load_config(SFTConfig, p, ["optim.lr=0.2"])
    assert cfg.optim.lr == 0.2 and cfg.train.steps == 7 and cfg.train.batch_size == 32
    with pytest.raises(ValidationError):  # frozen: never mutated at run time
        cfg.optim.lr = 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], r"c\.yaml: unknown key 'optim\.lrr'"),
        (["optim.lr=abc"], r"'optim\.lr': Input should be a valid number.*\(got 'abc'\)"),
        (["train.steps=-1"], r"'train\.steps': Input should be greater than 0"),
        (["model.arch=gpt9"], r"'model\.arch': Input should be 'llama' or 'qwen2'"),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path, overrides, message):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(SFTConfig, p, overrides)
    assert "\n" not in str(err.value)


def test_missing_config_file_and_cli_exit_code(tmp_path, capsys):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    assert main(["sft", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("alignkit sft: error: config file not found")


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim:\n  lr: [1, 2\ntrain:\n  steps: 3\n", r"c\.yaml:3:6: invalid YAML: expected ',' or ']'"),
        ("optim:\n  lr: 0.1\n\tsteps: 3\n", r"c\.yaml:3:1: invalid YAML: found character '\\t'"),
        (b"optim:\n  lr: 0.1 # \xff\n", r"c\.yaml:2: not UTF-8 text \(byte 0xff\)"),
    ],
)
def test_malformed_yaml_names_the_file_and_line(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message) as err:
        load_config(SFTConfig, p)
    assert "\n" not in str(err.value)


def test_override_with_malformed_yaml_value_is_one_line():
    with pytest.raises(ConfigError, match=r"override 'optim.betas=\[0.9': the value is not valid YAML") as err:
        load_config(SFTConfig, None, ["optim.betas=[0.9"])
    assert "\n" not in str(err.value)


def test_output_overwrite_defaults_off():
    cfg = load_config(SFTConfig, None, [])
    assert cfg.output.overwrite is False and cfg.output.resume is False
    assert load_config(SFTConfig, None, ["output.overwrite=true"]).output.overwrite is True


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    for key, default, _ in describe(SFTConfig):
        assert key in out and default in out
    assert main(["--help"]) == 0 and "sft" in capsys.readouterr().out


def test_lr_schedule_shapes():
    # warmup 10: step 0 -> 0.1, step 9 -> 1.0 ; cosine at the midpoint of the decay -> 0.5 ; end -> 0
    assert lr_factor(0, warmup=10, total=110, schedule="cosine") == pytest.approx(0.1)
    assert lr_factor(9, warmup=10, total=110, schedule="cosine") == pytest.approx(1.0)
    assert lr_factor(60, warmup=10, total=110, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(110, warmup=10, total=110, schedule="linear") == pytest.approx(0.0)
    assert lr_factor(50, warmup=0, total=100, schedule="constant") == 1.0


def test_missing_dataset_file_is_one_line(tmp_path, capsys):
    rc = main(["sft", "model.path=tiny", f"data.train_file={tmp_path}/nope.jsonl", f"output.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope.jsonl" in err and "\n" not in err


def test_setting_one_key_keeps_the_recipes_own_section_defaults():
    from alignkit.recipes.grpo import GRPOConfig

    # GRPO defaults optim to warmup 0 / constant (the OptimSection class says 10 / cosine)
    cfg = load_config(GRPOConfig, None, ["optim.lr=1e-3", "output.dir=/tmp/x"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule) == (1e-3, 0, "constant")
    assert cfg.output.name == "grpo"
    # a plain dict field is replaced, not merged with its default
    cfg = load_config(GRPOConfig, None, ["reward.weights={accuracy: 1.0}"])
    assert cfg.reward.weights == {"accuracy": 1.0}
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        load_config(GRPOConfig, None, ["optim.lrr=1"])


def test_eval_command_reports_accuracy_and_format(capsys):
    assert main(["eval", "--model", "bundled", "-n", "20", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per_level = {k for k in scores if k.startswith("accuracy/level_")}
    assert set(scores) - per_level == {"accuracy", "format", "language", "length"} and 0 <= scores["accuracy"] <= 1
    assert per_level and all(0 <= scores[k] <= 1 for k in per_level)  # held-out levels 1-3: one accuracy each


def test_override_replaces_a_dict_value_of_the_preset(tmp_path):
    from alignkit.recipes.grpo import GRPOConfig

    p = tmp_path / "g.yaml"
    p.write_text("reward:\n  weights: {accuracy: 1.0, format: 1.0}\ntrain:\n  steps: 9\n")
    cfg = load_config(GRPOConfig, p, ["reward.weights={accuracy: 2.0}", "train.eval_every=3"])
    assert cfg.reward.weights == {"accuracy": 2.0} and (cfg.train.steps, cfg.train.eval_every) == (9, 3)
