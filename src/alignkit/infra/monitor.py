"""Healthy ranges of a run's metrics: one ``monitor`` config section and one checker for every recipe.

:class:`HealthMonitor` reads the logged metrics of a step (names of docs/metrics in ``infra/run.py``:
``kl``, ``entropy``, ``reward/total``, ``groups/zero_variance``, ``skipped``, ``loss``, ``grad_norm``); a
check whose metric a recipe does not log never fires. It keeps the last ``hacking_window`` steps' reward and
entropy (``state_dict``: resumed with the run) for the reward-hacking check.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field

from alignkit.config import Section


class MonitorSection(Section):
    kl_limit: float = Field(0.1, gt=0, validation_alias=AliasChoices("kl_limit", "kl_alarm"),
                            description="warn when the KL to the reference passes this (the lecture's alarm: 0.05; "
                            "'kl_alarm' is accepted as its old name)")
    entropy_floor: float = Field(0.05, ge=0, description="warn when the mean token entropy falls below this")
    hacking_window: int = Field(10, gt=0, description="reward-hacking check: compare with this many steps ago")
    entropy_drop: float = Field(0.5, gt=0, lt=1, description="reward-hacking check: warn if reward rose while "
                                "entropy fell below this share")


def health_warnings(m: dict, cfg: MonitorSection, history: list | None = None) -> list[str]:
    """Lines for metrics outside their healthy range; ``history`` holds [reward, entropy] of past steps."""
    out = []
    if m.get("kl", 0.0) > cfg.kl_limit:
        out.append(f"KL to the reference {m['kl']:.4f} > {cfg.kl_limit}: the policy is drifting (monitor.kl_limit, "
                   "the lecture's alarm)")
    if "entropy" in m and m["entropy"] < cfg.entropy_floor:
        out.append(f"entropy {m['entropy']:.4f} < {cfg.entropy_floor}: collapse (samples nearly identical)")
    if m.get("groups/zero_variance", 0.0) >= 1.0:
        out.append("every group has all-equal rewards: no learning signal this step")
    if m.get("skipped"):
        out.append(f"non-finite loss or gradient norm (loss={m.get('loss')}, grad_norm={m.get('grad_norm')}): "
                   "the optimizer step was skipped")
    history = history or []
    if len(history) >= cfg.hacking_window and "reward/total" in m and "entropy" in m:
        reward0, entropy0 = history[-cfg.hacking_window]
        if m["reward/total"] > reward0 and m["entropy"] < cfg.entropy_drop * entropy0:
            out.append(f"reward rose ({reward0:.3f} -> {m['reward/total']:.3f}) while entropy collapsed ({entropy0:.3f} "
                       f"-> {m['entropy']:.3f}) over {cfg.hacking_window} steps: possible reward hacking")
    return out


class HealthMonitor:
    """:func:`health_warnings` with the history the reward-hacking check needs (resumable)."""

    def __init__(self, cfg: MonitorSection):
        self.cfg = cfg
        self.history: list[list[float]] = []

    def check(self, metrics: dict) -> list[str]:
        warnings = health_warnings(metrics, self.cfg, self.history)
        if "entropy" in metrics:
            point = [metrics.get("reward/total", 0.0), metrics["entropy"]]
            self.history = (self.history + [point])[-self.cfg.hacking_window:]
        return warnings

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = [list(x) for x in state["history"]]
