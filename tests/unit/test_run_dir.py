"""Run directories: a fresh run never replaces an earlier one unasked; resume keeps the run id; overwrite
clears; stale temporaries are swept; a changed lr applies on resume (through the SFT recipe)."""

import json

import pytest

from alignkit.config import load_config
from alignkit.infra.checkpoint import latest_checkpoint, save_checkpoint
from alignkit.infra.rundir import RunDirError, is_fresh, prepare_run_dir
from alignkit.models import build_tiny


def record(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def test_missing_or_config_only_directory_is_fresh(tmp_path):
    run = prepare_run_dir(tmp_path / "a", resume=False, overwrite=False)
    assert run.resume_from is None and record(tmp_path / "a")["run_id"] == run.run_id
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text("x: 1\n")
    (tmp_path / "b" / "checkpoints" / ".tmp-step-3-99").mkdir(parents=True)  # swept, then empty: still fresh
    assert prepare_run_dir(tmp_path / "b", resume=False, overwrite=False).run_id != run.run_id
    assert not (tmp_path / "b" / "checkpoints" / ".tmp-step-3-99").exists()
    # a start that failed before training (run.json + config.yaml only) can simply be run again
    assert is_fresh(tmp_path / "b") and prepare_run_dir(tmp_path / "b", resume=False, overwrite=False)


def test_an_earlier_run_is_refused_with_one_line_naming_both_options(tmp_path):
    run_dir = tmp_path / "r"
    prepare_run_dir(run_dir, resume=False, overwrite=False)
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(RunDirError) as err:
        prepare_run_dir(run_dir, resume=False, overwrite=False)
    msg = str(err.value)
    assert "\n" not in msg and str(run_dir) in msg and "output.resume=true" in msg and "output.overwrite=true" in msg
    assert (run_dir / "metrics.jsonl").exists()  # untouched
    with pytest.raises(RunDirError, match="choose one"):
        prepare_run_dir(run_dir, resume=True, overwrite=True)


def test_overwrite_clears_the_earlier_run_and_starts_a_new_id(tmp_path):
    run_dir = tmp_path / "r"
    first = prepare_run_dir(run_dir, resume=False, overwrite=False)
    model, _ = build_tiny()
    save_checkpoint(run_dir, 10, model=model)
    (run_dir / "metrics.jsonl").write_text('{"step": 10}\n')
    second = prepare_run_dir(run_dir, resume=False, overwrite=True)
    assert second.run_id != first.run_id and latest_checkpoint(run_dir) is None
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


def test_overwrite_refuses_a_directory_alignkit_did_not_write(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="does not look like an alignkit run directory"):
        prepare_run_dir(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_resume_keeps_the_id_picks_the_newest_checkpoint_and_refuses_a_mix(tmp_path):
    run_dir = tmp_path / "r"
    first = prepare_run_dir(run_dir, resume=False, overwrite=False)
    model, _ = build_tiny()
    for step in (9, 10):
        save_checkpoint(run_dir, step, model=model)
    (run_dir / "checkpoints" / ".tmp-step-11-7").mkdir()
    again = prepare_run_dir(run_dir, resume=True, overwrite=False)
    assert again.run_id == first.run_id and again.resume_from.name == "step-10"
    assert not (run_dir / "checkpoints" / ".tmp-step-11-7").exists()
    assert [h["resumed_from"] for h in record(run_dir)["history"]] == [None, "checkpoints/step-10"]
    # a checkpoint of another run in the directory (copied in by hand): resuming would splice two runs
    state = json.loads((run_dir / "checkpoints" / "step-9" / "state.json").read_text())
    (run_dir / "checkpoints" / "step-9" / "state.json").write_text(json.dumps({**state, "run_id": "other"}))
    with pytest.raises(RunDirError, match="step-9 belongs to run other"):
        prepare_run_dir(run_dir, resume=True, overwrite=False)


def test_resume_with_nothing_saved_starts_at_step_zero(tmp_path):
    run = prepare_run_dir(tmp_path / "new", resume=True, overwrite=False)
    assert run.resume_from is None and (tmp_path / "new" / "run.json").is_file()


def test_other_processes_neither_check_nor_write(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    run = prepare_run_dir(tmp_path, resume=False, overwrite=False, is_main=False)
    assert run.resume_from is None and not (tmp_path / "run.json").exists()


def _sft_cfg(tmp_path, *overrides):
    from alignkit.recipes.sft import SFTConfig

    return load_config(SFTConfig, None, [
        "model.path=tiny", "data.n_train=16", "data.n_eval=4", "train.eval_generate=0", "train.eval_every=1000",
        "train.batch_size=4", "output.tensorboard=false", "optim.warmup_steps=0", "optim.schedule=constant",
        f"output.dir={tmp_path}", "output.name=run", *overrides])


def test_sft_refuses_a_rerun_and_applies_a_changed_lr_on_resume(tmp_path, caplog):
    from alignkit.recipes import sft

    sft.run(_sft_cfg(tmp_path, "train.steps=2", "output.save_every=2", "optim.lr=1e-2"))
    with pytest.raises(RunDirError, match="already holds a run"):
        sft.run(_sft_cfg(tmp_path, "train.steps=4"))
    with caplog.at_level("WARNING"):
        sft.run(_sft_cfg(tmp_path, "train.steps=4", "output.resume=true", "optim.lr=5e-3"))
    assert "optim.lr changed on resume: 0.01 -> 0.005" in caplog.text
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/lr"] for r in rows if "train/lr" in r] == [1e-2, 1e-2, 5e-3, 5e-3]
    assert "lr: 0.005" in (tmp_path / "run" / "config.yaml").read_text()  # the config the run now uses
    history = record(tmp_path / "run")["history"]
    assert history[-1]["resumed_from"] == "checkpoints/step-2" and history[-1]["changed"] == {
        "optim.lr": [0.01, 0.005]}
    sft.run(_sft_cfg(tmp_path, "train.steps=1", "output.overwrite=true"))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1 and latest_checkpoint(tmp_path / "run") is None
