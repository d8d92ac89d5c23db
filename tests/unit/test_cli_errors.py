"""What a user gets wrong is one line on stderr, `alignkit <cmd>: error: ...`, exit status 2, no traceback:
run as the user runs it, in a subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest

FAST = ["model.path=tiny", "data.n_train=8", "data.n_eval=2", "train.steps=1", "train.batch_size=4",
        "output.tensorboard=false"]


def alignkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "alignkit.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def assert_one_line(proc, cmd, *needles):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"alignkit {cmd}: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\noptim:\n  lr: [0.1\n  warmup_steps: 2\n")
    assert_one_line(alignkit("sft", "-c", str(bad)), "sft", f"{bad}:5:", "invalid YAML")


def test_missing_config_file_and_unknown_key(tmp_path):
    assert_one_line(alignkit("dpo", "-c", str(tmp_path / "nope.yaml")), "dpo", "config file not found", "nope.yaml")
    assert_one_line(alignkit("sft", "optim.lrr=1"), "sft", "unknown key 'optim.lrr'")


def test_missing_reward_module(tmp_path):
    proc = alignkit("grpo", "reward.weights={nosuchmod:f: 1}", "model.path=tiny", f"output.dir={tmp_path}")
    assert_one_line(proc, "grpo", "nosuchmod")


def test_a_run_directory_in_use_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"step": 0}\n')
    proc = alignkit("sft", *FAST, f"output.dir={tmp_path}", "output.name=r")
    assert_one_line(proc, "sft", str(tmp_path / "r"), "output.resume=true", "output.overwrite=true")


@pytest.mark.parametrize("content, needle", [(b'{"prompt": "a", "completion": "\xff"}\n', "UTF-8"),
                                             (b"", "no rows")])
def test_bad_data_file_is_one_line(tmp_path, content, needle):
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    proc = alignkit("sft", *FAST, f"data.train_file={data}", f"output.dir={tmp_path}")
    assert_one_line(proc, "sft", str(data), needle)


def test_console_script_is_the_same_entry_point(tmp_path):
    script = subprocess.run([str(Path(sys.executable).parent / "alignkit"), "sft", "train.steps=0"],
                            capture_output=True, text=True, timeout=300)
    assert_one_line(script, "sft", "'train.steps'")
