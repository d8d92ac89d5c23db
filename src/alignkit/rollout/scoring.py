"""The score phase of the RL recipes (GRPO, PPO): rule-based rewards (or the reward callables a Python
caller passes), an optional trained reward model, and the failure monitor that stops a run when most
rewards fail. Their held-out evaluation is ``alignkit.evaluation.held_out_evaluation``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from alignkit.rollout.types import completion_id_lists


def reward_table(reward_funcs) -> dict:
    """User reward callables -> the ``{name: (fn, weight)}`` table of ``alignkit.rewards.build_rewards``:
    a list (weight 1 each, named by ``__name__``), a ``{name: fn}`` dict, or ``{name: (fn, weight)}``."""
    if isinstance(reward_funcs, Mapping):
        return {k: (v if isinstance(v, tuple) else (v, 1.0)) for k, v in reward_funcs.items()}
    table = {}
    for fn in ([reward_funcs] if callable(reward_funcs) else reward_funcs):
        name = getattr(fn, "__name__", type(fn).__name__)
        table[name if name not in table else f"{name}_{len(table)}"] = (fn, 1.0)
    return table


class Scorer:
    """``scorer(batch, examples, prompts) -> [ScoredSample]``; raises ``RewardFailureError`` when the share
    of failed samples passes ``reward.max_failed_share`` (the run then stops with its summary).

    ``reward.when`` limits components to the rows whose columns equal given values: the rule components
    through ``self.rewards`` (``OnlyWhen`` entries, so the held-out evaluation, which scores with that table,
    applies them too), the reward model through ``model_when`` (only matching rows are forwarded). With
    ``reward_funcs``, the keys of ``when`` must name their table's entries (checked here; the config itself
    checks them against ``reward.weights``), or the function can return None itself where it does not apply."""

    def __init__(self, cfg, *, device: str, reward_funcs=None):
        from alignkit.rewards import RewardFailureMonitor, apply_when, build_rewards

        self.cfg = cfg
        when = getattr(cfg, "when", None) or {}
        has_model = cfg.model is not None
        if reward_funcs is not None:
            self.rewards = apply_when(reward_table(reward_funcs), when, reward_model=has_model)
        else:
            self.rewards = build_rewards(cfg.weights, cfg.options, when, reward_model=has_model)
        self.model_when = when.get("model") if has_model else None
        self.model = None
        if cfg.model is not None:  # a trained reward model (alignkit rm): component "model"
            from alignkit.models.reward_fn import ModelReward

            self.model = ModelReward(cfg.model, device=device, batch_size=cfg.model_batch_size)
        self.monitor = RewardFailureMonitor(cfg.max_failed_share, cfg.failure_window)

    def __call__(self, completions: Sequence[str], completion_ids, response_mask, examples: Sequence[dict],
                 prompts: Sequence) -> list:
        from alignkit import rewards

        scored = rewards.score_with_model(completions, examples, prompts, self.rewards, self.model,
                                          model_weight=self.cfg.model_weight, success_key=self.cfg.success_key,
                                          completion_ids=completion_id_lists(completion_ids, response_mask),
                                          workers=self.cfg.workers, model_when=self.model_when)
        self.monitor.update(scored)
        return scored

    @staticmethod
    def columns(scored) -> tuple[dict[str, list], list]:
        """({component: one value per sample (None: not applicable or failed)}, totals (None where failed)) of
        scored samples: the columns of ``Run.log_samples`` / ``completions.jsonl``."""
        names = list(dict.fromkeys(k for s in scored for k in s.components))
        return {k: [s.components.get(k) for s in scored] for k in names}, [s.total if s.ok else None for s in scored]

    def close(self, failure: Exception | None) -> Exception | None:
        """At the end of the run: the failure that stopped it, or the monitor's verdict on the last window."""
        from alignkit.rewards import RewardFailureError

        if failure is None:
            try:
                self.monitor.close()
            except RewardFailureError as err:
                return err
        return failure
