"""Reward functions: ``fn(completion: str, **example_fields) -> float``, each usable on its own; the scorer
also takes TRL's batched form ``f(prompts, completions, completion_ids, **columns) -> list[float | None]``
(``registry``; docs/rewards.md). ``reward.when`` limits a component to the rows whose columns equal given
values (``apply_when``): elsewhere it is None, "not applicable", and is not computed.

Imports only the standard library (and torch/numpy where needed): a test asserts it. math-verify and sympy
are imported lazily, inside the symbolic answer check. Model-written code runs only in ``sandbox``.
A reward that cannot score a sample raises ``RewardError``; ``score``/``score_batch`` turn that (and NaN,
inf, a value beyond float32, any exception) into a counted failed sample left out of the loss, never a 0;
``RewardFailureMonitor`` stops a run whose rewards fail for most samples. Each reward module states its
threat model (what a policy may try, and what the reward does).
"""

from alignkit.rewards.accuracy import (
    accuracy_reward,
    answers_match,
    digit_match_reward,
    extract_answer,
    normalize_answer,
    parse_number,
    parse_value,
)
from alignkit.rewards.code import SandboxError, code_reward, extract_code
from alignkit.rewards.combine import combine
from alignkit.rewards.errors import RewardError, RewardFailureError, RewardFailureMonitor
from alignkit.rewards.format import format_reward, format_reward_soft
from alignkit.rewards.language import language_consistency_reward
from alignkit.rewards.length import length_penalty
from alignkit.rewards.registry import (
    BUILTIN_REWARDS,
    OnlyWhen,
    ScoredSample,
    apply_when,
    build_rewards,
    is_batched,
    resolve_reward,
    reward_metrics,
    score,
    score_batch,
    score_with_model,
)
from alignkit.rewards.sandbox import SandboxResult, run_in_sandbox, run_many

__all__ = [
    "BUILTIN_REWARDS",
    "OnlyWhen",
    "RewardError",
    "RewardFailureError",
    "RewardFailureMonitor",
    "SandboxError",
    "SandboxResult",
    "ScoredSample",
    "accuracy_reward",
    "answers_match",
    "apply_when",
    "build_rewards",
    "code_reward",
    "combine",
    "digit_match_reward",
    "extract_answer",
    "extract_code",
    "format_reward",
    "format_reward_soft",
    "is_batched",
    "language_consistency_reward",
    "length_penalty",
    "normalize_answer",
    "parse_number",
    "parse_value",
    "resolve_reward",
    "reward_metrics",
    "run_in_sandbox",
    "run_many",
    "score",
    "score_batch",
    "score_with_model",
]
