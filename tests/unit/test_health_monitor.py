"""infra/monitor.py wires alignkit.monitoring's pure checks into every recipe's lifecycle: the clip band
(with mu from ``train/optimizer_steps`` or ``loss.mu``), the text checks on the step's completions, the reward
spike and the hacking alarm, with resumable histories; hand-made metrics."""

from alignkit.infra.monitor import HealthMonitor, MonitorSection, health_warnings


def test_clip_band_applies_only_with_more_than_one_update_per_batch():
    cfg = MonitorSection()
    assert health_warnings({"train/clip_fraction": 0.0}, cfg, mu=1) == []
    assert "old_logprobs are not the current policy's" in health_warnings({"train/clip_fraction": 0.01}, cfg, mu=1)[0]
    assert "> 0.30 with mu=8" in health_warnings({"train/clip_fraction": 0.45}, cfg, mu=8)[0]
    assert health_warnings({"train/clip_fraction": 0.2}, cfg, mu=8) == []
    assert health_warnings({"train/clip_fraction": 0.45}, cfg) == []  # mu unknown: no band
    mon = HealthMonitor(cfg, mu=1)  # PPO: the logged optimizer_steps wins over loss.mu
    warning = mon.check({"train/clip_fraction": 0.01, "train/optimizer_steps": 16})[0]
    assert "< 0.10 with mu=16" in warning and "lower loss.epochs" in warning  # PPO's knob, not GRPO's loss.mu
    # a trust-region stop (PPO loss.kl_stop) ends the update on purpose: no band
    assert mon.check({"train/clip_fraction": 0.01, "train/optimizer_steps": 2, "train/early_stopped": 1}) == []


def test_text_checks_add_metrics_and_warn_on_a_loop():
    mon = HealthMonitor(MonitorSection())
    m = {}
    warnings = mon.check(m, ["thank you " * 12] * 4)
    assert m["text/collapsed_share"] == 1.0 and any("loop on one phrase" in w for w in warnings)
    m2 = {}
    assert mon.check(m2) == [] and "text/collapsed_share" not in m2  # no completions reported: no text check
    off = HealthMonitor(MonitorSection(text_checks=False))
    assert off.check({}, ["thank you " * 12]) == []


def test_reward_spike_after_a_steady_window_and_resume():
    mon = HealthMonitor(MonitorSection(spike_window=6))
    for r in [0.5, 0.6, 0.5, 0.6, 0.5, 0.6]:
        assert mon.check({"reward/total": r}) == []
    again = HealthMonitor(MonitorSection(spike_window=6))
    again.load_state_dict(mon.state_dict())
    w = again.check({"reward/total": 0.9})  # mean 0.55, std 0.05: 7 std up
    assert len(w) == 1 and "jumped 7.0 std" in w[0]


def test_hacking_alarm_and_skipped_steps_in_the_train_namespace():
    cfg = MonitorSection(hacking_window=2)
    mon = HealthMonitor(cfg)
    mon.check({"reward/total": 0.2, "train/entropy": 1.0})
    mon.check({"reward/total": 0.3, "train/entropy": 0.9})
    assert any("possible reward hacking" in w for w in mon.check({"reward/total": 0.8, "train/entropy": 0.3}))
    assert "step was skipped" in health_warnings({"train/skipped": 1, "train/loss": float("nan")}, cfg)[0]
    assert health_warnings({"skipped": 1, "kl": 9.0, "entropy": 0.0}, cfg) == []  # bare names are no metrics of ours
