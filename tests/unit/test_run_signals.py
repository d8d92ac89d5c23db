"""SIGTERM during a step saves after the step; a second signal ends a hung run at once, saving nothing,
with one line that names the checkpoint to resume from."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

HUNG_LOOP = textwrap.dedent("""
    import sys, time
    from alignkit.infra.checkpoint import GracefulStop, StopNow
    try:
        with GracefulStop() as stop:
            print("READY", flush=True)
            while True:          # a step that never finishes: .requested is never polled
                time.sleep(0.05)
    except StopNow as err:
        print(f"exited: {err}", file=sys.stderr)
        sys.exit(128 + err.signum)
""")


def _wait_for(path, deadline_s=120):
    deadline = time.time() + deadline_s
    while time.time() < deadline and not os.path.exists(path):
        time.sleep(0.05)
    assert os.path.exists(path), f"{path} never appeared"


def test_second_signal_ends_a_hung_step_promptly():
    proc = subprocess.Popen([sys.executable, "-c", HUNG_LOOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # the first signal only asks the loop to stop after its step
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert time.time() - t0 < 5 and proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM received: stopping after this step" in err
    assert "second SIGTERM: stopping now" in err and "exited: stopped by a second SIGTERM" in err


HUNG_SFT = textwrap.dedent("""
    import pathlib, sys, time
    from alignkit import cli
    from alignkit.recipes import sft
    real, calls = sft.batch_loss, [0]
    def batch_loss(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:        # step 3 hangs (after step-1 and step-2 are saved)
            pathlib.Path(sys.argv[1]).touch()
            while True:
                time.sleep(0.05)
        return real(*args, **kwargs)
    sft.batch_loss = batch_loss
    sys.exit(cli.main(sys.argv[2:]))
""")


def test_second_signal_through_the_cli_names_the_checkpoint_and_saves_nothing(tmp_path):
    marker = tmp_path / "hung"
    args = ["sft", "model.path=tiny", "data.n_train=16", "data.n_eval=2", "train.eval_generate=0",
            "train.eval_every=1000", "train.steps=10", "train.batch_size=4", "output.tensorboard=false",
            "output.save_every=1", f"output.dir={tmp_path}", "output.name=run"]
    proc = subprocess.Popen([sys.executable, "-c", HUNG_SFT, str(marker), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(marker)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    ckpt = tmp_path / "run" / "checkpoints" / "step-2"
    assert last == f"alignkit sft: stopped by a second SIGINT; resume from {ckpt} with output.resume=true"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert not (tmp_path / "run" / "final").exists() and not out.strip()  # no summary, no final model
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
