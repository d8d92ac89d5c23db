"""Reward lookup and the scorer that training and evaluation share (DESIGN.md style example 8).

``resolve_reward(spec)``: a built-in name (``BUILTIN_REWARDS``) or ``"package.module:function"`` (imported
with importlib; any error names the spec and what is wrong). ``build_rewards`` turns a config's
``{spec: weight}`` (plus per-reward keyword options) into the ``{name: (fn, weight)}`` map the scorer takes.

``score`` calls every component on ``(completion, **example)`` and sums them with ``combine``. A component
that raises (``RewardError`` from a verifier or the sandbox, or any exception from a user function), returns
a non-number, NaN or inf makes the sample *failed*: ``ScoredSample.total`` is None, ``failed`` names the
component and ``error`` says why; the failure is logged with the example index. The caller counts failed
samples (``reward_metrics``) and leaves them out of the loss: a failure is never a reward of 0.
Task success is kept apart from the shaped reward: ``success`` is whether the component named by
``success_key`` (default "accuracy") is 1.0, None when that component is absent or failed.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from alignkit.rewards.accuracy import accuracy_reward, digit_match_reward
from alignkit.rewards.code import code_reward
from alignkit.rewards.combine import combine
from alignkit.rewards.format import format_reward, format_reward_soft
from alignkit.rewards.language import language_consistency_reward
from alignkit.rewards.length import length_penalty

logger = logging.getLogger(__name__)

RewardFn = Callable[..., float]
BUILTIN_REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "digits": digit_match_reward,
    "format": format_reward,
    "format_soft": format_reward_soft,
    "language": language_consistency_reward,
    "length": length_penalty,
    "code": code_reward,
}
_SANDBOXED = {code_reward}  # run in threads by score_batch (they wait on a subprocess)


def resolve_reward(spec: str) -> RewardFn:
    """The reward function for a built-in name or a ``"package.module:function"`` spec.

    >>> resolve_reward("accuracy").__name__, resolve_reward("alignkit.rewards.format:format_reward").__name__
    ('accuracy_reward', 'format_reward')
    """
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"unknown reward {spec!r}: use a built-in name ({', '.join(BUILTIN_REWARDS)}) "
                         "or 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {spec!r}: {attr!r} is a {type(obj).__name__}, not a function")
    return obj


def build_rewards(weights: Mapping[str, float], options: Mapping[str, Mapping[str, object]] | None = None
                  ) -> dict[str, tuple[RewardFn, float]]:
    """``{spec: weight}`` -> ``{spec: (fn, weight)}``; ``options[spec]`` are keyword arguments bound to that
    reward (a field of the example with the same name wins over them). Weight 0 logs a component only.

    >>> rewards = build_rewards({"accuracy": 1.0, "language": 0.1}, {"language": {"language": "zh"}})
    >>> rewards["language"][0].keywords, rewards["language"][1]
    ({'language': 'zh'}, 0.1)
    """
    options = options or {}
    unknown = sorted(set(options) - set(weights))
    if unknown:
        raise ValueError(f"options given for rewards without a weight: {', '.join(unknown)}")
    built = {}
    for spec, weight in weights.items():
        fn = resolve_reward(spec)
        built[spec] = (functools.partial(fn, **options[spec]) if spec in options else fn, float(weight))
    return built


@dataclass(frozen=True)
class ScoredSample:
    """One completion's score. ``total`` is None iff a component failed (then ``failed``/``error`` say which
    and why, and ``components`` holds those computed before it)."""

    total: float | None
    components: dict[str, float] = field(default_factory=dict)
    success: bool | None = None
    failed: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None


def _call(fn: RewardFn, completion: str, example: Mapping[str, object]) -> float | BaseException:
    try:
        value = fn(completion, **example)
    except Exception as e:  # a verifier failure or a bug in a user reward: counted, never a 0
        return e
    if not isinstance(value, numbers.Real):
        return TypeError(f"returned {type(value).__name__} {value!r}, not a float")
    if not math.isfinite(value):
        return ValueError(f"returned a non-finite value {value}")
    return float(value)


def _score(completion: str, example: Mapping[str, object], rewards: Mapping[str, tuple[RewardFn, float]],
           success_key: str, index: int | None, done: Mapping[str, float | BaseException]) -> ScoredSample:
    components: dict[str, float] = {}
    for name, (fn, _) in rewards.items():
        value = done[name] if name in done else _call(fn, completion, example)
        if isinstance(value, BaseException):
            error = f"{type(value).__name__}: {value}"
            logger.warning("reward %r failed on example %s: %s", name, index, error)
            return ScoredSample(None, components, None, name, error)
        components[name] = value
    total = combine(components, {name: weight for name, (_, weight) in rewards.items()})
    success = components[success_key] == 1.0 if success_key in components else None
    return ScoredSample(total, components, success)


def score(completion: str, example: Mapping[str, object], rewards: Mapping[str, tuple[RewardFn, float]], *,
          success_key: str = "accuracy", index: int | None = None) -> ScoredSample:
    """Score one completion with every reward in ``rewards`` (``{name: (fn, weight)}``).

    >>> rewards = build_rewards({"accuracy": 1.0, "format": 0.5})
    >>> score("<think>6*7</think><answer>42</answer>", {"answer": "42"}, rewards)
    ScoredSample(total=1.5, components={'accuracy': 1.0, 'format': 1.0}, success=True, failed=None, error=None)
    >>> score("42", {}, rewards).failed  # no "answer" field: accuracy cannot be computed
    'accuracy'
    """
    return _score(completion, example, rewards, success_key, index, {})


def score_batch(completions: Sequence[str], examples: Sequence[Mapping[str, object]],
                rewards: Mapping[str, tuple[RewardFn, float]], *, success_key: str = "accuracy",
                workers: int = 1) -> list[ScoredSample]:
    """``score`` over a batch, rows aligned. Sandboxed rewards (code) run in ``workers`` threads; the others
    run in the calling thread (math-verify's timeouts need the main thread), so results do not depend on
    ``workers``."""
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    sandboxed = [name for name, (fn, _) in rewards.items() if getattr(fn, "func", fn) in _SANDBOXED]
    done: list[dict[str, float | BaseException]] = [{} for _ in completions]
    if sandboxed and workers > 1:
        jobs = [(i, name) for i in range(len(completions)) for name in sandboxed]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            values = pool.map(lambda job: _call(rewards[job[1]][0], completions[job[0]], examples[job[0]]), jobs)
            for (i, name), value in zip(jobs, values):
                done[i][name] = value
    return [_score(c, e, rewards, success_key, i, d) for i, (c, e, d) in enumerate(zip(completions, examples, done))]


def score_with_model(completions: Sequence[str], examples: Sequence[Mapping[str, object]], prompts: Sequence,
                     rewards: Mapping[str, tuple[RewardFn, float]], reward_model=None, *, model_weight: float = 1.0,
                     success_key: str = "accuracy", workers: int = 1) -> list[ScoredSample]:
    """``score_batch`` plus a trained reward model (``alignkit.rewards.ModelReward``, batched forwards) as the
    component ``model``: total += model_weight * score. ``prompts[i]`` is the prompt of ``completions[i]``
    (the reward model reads prompt + completion). A failed sample stays failed (its model score is dropped)."""
    scored = score_batch(completions, examples, rewards, success_key=success_key, workers=workers)
    if reward_model is None:
        return scored
    rm = reward_model.score_batch(prompts, completions)
    return [ScoredSample(s.total + model_weight * r, {**s.components, "model": r}, s.success) if s.ok else s
            for s, r in zip(scored, rm)]


def reward_metrics(samples: Sequence[ScoredSample]) -> dict[str, float]:
    """Metrics to log: mean and (population) std of each component and of the total over scored samples,
    failures per component, success rate over samples with a success value.

    >>> reward_metrics([ScoredSample(2.0, {"accuracy": 1.0, "format": 1.0}, True),
    ...                 ScoredSample(1.0, {"accuracy": 0.0, "format": 1.0}, False),
    ...                 ScoredSample(None, {"accuracy": 0.0}, None, "code", "SandboxError: ...")])  # doctest: +NORMALIZE_WHITESPACE
    {'reward/total': 1.5, 'reward/total/std': 0.5, 'reward/accuracy': 0.5, 'reward/accuracy/std': 0.5,
     'reward/format': 1.0, 'reward/format/std': 0.0, 'reward/failed': 1.0, 'reward/failed/code': 1.0,
     'reward/success_rate': 0.5}
    """
    scored = [s for s in samples if s.ok]
    metrics: dict[str, float] = {}

    def mean_std(name: str, values: list[float]) -> None:
        mean = sum(values) / len(values)
        metrics[f"reward/{name}"] = mean
        metrics[f"reward/{name}/std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))

    if scored:
        mean_std("total", [s.total for s in scored])
        for name in scored[0].components:
            mean_std(name, [s.components[name] for s in scored])
    metrics["reward/failed"] = float(len(samples) - len(scored))
    for s in samples:
        if s.failed is not None:
            metrics[f"reward/failed/{s.failed}"] = metrics.get(f"reward/failed/{s.failed}", 0.0) + 1.0
    judged = [s.success for s in scored if s.success is not None]
    if judged:
        metrics["reward/success_rate"] = sum(judged) / len(judged)
    return metrics
