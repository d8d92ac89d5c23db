"""Healthy ranges of a run's metrics: one ``monitor`` config section and one checker for every recipe.

:class:`HealthMonitor` reads the logged metrics of a step (the one namespace of docs/runs.md: ``train/kl``,
``train/entropy``, ``reward/total``, ``groups/zero_variance``, ``train/skipped``, ``train/loss``,
``train/grad_norm``, ``train/clip_fraction``) and, when the recipe reported them (:meth:`alignkit.infra.run.Run.log_samples`), the
step's sampled completions. A check whose metric a recipe does not log never fires. The checks themselves
are the pure functions of :mod:`alignkit.monitoring`:

- KL to the reference above ``kl_limit``; entropy below ``entropy_floor``; every group all-equal; a skipped
  (non-finite) step;
- the clip fraction outside ``clip_band`` when the policy takes more than one optimizer step per batch
  (``train/optimizer_steps`` when logged, i.e. PPO's epochs x minibatches, else ``loss.mu``; with one step any
  clipping is a bug): :func:`~alignkit.monitoring.clip_fraction_warning`;
- repetition, distinct-2, "thank you thank you" loops and gibberish in the sampled completions
  (``text_checks``; the ``text/...`` metrics are logged too): :func:`~alignkit.monitoring.text_health`;
- a reward more than ``spike_k`` std from its last ``spike_window`` steps:
  :func:`~alignkit.monitoring.reward_spike_warning`;
- the reward rising while the entropy collapses over ``hacking_window`` steps (GRPO and PPO):
  :func:`~alignkit.monitoring.reward_hacking_warning`.

It keeps the short histories these need (``state_dict``: resumed with the run).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import AliasChoices, Field

from alignkit import monitoring
from alignkit.config import Section


class MonitorSection(Section):
    kl_limit: float = Field(0.1, gt=0, validation_alias=AliasChoices("kl_limit", "kl_alarm"),
                            description="warn when the KL to the reference passes this (the lecture's alarm: 0.05; "
                            "'kl_alarm' is accepted as its old name)")
    entropy_floor: float = Field(0.05, ge=0, description="warn when the mean token entropy falls below this")
    hacking_window: int = Field(10, gt=0, description="reward-hacking check: compare with this many steps ago")
    entropy_drop: float = Field(0.5, gt=0, lt=1, description="reward-hacking check: warn if reward rose while "
                                "entropy fell below this share")
    clip_band: tuple[float, float] = Field(monitoring.CLIP_BAND, description="healthy clip fraction [low, high] "
                                           "when there is more than one optimizer step per batch (lecture: 10-30%)")
    text_checks: bool = Field(True, description="repetition / distinct-2 / loop / gibberish checks on the sampled "
                              "completions (logs text/... metrics)")
    spike_k: float = Field(3.0, gt=0, description="reward-spike check: warn beyond this many std of the window")
    spike_window: int = Field(20, ge=2, description="reward-spike check: steps in the window (needs 5)")


def health_warnings(m: dict, cfg: MonitorSection, history: list | None = None, *, mu: int | None = None) -> list[str]:
    """Lines for metrics outside their healthy range; ``history`` holds [reward, entropy] of past steps;
    ``mu``: optimizer steps per batch of samples (the clip band's check; None: skipped)."""
    out = []
    if m.get("train/kl", 0.0) > cfg.kl_limit:
        out.append(f"KL to the reference {m['train/kl']:.4f} > {cfg.kl_limit}: the policy is drifting "
                   "(monitor.kl_limit, the lecture's alarm)")
    if "train/entropy" in m and m["train/entropy"] < cfg.entropy_floor:
        out.append(f"entropy {m['train/entropy']:.4f} < {cfg.entropy_floor}: collapse (samples nearly identical)")
    if m.get("groups/zero_variance", 0.0) >= 1.0:
        out.append("every group has all-equal rewards: no learning signal this step")
    if m.get("train/skipped"):
        loss, norm = m.get("train/loss"), m.get("train/grad_norm")
        out.append(f"non-finite loss or gradient norm (loss={loss}, grad_norm={norm}): the optimizer step was skipped")
    # the band is for an update that ran its course: a trust-region stop (PPO loss.kl_stop) ends it on purpose
    if mu is not None and m.get("train/clip_fraction") is not None and not m.get("train/early_stopped"):
        field = "loss.epochs" if "train/optimizer_steps" in m else "loss.mu"  # PPO: epochs x minibatches
        out.append(monitoring.clip_fraction_warning(m["train/clip_fraction"], mu, band=tuple(cfg.clip_band),
                                                    mu_field=field))
    if "reward/total" in m and "train/entropy" in m:
        out.append(monitoring.reward_hacking_warning(history or [], m["reward/total"], m["train/entropy"],
                                                     window=cfg.hacking_window, entropy_drop=cfg.entropy_drop))
    return [line for line in out if line]


class HealthMonitor:
    """:func:`health_warnings`, the text checks and the reward-spike check, with the histories they need
    (resumable)."""

    def __init__(self, cfg: MonitorSection, *, mu: int | None = None):
        self.cfg, self.mu = cfg, mu
        self.history: list[list[float]] = []   # [reward, entropy] per step: the hacking check
        self.rewards: list[float] = []         # reward/total per step: the spike check

    def check(self, metrics: dict, texts: Sequence[str] | None = None) -> list[str]:
        """Warnings for this step's ``metrics``; adds the ``text/...`` metrics of ``texts`` to them."""
        mu = int(metrics["train/optimizer_steps"]) if "train/optimizer_steps" in metrics else self.mu
        warnings = health_warnings(metrics, self.cfg, self.history, mu=mu)
        if texts is not None and self.cfg.text_checks:
            text_metrics, text_warnings = monitoring.text_health(list(texts))
            metrics.update(text_metrics)
            warnings += text_warnings
        if "reward/total" in metrics:
            spike = monitoring.reward_spike_warning(self.rewards, metrics["reward/total"], k=self.cfg.spike_k)
            warnings += [spike] if spike else []
            self.rewards = (self.rewards + [metrics["reward/total"]])[-self.cfg.spike_window:]
        if "train/entropy" in metrics:
            point = [metrics.get("reward/total", 0.0), metrics["train/entropy"]]
            self.history = (self.history + [point])[-self.cfg.hacking_window:]
        return warnings

    def state_dict(self) -> dict:
        return {"history": self.history, "rewards": self.rewards}

    def load_state_dict(self, state: dict) -> None:
        self.history = [list(x) for x in state["history"]]
        self.rewards = list(state.get("rewards", []))
