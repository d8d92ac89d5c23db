"""Progress off a terminal (CI, `| tee log`): plain lines at most every ALIGNKIT_PROGRESS_INTERVAL seconds
with the true count, ETA and postfix, plus the last one; never tqdm's "\\r" redraws. On a terminal: tqdm."""

import io
import sys
import warnings

import pytest

from alignkit.infra import progress_bar as runlog
from alignkit.infra.progress_bar import LineProgress, progress, quiet_library_progress


class Clock:
    """time.perf_counter standing in for a run whose steps take ``per_step`` seconds each."""

    def __init__(self, per_step):
        self.t, self.per_step = 1000.0, per_step

    def __call__(self):
        return self.t

    def tick(self):
        self.t += self.per_step


@pytest.fixture
def clock(monkeypatch):
    c = Clock(3.0)
    monkeypatch.setattr(runlog.time, "perf_counter", c)
    return c


def run_loop(bar, clock, postfix=True):
    for step in bar:
        clock.tick()  # the step's work
        if postfix:
            bar.set_postfix(reward=f"{step / 10:.2f}", success=f"{step / 20:.2f}")


def test_off_a_terminal_a_line_at_most_every_interval_plus_the_last(clock, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_PROGRESS_INTERVAL", "10")
    bar = progress(range(100), desc="grpo", unit="step")
    assert isinstance(bar, LineProgress)  # pytest's stderr is not a terminal
    run_loop(bar, clock)
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    # 3 s per step, 10 s interval: a line after steps 4, 8, ..., 100 (every 12 s of fake time), the last included
    assert len(lines) == 25
    assert lines[0] == "grpo: step 4/100 (4%) 3.0 s/step ETA 4m48s reward=0.30 success=0.15"
    assert lines[-1] == "grpo: step 100/100 (100%) 3.0 s/step ETA 0s reward=9.90 success=4.95"


def test_resumed_runs_count_from_initial(clock):
    out = io.StringIO()
    bar = LineProgress(range(12, 20), desc="sft", unit="step", initial=12, total=20, file=out, interval=0)
    run_loop(bar, clock, postfix=False)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sft: step 13/20 (65%) 3.0 s/step ETA 21s")
    assert lines[-1].startswith("sft: step 20/20 (100%)") and len(lines) == 8


def test_fast_loops_print_a_rate_and_postfix_takes_a_dict(monkeypatch):
    c = Clock(0.01)
    monkeypatch.setattr(runlog.time, "perf_counter", c)
    out = io.StringIO()
    bar = LineProgress(range(5), desc="rejection-sample", unit="batch", file=out, interval=3600)
    for _ in bar:
        c.tick()
        bar.set_postfix({"kept": 3, "rate": 0.123456})
    assert out.getvalue() == "rejection-sample: batch 5/5 (100%) 100.0 batch/s ETA 0s kept=3 rate=0.1235\n"


def test_a_loop_left_early_prints_where_it_stopped(clock):
    out = io.StringIO()
    bar = LineProgress(range(10), desc="ppo", unit="it", file=out, interval=3600)
    for step in bar:
        if step == 3:  # e.g. SIGTERM: step 3 never ran
            break
        clock.tick()
    bar.close()
    assert out.getvalue().splitlines() == ["ppo: it 3/10 (30%) 3.0 s/it ETA 21s"]


def test_disabled_and_manual_updates(clock):
    out = io.StringIO()
    bar = LineProgress(range(3), desc="x", file=out, interval=0, disable=True)
    run_loop(bar, clock)
    assert out.getvalue() == ""
    with LineProgress(total=4, desc="y", file=out, interval=3600) as manual:
        manual.update(2)
        manual.update(2)
    assert out.getvalue() == "y: it 4/4 (100%)\n"


def test_on_a_terminal_it_is_tqdm(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(range(3), desc="t", disable=True)
    assert isinstance(bar, tqdm)
    bar.close()


def test_library_bars_are_turned_off_off_a_terminal(monkeypatch):
    from transformers.utils import logging as hf_logging

    def enable():
        with warnings.catch_warnings():  # huggingface_hub may have read HF_HUB_DISABLE_PROGRESS_BARS=1 at import
            warnings.simplefilter("ignore")
            hf_logging.enable_progress_bar()

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    enable()
    try:
        quiet_library_progress()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        enable()
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user asked for them
    quiet_library_progress()
    assert hf_logging.is_progress_bar_enabled()
