"""Training-health checks (the lecture's monitoring, GRPO-27..30 and its PPO/DPO alarms). Pure: stdlib only.

Each check takes plain numbers or strings a recipe already has and returns ``None`` (healthy) or one warning
line that says what is wrong and which setting to change; the text checks return metrics and warnings.
They hold no state: a recipe keeps the short histories they read (``alignkit.infra.monitor`` does).

- :func:`clip_fraction_warning`: 10-30 % of tokens clipped is healthy when the policy takes mu > 1 steps
  per batch (with mu = 1 the ratio is 1 and nothing may clip: ERRATA, GRPO-12).
- :func:`text_health`: repeated n-grams, distinct-n over the batch, "thank you thank you ..." loops,
  gibberish tokens, from :func:`repeated_ngram_share`, :func:`distinct_n`, :func:`repetition_collapse`,
  :func:`gibberish_share`.
- :func:`reward_spike_warning`: the reward jumps by more than k std of its recent window.
- :func:`reward_hacking_warning`: the reward rises while the entropy collapses (PPO's alarm, shared).
- :func:`dpo_overfitting_warning`: held-out reward accuracy falls while training accuracy rises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

CLIP_BAND = (0.10, 0.30)  # the lecture: "10-30% clipping is healthy"


def clip_fraction_warning(
    clip_fraction: float,
    mu: int,
    *,
    band: tuple[float, float] = CLIP_BAND,
    mu_field: str = "loss.mu",
) -> str | None:
    """Warn when the clip fraction leaves its healthy band.

    mu is the number of optimizer steps taken on one batch of samples (GRPO ``loss.mu``; PPO epochs x
    minibatches, name it with ``mu_field``). With mu = 1 the ratio is exactly 1: any clipping means
    old_logprobs are not the current policy's (a bug), and the band does not apply.

    >>> clip_fraction_warning(0.45, 4)
    'clip fraction 0.45 > 0.30 with mu=4: updates move the policy too far; lower optim.lr or loss.mu, or raise loss.clip_eps'
    >>> clip_fraction_warning(0.2, 4) is None
    True
    """
    low, high = band
    if mu <= 1:
        if clip_fraction > 0:
            return (f"clip fraction {clip_fraction:.2f} > 0 with mu={mu}: with one update per batch the ratio is 1; "
                    "old_logprobs are not the current policy's (sampler and trainer disagree?)")
        return None
    if clip_fraction > high:
        return (f"clip fraction {clip_fraction:.2f} > {high:.2f} with mu={mu}: updates move the policy too far; "
                f"lower optim.lr or {mu_field}, or raise loss.clip_eps")
    if clip_fraction < low:
        return (f"clip fraction {clip_fraction:.2f} < {low:.2f} with mu={mu}: updates barely move the policy; "
                f"raise optim.lr, or lower {mu_field} to spend less compute per batch")
    return None


_WORD = re.compile(r"\w+|[^\w\s]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams that repeat an earlier one: 1 - distinct / total (0 if none).

    Words are runs of letters/digits, or of punctuation, lowercased.

    >>> repeated_ngram_share("a b c a b c")   # 4 trigrams, 3 distinct
    0.25
    """
    grams = _ngrams(_words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """distinct-n (Li et al. 2016): distinct n-grams / all n-grams over the whole batch (1.0 if none).

    >>> distinct_n(["the cat sat", "the cat ran"], 2)   # the-cat, cat-sat, the-cat, cat-ran: 3 / 4
    0.75
    """
    grams = [g for t in texts for g in _ngrams(_words(t), n)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition_collapse(text: str, *, max_period: int = 8, min_repeats: int = 4) -> bool:
    """True when some unit of 1..max_period words repeats at least min_repeats times in a row.

    >>> repetition_collapse("Sure! thank you thank you thank you thank you")
    True
    >>> repetition_collapse("2 + 2 = 4, so 4 + 4 = 8")
    False
    """
    words = _words(text)
    for period in range(1, max_period + 1):
        run = 0  # consecutive positions i with words[i] == words[i - period]
        for i in range(period, len(words)):
            run = run + 1 if words[i] == words[i - period] else 0
            if run >= (min_repeats - 1) * period:
                return True
    return False


# scripts written without spaces between words: CJK ideographs and punctuation, kana, fullwidth forms, Thai,
# Lao, Khmer, Myanmar, Tibetan
_UNSPACED = re.compile("[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f"
                       "\u1780-\u17ff]")


_TAG = re.compile(r"</?[A-Za-z][\w-]*>")


def gibberish_share(text: str, *, max_word_len: int = 30) -> float:
    """Share of whitespace-separated tokens that look like gibberish (0 if none): no letter or digit
    ("%$#@", "))))" -- a lone punctuation mark of up to 3 characters is fine), longer than max_word_len,
    or holding U+FFFD (bytes that did not decode). The length test skips tokens holding characters of a script
    written without spaces (Chinese, Japanese, Thai...): a whole Chinese sentence is one such token.

    >>> gibberish_share("The answer is 42 . ")
    0.0
    >>> gibberish_share("ans ###%% wer \\ufffd\\ufffd")   # 2 of 4
    0.5
    >>> gibberish_share("<think>首先，24*8=192。然后，192-124=68。</think><answer>68</answer>")
    0.0
    >>> gibberish_share("<think>First, 19*4=76. Finally, 76+150=226.</think><answer>226</answer>")  # tags split
    0.0
    """
    tokens = _TAG.sub(" ", text).split()  # markup tags (<think>, </answer>) separate words: not one long token
    if not tokens:
        return 0.0

    def bad(tok: str) -> bool:
        no_alnum = not any(c.isalnum() for c in tok) and len(tok) > 3
        too_long = len(tok) > max_word_len and not _UNSPACED.search(tok)
        return no_alnum or too_long or "\ufffd" in tok

    return sum(bad(t) for t in tokens) / len(tokens)


def text_health(
    texts: Sequence[str],
    *,
    n: int = 3,
    repeat_limit: float = 0.5,
    distinct_floor: float = 0.2,
    collapse_limit: float = 0.1,
    gibberish_limit: float = 0.2,
) -> tuple[dict[str, float], list[str]]:
    """Degeneration metrics of a batch of completions, and a warning for each past its limit.

    Metrics: ``text/repeated_ngram_share`` (mean over texts, word n-grams), ``text/distinct_2`` (over the
    batch), ``text/collapsed_share`` (share of texts in a repetition loop), ``text/gibberish_share`` (mean).
    """
    k = max(len(texts), 1)
    m = {
        "text/repeated_ngram_share": sum(repeated_ngram_share(t, n) for t in texts) / k,
        "text/distinct_2": distinct_n(texts, 2),
        "text/collapsed_share": sum(repetition_collapse(t) for t in texts) / k,
        "text/gibberish_share": sum(gibberish_share(t) for t in texts) / k,
    }
    fix = "raise the KL weight (beta) or lower optim.lr, and check the reward does not pay for it"
    out = []
    if m["text/repeated_ngram_share"] > repeat_limit:
        out.append(f"repeated {n}-gram share {m['text/repeated_ngram_share']:.2f} > {repeat_limit}: completions "
                   f"repeat themselves; {fix}")
    if texts and m["text/distinct_2"] < distinct_floor:
        out.append(f"distinct-2 {m['text/distinct_2']:.2f} < {distinct_floor}: the batch's completions are nearly "
                   "the same; raise rollout.temperature, or the KL weight (beta)")
    if m["text/collapsed_share"] > collapse_limit:
        out.append(f"{m['text/collapsed_share']:.0%} of completions loop on one phrase (\"thank you thank you\"): "
                   f"collapse; {fix}")
    if m["text/gibberish_share"] > gibberish_limit:
        out.append(f"gibberish token share {m['text/gibberish_share']:.2f} > {gibberish_limit}: the policy is "
                   "breaking down; lower optim.lr, raise the KL weight (beta), or resume from an earlier checkpoint")
    return m, out


def reward_spike_warning(
    recent: Sequence[float], reward: float, *, k: float = 3.0, min_points: int = 5, min_std: float = 1e-6
) -> str | None:
    """Warn when ``reward`` is more than k std away from the mean of the ``recent`` window (population std,
    floored at ``min_std``); needs ``min_points`` values. The caller keeps the window (e.g. the last 20).

    >>> reward_spike_warning([0.5, 0.6, 0.5, 0.6, 0.5, 0.6], 0.9)   # mean 0.55, std 0.05: 7 std up
    'reward 0.900 jumped 7.0 std above its recent mean 0.550 (6 steps): check samples for a reward hack'
    """
    if len(recent) < min_points:
        return None
    mean = sum(recent) / len(recent)
    std = max(math.sqrt(sum((x - mean) ** 2 for x in recent) / len(recent)), min_std)
    z = (reward - mean) / std
    if abs(z) <= k:
        return None
    if z > 0:
        return (f"reward {reward:.3f} jumped {z:.1f} std above its recent mean {mean:.3f} ({len(recent)} steps): "
                "check samples for a reward hack")
    return (f"reward {reward:.3f} fell {-z:.1f} std below its recent mean {mean:.3f} ({len(recent)} steps): "
            "check for a collapse or a failing verifier")


def reward_hacking_warning(
    history: Sequence[Sequence[float]], reward: float, entropy: float, *, window: int = 10,
    entropy_drop: float = 0.5,
) -> str | None:
    """The reward rose while the entropy fell below ``entropy_drop`` of its value ``window`` steps ago.

    ``history`` holds [reward, entropy] of past steps, oldest first (the PPO recipe's check, shared).

    >>> reward_hacking_warning([[0.2, 1.0], [0.3, 0.9]], 0.8, 0.3, window=2)
    'reward rose (0.200 -> 0.800) while entropy collapsed (1.000 -> 0.300) over 2 steps: possible reward hacking'
    """
    if len(history) < window:
        return None
    reward0, entropy0 = history[-window]
    if reward > reward0 and entropy < entropy_drop * entropy0:
        return (f"reward rose ({reward0:.3f} -> {reward:.3f}) while entropy collapsed ({entropy0:.3f} -> "
                f"{entropy:.3f}) over {window} steps: possible reward hacking")
    return None


def dpo_overfitting_warning(
    train_accuracy: Sequence[float], eval_accuracy: Sequence[float], *, window: int = 3, min_change: float = 0.02
) -> str | None:
    """DPO overfitting: over the last ``window`` evaluations, held-out reward accuracy fell by more than
    ``min_change`` while training reward accuracy rose by more than ``min_change``.

    Both sequences are measured at the same evaluations (training accuracy e.g. the mean since the last one).

    >>> dpo_overfitting_warning([0.70, 0.80, 0.95], [0.72, 0.70, 0.62])
    'held-out reward accuracy fell 0.72 -> 0.62 while training accuracy rose 0.70 -> 0.95 over 3 evaluations: DPO is overfitting; keep an earlier checkpoint, lower optim.lr or the steps, raise loss.beta, or add pairs'
    """
    if window < 2 or len(train_accuracy) < window or len(eval_accuracy) < window:
        return None
    t0, t1 = train_accuracy[-window], train_accuracy[-1]
    e0, e1 = eval_accuracy[-window], eval_accuracy[-1]
    if t1 - t0 > min_change and e0 - e1 > min_change:
        return (f"held-out reward accuracy fell {e0:.2f} -> {e1:.2f} while training accuracy rose {t0:.2f} -> "
                f"{t1:.2f} over {window} evaluations: DPO is overfitting; keep an earlier checkpoint, lower optim.lr "
                "or the steps, raise loss.beta, or add pairs")
    return None
