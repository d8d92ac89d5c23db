"""Held-out evaluation with the same scorers the RL rewards use.

The arithmetic task's held-out set is fixed and seeded (``arithmetic_eval_set``): the 200 distinct questions
that ``make_split`` holds out for levels 1-3 with seed 1000 -- the same questions the bundled base model was
kept away from, and that every training stage excludes (``arithmetic_train_problems``).

Held-out accuracy uses the strict scorer ``strict_accuracy``: the answer is compared by value (or the truth's
own spelling), never by symbolic equivalence, so nothing the model wrote is evaluated ("74-26" is not 48);
with ``require_format`` the answer is read only from ``<answer>``/``\\boxed{}`` (use it where the prompts ask
for that format; the bundled base model is not asked, so its card accuracy reads the final number).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignkit.data.arithmetic import (  # noqa: F401  (the held-out set lives in data/; re-exported)
    EVAL_LEVELS,
    EVAL_SEED,
    EVAL_SIZE,
    arithmetic_eval_set,
    arithmetic_train_problems,
    eval_size,
)
from alignkit.rewards import accuracy_reward, format_reward
from alignkit.rewards.language import language_consistency_reward


def strict_accuracy(completion: str, answer: str | int | float, *, require_format: bool = False) -> float:
    """The held-out scorer: 1.0 when the completion's final answer equals ``answer`` by value (no symbolic
    step, no expression evaluated), else 0.0; ``require_format``: only a tagged (or boxed) answer counts.

    >>> strict_accuracy("<answer>48</answer>", 48), strict_accuracy("<answer>74-26</answer>", 48)
    (1.0, 0.0)
    >>> strict_accuracy("so 48", 48), strict_accuracy("so 48", 48, require_format=True)
    (1.0, 0.0)
    >>> strict_accuracy("<answer>2(x+1)</answer>", "2x+2")  # equivalent, but not the value asked for
    0.0
    """
    return accuracy_reward(completion, answer=answer, strict=require_format, symbolic=False)


def score_completions(completions: list[str], answers: list[str | int], lengths: list[int] | None = None,
                      levels: list[int | None] | None = None, *, require_format: bool = False) -> dict:
    """Accuracy (``strict_accuracy``), strict R1-format compliance, language consistency (English) and mean
    length; with ``levels`` (one per completion) spanning more than one level, also ``accuracy/level_<k>``."""
    n = max(len(completions), 1)
    correct = [strict_accuracy(c, a, require_format=require_format) for c, a in zip(completions, answers)]
    out = {
        "accuracy": sum(correct) / n,
        "format": sum(format_reward(c) for c in completions) / n,
        "language": sum(language_consistency_reward(c, language="en") for c in completions) / n,
    }
    if lengths is not None:
        out["length"] = sum(lengths) / n
    distinct = sorted({lv for lv in levels or [] if lv is not None})
    if len(distinct) > 1:  # accuracy per difficulty level: where a change in accuracy comes from
        for lv in distinct:
            hits = [x for x, level in zip(correct, levels) if level == lv]
            out[f"accuracy/level_{lv}"] = sum(hits) / len(hits)
    return out


@torch.no_grad()
def evaluate_model(model, tokenizer, problems, *, max_new_tokens: int = 64, batch_size: int = 256,
                   temperature: float = 0.0, require_format: bool = False, rewards=None,
                   success_key: str = "accuracy", per_problem: bool = False) -> dict:
    """Greedy (by default) answers to ``problems`` (objects with ``question`` and ``answer``, optionally
    ``level`` and ``fields``) -> accuracy (``strict_accuracy``; left out when a problem has no answer), format,
    language, length, and ``accuracy/level_<k>`` when several levels are present.

    ``rewards`` (``build_rewards``'s map): every component is also scored on the same greedy completions, with
    the problem's ``fields`` (its record's ground-truth columns) and its prompt, and reported as
    ``reward/<name>`` (mean over the samples it applied to), ``reward/total`` and ``reward/failed``.

    ``per_problem``: also ``n`` (problems) and ``correct`` (0/1 per problem, in order), for paired comparisons
    of two models on the same problems (confidence intervals of a difference)."""
    from alignkit.data import render_prompt
    from alignkit.rollout import generate
    from alignkit.rollout.types import completion_id_lists

    texts, lengths, ids = [], [], []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i:i + batch_size]
        out = generate(model, tokenizer, [render_prompt(tokenizer, p.question) for p in chunk], num_samples=1,
                       max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
        texts += out.completions
        lengths += out.response_mask.sum(-1).tolist()
        ids += completion_id_lists(out.completion_ids, out.response_mask)
    answers = [p.answer for p in problems]
    if all(a is not None for a in answers):
        out = score_completions(texts, answers, lengths, [getattr(p, "level", None) for p in problems],
                                require_format=require_format)
    else:  # no ground truth to compare with: the reward components (if any) are the evaluation
        out = score_completions(texts, ["" for _ in texts], lengths, require_format=require_format)
        out.pop("accuracy")
    if rewards:
        from alignkit.rewards import reward_metrics, score_batch

        examples = [dict(getattr(p, "fields", None) or {"answer": p.answer}) for p in problems]
        scored = score_batch(texts, examples, rewards, success_key=success_key,
                             prompts=[p.question for p in problems], completion_ids=ids)
        out.update({k: v for k, v in reward_metrics(scored).items() if not k.endswith("/std")})
    if per_problem and all(a is not None for a in answers):
        out["n"] = len(problems)
        out["correct"] = [int(strict_accuracy(c, a, require_format=require_format)) for c, a in zip(texts, answers)]
    return out


def held_out_evaluation(model, tokenizer, held_out, *, max_new_tokens: int, rewards: dict | None,
                        success_key: str) -> Callable[[int], dict]:
    """``evaluate(step) -> {"eval/...": ...}`` on held-out prompts (greedy answers; every reward component of
    ``rewards`` when given, i.e. for a data.eval_file); {} when there are none. ``model()`` gives the model."""
    def evaluate(step: int) -> dict:
        if not held_out:
            return {}
        return {f"eval/{k}": v for k, v in evaluate_model(
            model(), tokenizer, held_out, max_new_tokens=max_new_tokens,
            rewards=rewards, success_key=success_key).items()}
    return evaluate
