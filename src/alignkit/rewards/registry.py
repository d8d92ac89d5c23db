"""Reward lookup and the scorer that training and evaluation share (docs/design.md, style example 8).

``resolve_reward(spec)``: a built-in name (``BUILTIN_REWARDS``) or ``"package.module:function"`` (imported
with importlib; the module must be importable from the current working directory or a directory on
PYTHONPATH; any error names the spec and what is wrong). ``build_rewards`` turns a config's
``{spec: weight}`` (plus per-reward keyword options) into the ``{name: (fn, weight)}`` map the scorer takes.

Two forms of reward function; the signature decides (``is_batched``):

- per-sample (alignkit's): ``fn(completion: str, **example_fields) -> float | None``. It also receives
  ``prompt=`` and ``completion_ids=`` when the scorer has them and the function accepts them (a parameter of
  that name, or ``**kwargs``; the built-ins take ``**_``); they win over an example field of the same name.
- batched (TRL's): a function with parameters named ``prompts`` and ``completions`` (plural), called once
  per batch as ``fn(prompts=[...], completions=[...], completion_ids=[...], **columns) -> list[float | None]``
  where ``columns`` maps each example field to its list of values (None where an example lacks it); a
  function without ``**kwargs`` gets only the columns it names. When every prompt is a list of chat messages,
  each completion is given as ``[{"role": "assistant", "content": text}]`` (TRL's conversational form).

Values: a real number (bool counts as 0/1; numpy scalars are fine) is the reward. ``None`` means "not
applicable" (TRL's convention): that component is left out of the sample's total (weight and all), the sample
is not failed; when every component of a sample is None the sample *is* failed as "no_applicable_reward" (TRL
would give NaN, then 0 through nansum: a silent 0 is what alignkit refuses).

A component that raises (``RewardError`` from a verifier or the sandbox, or any exception from a user
function), returns a non-number, NaN, inf, or a value beyond float32's range (|r| > 3.4e38: the loss is
computed in float32) makes the sample *failed*: ``ScoredSample.total`` is None, ``failed`` names the component
and ``error`` says why; the failure is logged with the example index. A batched function that raises or
returns a list of the wrong length fails every sample of the batch. The caller counts failed samples
(``reward_metrics``, ``RewardFailureMonitor``) and leaves them out of the loss: a failure is never a reward of 0.
Task success is kept apart from the shaped reward: ``success`` is whether the component named by
``success_key`` (default "accuracy") is 1.0, None when that component is absent, None or failed.

Conditional components (``reward.when``; ``apply_when``, ``OnlyWhen``): in a prompt set that mixes kinds of
rows, a component may be limited to the rows whose columns equal given values, ``{"accuracy": {"kind":
"task"}}``. On every other row the component is None ("not applicable", as above) and its function is not
called at all: a per-sample function is skipped, a batched one is called once with only the matching rows
(their prompts, completions, ids and columns) and its values are put back in place, and the trained reward
model (``score_with_model(..., model_when=...)``) forwards only the matching rows. A row matches when it has
every named column and each value equals (``==``, no conversion: the string "1" does not match 1) the given
one. ``success`` is then None on the rows where the ``success_key`` component does not apply, so
``reward/success_rate`` is measured on the rows it applies to.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
import numbers
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from alignkit.rewards.accuracy import accuracy_reward, digit_match_reward
from alignkit.rewards.code import code_reward
from alignkit.rewards.combine import combine
from alignkit.rewards.errors import RewardError
from alignkit.rewards.format import format_reward, format_reward_soft
from alignkit.rewards.language import language_consistency_reward
from alignkit.rewards.length import length_penalty
from alignkit.rewards.steps import step_reward

logger = logging.getLogger(__name__)

RewardFn = Callable[..., float | None]
BUILTIN_REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "digits": digit_match_reward,
    "format": format_reward,
    "format_soft": format_reward_soft,
    "language": language_consistency_reward,
    "length": length_penalty,
    "code": code_reward,
    "steps": step_reward,
}
_SANDBOXED = (code_reward,)  # run in threads by score_batch (they wait on a subprocess); or fn.sandboxed = True
NO_APPLICABLE = "no_applicable_reward"
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _import_module(spec: str, module_name: str):
    """Import ``module_name``; if it is not found and the working directory is not on sys.path (console
    scripts such as ``alignkit`` leave it off; ``python -m`` puts it on), append the working directory and retry."""
    cwd = os.getcwd()
    for attempt in (0, 1):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and not (module_name == e.name or module_name.startswith(e.name + ".")):
                raise ValueError(f"reward {spec!r}: cannot import module {module_name!r}: it imports {e.name!r}, "
                                 f"which is not installed") from e
            if attempt or cwd in sys.path or "" in sys.path:
                raise ValueError(f"reward {spec!r}: cannot import module {module_name!r}: no such module; it must "
                                 f"be importable from the current working directory ({cwd}) or a directory on "
                                 "PYTHONPATH") from e
            sys.path.append(cwd)
            logger.info("reward %r: importing %r from the working directory %s", spec, module_name, cwd)
        except Exception as e:  # a syntax error or an exception while the module runs
            raise ValueError(f"reward {spec!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}") from e


def resolve_reward(spec: str) -> RewardFn:
    """The reward function for a built-in name or a ``"package.module:function"`` spec (``function`` may be
    dotted: ``Class.method``). The module is imported from the current working directory or PYTHONPATH.

    >>> resolve_reward("accuracy").__name__, resolve_reward("alignkit.rewards.format:format_reward").__name__
    ('accuracy_reward', 'format_reward')
    """
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"unknown reward {spec!r}: use a built-in name ({', '.join(BUILTIN_REWARDS)}) "
                         "or 'package.module:function'")
    obj = _import_module(spec, module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {spec!r}: {attr!r} is a {type(obj).__name__}, not a function")
    return obj


def build_rewards(weights: Mapping[str, float], options: Mapping[str, Mapping[str, object]] | None = None,
                  when: Mapping[str, Mapping[str, object]] | None = None, *, reward_model: bool = False
                  ) -> dict[str, tuple[RewardFn, float]]:
    """``{spec: weight}`` -> ``{spec: (fn, weight)}``; ``options[spec]`` are keyword arguments bound to that
    reward (a field of the example with the same name wins over them). Weight 0 logs a component only.
    ``when[spec]`` limits that reward to the rows whose columns equal the given values (``apply_when``); the
    key "model" (the trained reward model, which is not in this table) is allowed only with
    ``reward_model=True`` and is left to ``score_with_model(..., model_when=...)``.

    >>> rewards = build_rewards({"accuracy": 1.0, "language": 0.1}, {"language": {"language": "zh"}})
    >>> rewards["language"][0].keywords, rewards["language"][1]
    ({'language': 'zh'}, 0.1)
    >>> build_rewards({"accuracy": 1.0}, when={"accuracy": {"kind": "task"}})["accuracy"][0].when
    {'kind': 'task'}
    """
    options = options or {}
    unknown = sorted(set(options) - set(weights))
    if unknown:
        raise ValueError(f"options given for rewards without a weight: {', '.join(unknown)}")
    built = {}
    for spec, weight in weights.items():
        fn = resolve_reward(spec)
        built[spec] = (functools.partial(fn, **options[spec]) if spec in options else fn, float(weight))
    return apply_when(built, when, reward_model=reward_model) if when else built


MODEL = "model"  # the component name of the trained reward model (score_with_model)


class OnlyWhen:
    """A reward function limited to the examples whose columns equal ``when`` (``{column: value}``): the
    scorer (``score_batch``) gives the component None ("not applicable") on every other example without
    calling ``fn``. Calling an ``OnlyWhen`` directly calls ``fn`` (the condition is the scorer's business).
    Built by ``apply_when`` / ``build_rewards(..., when=...)``."""

    def __init__(self, fn: RewardFn, when: Mapping[str, object]):
        self.fn, self.when = fn, dict(when)
        self.__wrapped__ = fn  # inspect.signature (hence is_batched) sees fn's parameters
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"OnlyWhen({self.fn!r}, {self.when!r})"


def matches(example: Mapping[str, object], when: Mapping[str, object] | None) -> bool:
    """Whether ``example`` has every column of ``when`` with an equal value (``==``: no type conversion, so a
    column holding the string "1" does not match 1; a value that cannot be compared does not match). No
    condition (None or {}) matches every example.

    >>> matches({"kind": "task", "answer": "4"}, {"kind": "task"}), matches({"answer": "4"}, {"kind": "task"})
    (True, False)
    >>> matches({"level": "1"}, {"level": 1}), matches({"level": 1}, {"level": 1})
    (False, True)
    """
    for column, value in (when or {}).items():
        if column not in example:
            return False
        try:
            if not bool(example[column] == value):
                return False
        except Exception:  # e.g. an array column: ambiguous truth value
            return False
    return True


def check_when(when: Mapping[str, object], components: Sequence[str], *, reward_model: bool = False) -> None:
    """ValueError (naming the key and the known components) unless every key of ``when`` names one of
    ``components`` (or "model" where a trained reward model scores) and every condition is a non-empty
    ``{column: value}`` mapping."""
    known = list(components) + ([MODEL] if reward_model and MODEL not in components else [])
    for key, condition in when.items():
        if key not in known:
            hint = (" ('model' is the trained reward model: set reward.model)" if key == MODEL else "")
            raise ValueError(f"reward.when.{key}: {key!r} is not a reward component{hint}; the components are: "
                             f"{', '.join(known) or '(none)'}")
        if not isinstance(condition, Mapping):
            raise ValueError(f"reward.when.{key} must be a mapping {{column: value}} (e.g. {{kind: task}}), got "
                             f"{type(condition).__name__} {condition!r}")
        if not condition:
            raise ValueError(f"reward.when.{key} is empty: give at least one column: value (or leave the "
                             "component out of reward.when to apply it to every row)")
        bad = [c for c in condition if not isinstance(c, str)]
        if bad:
            raise ValueError(f"reward.when.{key}: column names must be strings, got {bad[0]!r}")


def apply_when(rewards: Mapping[str, tuple[RewardFn, float]], when: Mapping[str, Mapping[str, object]] | None,
               *, reward_model: bool = False) -> dict[str, tuple[RewardFn, float]]:
    """The table ``rewards`` with each component named in ``when`` limited to its rows (``OnlyWhen``); checked
    by ``check_when`` (the key "model" is allowed with ``reward_model=True`` and skipped here: the reward
    model is not in the table). A component already limited gets the new condition instead.

    >>> table = apply_when(build_rewards({"accuracy": 1.0}), {"accuracy": {"kind": "task"}})
    >>> [s.components for s in score_batch(["<answer>4</answer>"] * 2, [{"kind": "task", "answer": "4"},
    ...                                    {"kind": "chat", "answer": "4"}], table)]
    [{'accuracy': 1.0}, {'accuracy': None}]
    """
    when = when or {}
    check_when(when, list(rewards), reward_model=reward_model)
    out = dict(rewards)
    for name, condition in when.items():
        if name in out:
            fn, weight = out[name]
            out[name] = (OnlyWhen(_unwrap(fn), condition), weight)
    return out


def _unwrap(fn: RewardFn) -> RewardFn:
    return fn.fn if isinstance(fn, OnlyWhen) else fn


@dataclass(frozen=True)
class ScoredSample:
    """One completion's score. ``total`` is None iff the sample failed (then ``failed``/``error`` say which
    component and why, and ``components`` holds those computed before it). A component value of None means
    "not applicable" (left out of ``total``)."""

    total: float | None
    components: dict[str, float | None] = field(default_factory=dict)
    success: bool | None = None
    failed: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None


def _parameters(fn: RewardFn) -> tuple[set[str], bool] | None:
    """(parameter names, takes **kwargs) of ``fn``; None when Python cannot tell (some builtins)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return {p.name for p in params}, any(p.kind is p.VAR_KEYWORD for p in params)


_Params = tuple[set[str], bool] | None


def is_batched(fn: RewardFn) -> bool:
    """Whether ``fn`` is TRL's batched form: its signature has parameters named ``prompts`` and
    ``completions`` (plural). Anything else is alignkit's per-sample form ``fn(completion, **fields)``.

    >>> is_batched(lambda prompts, completions, **kw: [1.0] * len(completions)), is_batched(accuracy_reward)
    (True, False)
    """
    return _takes_batch(_parameters(fn))


def _takes_batch(found: _Params) -> bool:
    return found is not None and {"prompts", "completions"} <= found[0]


def _accepted(found: _Params, extras: Mapping[str, object]) -> dict[str, object]:
    """The entries of ``extras`` that a function with parameters ``found`` takes (by name, or all of them
    through ``**kwargs``)."""
    if found is None:
        return {}
    names, var_kw = found
    return {k: v for k, v in extras.items() if var_kw or k in names}


def _check(value: object) -> float | None | BaseException:
    """A reward's return value -> float, None (not applicable), or the error that fails the sample."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, numbers.Real):
        hint = " (use .item())" if hasattr(value, "item") else ""
        return TypeError(f"returned {type(value).__name__} {value!r}, not a float{hint}")
    try:
        value = float(value)
    except OverflowError:
        return OverflowError("returned an integer beyond float range")
    if not math.isfinite(value):
        return ValueError(f"returned a non-finite value {value}")
    if abs(value) > FLOAT32_MAX:
        return OverflowError(f"returned {value:g}, beyond float32's range (|r| <= {FLOAT32_MAX:.3g})")
    return value


def _config_only(fn: RewardFn) -> frozenset:
    """The keyword arguments ``fn`` takes only from the reward options (its ``config_only`` attribute: the code
    reward's ceilings and isolation policy), through ``OnlyWhen`` and ``functools.partial``."""
    fn = _unwrap(fn)
    return frozenset(getattr(getattr(fn, "func", fn), "config_only", ()))


def _row_sets_config_only(fn: RewardFn, keys) -> BaseException | None:
    """A data row's field named like a config-only option would override it (a field wins over an option of the
    same name): refused, naming the fields, instead of letting a row raise a ceiling or weaken the sandbox."""
    blocked = sorted(_config_only(fn) & set(keys))
    if not blocked:
        return None
    return RewardError(f"the data row sets {', '.join(blocked)}: for this reward those come only from the reward "
                       "options (reward.options), never from a row; rename or drop the column")


def _call(fn: RewardFn, completion: str, example: Mapping[str, object], extras: Mapping[str, object]
          ) -> float | None | BaseException:
    refused = _row_sets_config_only(fn, example)
    if refused is not None:
        return refused
    try:
        value = fn(completion, **{**example, **extras})
    except Exception as e:  # a verifier failure or a bug in a user reward: counted, never a 0
        return e
    return _check(value)


def _call_batched(fn: RewardFn, completions: Sequence[str], examples: Sequence[Mapping[str, object]],
                  prompts: Sequence, completion_ids: Sequence | None) -> list[float | None | BaseException]:
    """One call of a TRL-style reward over the batch -> one checked value (or error) per sample."""
    n = len(completions)
    keys = [k for k in dict.fromkeys(k for e in examples for k in e)
            if k not in ("prompts", "completions", "completion_ids")]
    columns = {k: [e.get(k) for e in examples] for k in keys}
    conversational = n > 0 and all(isinstance(p, list) and all(isinstance(m, dict) for m in p) for p in prompts)
    given = [[{"role": "assistant", "content": c}] for c in completions] if conversational else list(completions)
    ids = {"completion_ids": None if completion_ids is None else list(completion_ids)}
    found = _parameters(fn)
    refused = _row_sets_config_only(fn, columns)
    if refused is not None:
        return [refused] * n
    try:
        values = fn(**_accepted(found, columns), **_accepted(found, ids), prompts=list(prompts), completions=given)
        if hasattr(values, "tolist"):
            values = values.tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != n:
            size = f"length {len(values)}" if isinstance(values, Sequence) else type(values).__name__
            raise TypeError(f"batched reward returned {size}, expected a list of {n} values")
    except Exception as e:  # the whole batch fails for this component
        return [e] * n
    return [_check(v) for v in values]


def _is_sandboxed(fn: RewardFn) -> bool:
    fn = _unwrap(fn)
    base = getattr(fn, "func", fn)
    return any(base is s for s in _SANDBOXED) or bool(getattr(base, "sandboxed", False))


def _extras(prompts: Sequence | None, completion_ids: Sequence | None, i: int) -> dict[str, object]:
    out: dict[str, object] = {}
    if prompts is not None:
        out["prompt"] = prompts[i]
    if completion_ids is not None:
        out["completion_ids"] = completion_ids[i]
    return out


def _score(completion: str, example: Mapping[str, object], rewards: Mapping[str, tuple[RewardFn, float]],
           success_key: str, index: int | None, done: Mapping[str, float | None | BaseException],
           extras: Mapping[str, object], params: Mapping[str, _Params], allow_none_applicable: bool = False
           ) -> ScoredSample:
    components: dict[str, float | None] = {}
    for name, (fn, _) in rewards.items():
        value = done[name] if name in done else _call(fn, completion, example, _accepted(params[name], extras))
        if isinstance(value, BaseException):
            error = f"{type(value).__name__}: {value}"
            logger.warning("reward %r failed on example %s: %s", name, index, error)
            return ScoredSample(None, components, None, name, error)
        components[name] = value
    if components and all(v is None for v in components.values()) and not allow_none_applicable:
        error = f"every reward returned None (not applicable): {', '.join(components)}"
        logger.warning("no reward applies to example %s: %s", index, error)
        return ScoredSample(None, components, None, NO_APPLICABLE, error)
    total = combine(components, {name: weight for name, (_, weight) in rewards.items()})
    if abs(total) > FLOAT32_MAX:
        return ScoredSample(None, components, None, "total", f"OverflowError: weighted total {total:g} is "
                            "beyond float32's range")
    value = components.get(success_key)
    return ScoredSample(total, components, None if value is None else value == 1.0)


def score(completion: str, example: Mapping[str, object], rewards: Mapping[str, tuple[RewardFn, float]], *,
          success_key: str = "accuracy", index: int | None = None, prompt: object = None,
          completion_ids: Sequence[int] | None = None) -> ScoredSample:
    """Score one completion with every reward in ``rewards`` (``{name: (fn, weight)}``); batched rewards are
    called with a batch of one.

    >>> rewards = build_rewards({"accuracy": 1.0, "format": 0.5})
    >>> score("<think>6*7</think><answer>42</answer>", {"answer": "42"}, rewards)
    ScoredSample(total=1.5, components={'accuracy': 1.0, 'format': 1.0}, success=True, failed=None, error=None)
    >>> score("42", {}, rewards).failed  # no "answer" field: accuracy cannot be computed
    'accuracy'
    """
    return score_batch([completion], [example], rewards, success_key=success_key, workers=1,
                       prompts=None if prompt is None else [prompt],
                       completion_ids=None if completion_ids is None else [completion_ids], _first_index=index)[0]


def _threads(workers: int | None, jobs: int) -> int:
    """``workers`` threads for sandboxed jobs; None: min(8, CPUs), at least 2 when there are several jobs."""
    if workers is None:
        workers = max(min(8, os.cpu_count() or 1), 2 if jobs > 1 else 1)
    return max(1, min(workers, jobs))


def score_batch(completions: Sequence[str], examples: Sequence[Mapping[str, object]],
                rewards: Mapping[str, tuple[RewardFn, float]], *, success_key: str = "accuracy",
                workers: int | None = None, prompts: Sequence | None = None,
                completion_ids: Sequence[Sequence[int]] | None = None, _first_index: int | None = None,
                _allow_none_applicable: bool | Sequence[bool] = False) -> list[ScoredSample]:
    """``score`` over a batch, rows aligned. ``prompts[i]`` (text or chat messages) and ``completion_ids[i]``
    (the response's token ids, no padding) belong to ``completions[i]``; both optional. Batched (TRL-style)
    rewards are called once on the whole batch. Sandboxed rewards (code, or any function with
    ``fn.sandboxed = True``) run in ``workers`` threads -- None: min(8, CPUs), but at least 2 when there are
    several jobs (each waits on a subprocess); the others run in the calling thread (math-verify's timeouts
    need the main thread), so results do not depend on ``workers``.

    A component limited by a condition (``OnlyWhen``, from ``reward.when``) is None on the rows it does not
    match, and its function is not called for them: a batched one is called with only the matching rows (not
    at all when none matches) and its values are scattered back to those rows."""
    n = len(completions)
    for name, seq in (("examples", examples), ("prompts", prompts), ("completion_ids", completion_ids)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{n} completions but {len(seq)} {name}")
    conditions = {name: fn.when for name, (fn, _) in rewards.items() if isinstance(fn, OnlyWhen)}
    rewards = {name: (_unwrap(fn), weight) for name, (fn, weight) in rewards.items()}
    extras = [_extras(prompts, completion_ids, i) for i in range(n)]
    params = {name: _parameters(fn) for name, (fn, _) in rewards.items()}  # inspected once per batch
    batched = {name for name, found in params.items() if _takes_batch(found)}
    done: list[dict[str, float | None | BaseException]] = [{} for _ in completions]
    rows = {name: [i for i in range(n) if name not in conditions or matches(examples[i], conditions[name])]
            for name in rewards}
    for name in conditions:  # not applicable: None, and the function is never called
        for i in sorted(set(range(n)) - set(rows[name])):
            done[i][name] = None
    for name, (fn, _) in rewards.items():
        if name in batched and rows[name]:
            idx = rows[name]
            batch_prompts = [prompts[i] for i in idx] if prompts is not None else [None] * len(idx)
            batch_ids = None if completion_ids is None else [completion_ids[i] for i in idx]
            values = _call_batched(fn, [completions[i] for i in idx], [examples[i] for i in idx], batch_prompts,
                                   batch_ids)
            for i, value in zip(idx, values):
                done[i][name] = value
    sandboxed = [name for name, (fn, _) in rewards.items() if _is_sandboxed(fn) and name not in batched]
    applies = {name: set(rows[name]) for name in sandboxed}
    jobs = [(i, name) for i in range(n) for name in sandboxed if i in applies[name]]
    threads = _threads(workers, len(jobs))
    if jobs and threads > 1:
        def run(job: tuple[int, str]) -> float | None | BaseException:
            i, name = job
            fn = rewards[name][0]
            return _call(fn, completions[i], examples[i], _accepted(params[name], extras[i]))

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for (i, name), value in zip(jobs, pool.map(run, jobs)):
                done[i][name] = value
    base = 0 if _first_index is None else _first_index
    allow = ([bool(_allow_none_applicable)] * n if isinstance(_allow_none_applicable, bool)
             else list(_allow_none_applicable))
    return [_score(completions[i], examples[i], rewards, success_key, base + i, done[i], extras[i], params,
                   allow[i]) for i in range(n)]


def score_with_model(completions: Sequence[str], examples: Sequence[Mapping[str, object]], prompts: Sequence,
                     rewards: Mapping[str, tuple[RewardFn, float]], reward_model=None, *, model_weight: float = 1.0,
                     success_key: str = "accuracy", workers: int | None = None,
                     completion_ids: Sequence[Sequence[int]] | None = None,
                     model_when: Mapping[str, object] | None = None) -> list[ScoredSample]:
    """``score_batch`` (given the prompts) plus a trained reward model (``alignkit.models.reward_fn.ModelReward``,
    batched forwards) as the component ``model``: total += model_weight * score. ``prompts[i]`` is the prompt
    of ``completions[i]`` (the reward model reads prompt + completion). A failed sample stays failed (its model
    score is dropped); a sample where every rule reward returned None is scored by the model alone.

    ``model_when`` (``reward.when.model``, ``{column: value}``): the reward model scores only the rows that
    match (``matches``; only they are forwarded, in one ``score_batch`` call); on the others ``model`` is None
    (not applicable), and a row where the rule rewards are None too fails as no_applicable_reward."""
    if model_when is not None and reward_model is None:
        raise ValueError("reward.when.model is set but there is no reward model (set reward.model)")
    n = len(completions)
    applies = [reward_model is not None and matches(e, model_when) for e in examples]
    scored = score_batch(completions, examples, rewards, success_key=success_key, workers=workers,
                         prompts=prompts, completion_ids=completion_ids, _allow_none_applicable=applies)
    if reward_model is None:
        return scored
    idx = [i for i in range(n) if applies[i]]
    rm = dict(zip(idx, reward_model.score_batch([prompts[i] for i in idx], [completions[i] for i in idx])
                  if idx else []))
    out = []
    for i, s in enumerate(scored):
        if not s.ok:
            out.append(s)
        elif i in rm:
            out.append(ScoredSample(s.total + model_weight * rm[i], {**s.components, MODEL: rm[i]}, s.success))
        elif all(v is None for v in s.components.values()):  # only possible with no rule components at all
            error = "every reward returned None (not applicable): reward.when.model does not match this row"
            logger.warning("no reward applies to example %s: %s", i, error)
            out.append(ScoredSample(None, {**s.components, MODEL: None}, None, NO_APPLICABLE, error))
        else:
            out.append(ScoredSample(s.total, {**s.components, MODEL: None}, s.success))
    return out


def reward_metrics(samples: Sequence[ScoredSample]) -> dict[str, float]:
    """Metrics to log: mean and (population) std of each component (over the scored samples where it
    applied: None components are skipped and counted as ``reward/skipped/<name>``) and of the total, failures
    per component, success rate over samples with a success value.

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
        for name in dict.fromkeys(k for s in scored for k in s.components):
            values = [s.components[name] for s in scored if s.components.get(name) is not None]
            if values:
                mean_std(name, values)
            skipped = sum(name in s.components and s.components[name] is None for s in scored)
            if skipped:
                metrics[f"reward/skipped/{name}"] = float(skipped)
    metrics["reward/failed"] = float(len(samples) - len(scored))
    for s in samples:
        if s.failed is not None:
            metrics[f"reward/failed/{s.failed}"] = metrics.get(f"reward/failed/{s.failed}", 0.0) + 1.0
    judged = [s.success for s in scored if s.success is not None]
    if judged:
        metrics["reward/success_rate"] = sum(judged) / len(judged)
    return metrics
