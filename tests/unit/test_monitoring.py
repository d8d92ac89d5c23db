"""alignkit.monitoring: the training-health checks at hand-computed values."""

import doctest
import subprocess
import sys

import pytest

from alignkit import monitoring
from alignkit.monitoring import (
    clip_fraction_warning,
    distinct_n,
    dpo_overfitting_warning,
    gibberish_share,
    repeated_ngram_share,
    repetition_collapse,
    reward_hacking_warning,
    reward_spike_warning,
    text_health,
)


def test_doctests_and_stdlib_only():
    assert doctest.testmod(monitoring).failed == 0
    code = "import sys, alignkit.monitoring; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_clip_fraction_band():
    w = clip_fraction_warning(0.45, 4)
    assert w.startswith("clip fraction 0.45 > 0.30 with mu=4") and "lower optim.lr or loss.mu" in w
    assert "raise loss.clip_eps" in w
    # band edges are healthy: 0.10 and 0.30 inside
    assert clip_fraction_warning(0.10, 2) is None and clip_fraction_warning(0.30, 2) is None
    low = clip_fraction_warning(0.05, 2, mu_field="loss.epochs")
    assert low.startswith("clip fraction 0.05 < 0.10 with mu=2") and "lower loss.epochs" in low
    # mu = 1: ratio 1, nothing may clip; any clipping is a mismatch, and 0 is not "too low"
    assert clip_fraction_warning(0.0, 1) is None
    assert "old_logprobs are not the current policy's" in clip_fraction_warning(0.03, 1)
    assert clip_fraction_warning(0.35, 4, band=(0.1, 0.4)) is None


def test_repeated_ngrams_and_distinct_n_by_hand():
    # words: the cat sat on the cat sat -> trigrams: (the cat sat) (cat sat on) (sat on the) (on the cat)
    #   (the cat sat) = 5, 4 distinct -> 1 - 4/5 = 0.2
    assert repeated_ngram_share("The cat sat on the cat sat", 3) == pytest.approx(0.2)
    # bigrams (n=2) of "a a a a": 3, 1 distinct -> 2/3
    assert repeated_ngram_share("a a a a", 2) == pytest.approx(2 / 3)
    assert repeated_ngram_share("too short", 3) == 0.0
    # distinct-1 over ["a b", "a c"]: 4 unigrams, 3 distinct -> 0.75 ; punctuation is a word: "x ." -> 2
    assert distinct_n(["a b", "a c"], 1) == 0.75
    assert distinct_n(["x.", "x."], 1) == 0.5
    assert distinct_n([], 2) == 1.0


def test_repetition_collapse_thank_you():
    assert repetition_collapse("Your order is on its way. Thank you thank you thank you thank you")
    # three repeats of a 2-word unit: run of 4 matches < (4 - 1) * 2 = 6 -> not yet a collapse
    assert not repetition_collapse("thank you thank you thank you")
    assert repetition_collapse("thank you thank you thank you", min_repeats=3)
    # one word 4 times; a 3-word unit 4 times
    assert repetition_collapse("no no no no")
    assert repetition_collapse("I am sorry I am sorry I am sorry I am sorry")
    assert not repetition_collapse("x = 1, y = 2, z = 3, w = 4")
    # the unit longer than max_period is not looked for
    assert not repetition_collapse("a b c a b c a b c a b c", max_period=2)


def test_gibberish_share_by_hand():
    # tokens: "ok", "@@@@" (no letter/digit, 4 chars), "))" (short punctuation: fine), 31 x "z" (too long)
    #   -> 2 of 4
    assert gibberish_share("ok @@@@ )) " + "z" * 31) == 0.5
    assert gibberish_share("") == 0.0
    assert gibberish_share("caf\ufffd au lait") == pytest.approx(1 / 3)


def test_gibberish_share_reads_unspaced_scripts():
    # a Chinese sentence is one whitespace token of 40+ characters: not gibberish (the real-model R1 run's
    # second-language completions raised a false "policy is breaking down" alarm at step 1 before this)
    zh = "<think>首先，24*8=192。然后，192-124=68。</think><answer>68</answer>"
    assert len(zh.split()) == 1 and len(zh) > 30
    assert gibberish_share(zh) == 0.0
    assert gibberish_share("การคำนวณทีละขั้นตอนอย่างระมัดระวังมากที่สุด") == 0.0  # Thai, 40+ characters
    # a long run of a spaced script is still flagged
    assert gibberish_share("ok " + "ab" * 20) == 0.5
    _, warnings = text_health([zh] * 3 + ["First, 3*4=12. Then, 12+5=17."])
    assert not any("gibberish" in w for w in warnings)


def test_text_health_metrics_and_warnings():
    healthy = ["2 + 3 = 5, so the answer is 5.", "First add the tens: 40 + 20 = 60.", "The result is 17."]
    m, w = text_health(healthy)
    assert w == [] and m["text/collapsed_share"] == 0.0 and m["text/gibberish_share"] == 0.0
    collapsed = ["thank you " * 6] * 3
    m, w = text_health(collapsed)
    # each text: 12 words, 10 trigrams, 2 distinct -> 0.8 repeated ; all 3 loop ; bigrams over the batch:
    #   11 per text x 3 = 33, distinct 2 ("thank you", "you thank") -> 2/33 = 0.0606
    assert m["text/repeated_ngram_share"] == pytest.approx(0.8)
    assert m["text/distinct_2"] == pytest.approx(2 / 33)
    assert m["text/collapsed_share"] == 1.0
    assert len(w) == 3
    assert w[0].startswith("repeated 3-gram share 0.80 > 0.5")
    assert w[1].startswith("distinct-2 0.06 < 0.2") and "rollout.temperature" in w[1]
    assert w[2].startswith('100% of completions loop on one phrase ("thank you thank you")')
    m, w = text_health(["#### %%%% ok"])
    assert m["text/gibberish_share"] == pytest.approx(2 / 3) and "gibberish token share 0.67 > 0.2" in w[-1]
    assert text_health([]) == ({"text/repeated_ngram_share": 0.0, "text/distinct_2": 1.0,
                                "text/collapsed_share": 0.0, "text/gibberish_share": 0.0}, [])


def test_reward_spike_by_hand():
    recent = [0.5, 0.6, 0.5, 0.6, 0.5, 0.6]  # mean 0.55, population std 0.05
    # 0.69: (0.69 - 0.55) / 0.05 = 2.8 -> within k = 3 ; 0.71 -> 3.2 std up
    assert reward_spike_warning(recent, 0.69) is None
    assert reward_spike_warning(recent, 0.71).startswith("reward 0.710 jumped 3.2 std above its recent mean 0.550")
    # 0.3: (0.3 - 0.55) / 0.05 = -5 -> a fall
    assert reward_spike_warning(recent, 0.3) == ("reward 0.300 fell 5.0 std below its recent mean 0.550 (6 steps): "
                                                 "check for a collapse or a failing verifier")
    assert reward_spike_warning(recent[:4], 5.0) is None  # fewer than min_points
    # a flat window: std floored at min_std; any real change is a spike, the same value is not
    assert reward_spike_warning([0.0] * 5, 0.0) is None
    assert reward_spike_warning([0.0] * 5, 0.05, min_std=0.1) is None  # 0.5 std with the floor


def test_reward_hacking_matches_the_ppo_rule():
    hist = [[0.1, 2.0], [0.2, 1.5], [0.3, 1.2]]
    # window 3 compares with hist[-3] = [0.1, 2.0]: reward 0.5 > 0.1 and entropy 0.9 < 0.5 * 2.0 = 1.0 -> alarm
    assert reward_hacking_warning(hist, 0.5, 0.9, window=3) == (
        "reward rose (0.100 -> 0.500) while entropy collapsed (2.000 -> 0.900) over 3 steps: possible reward hacking")
    assert reward_hacking_warning(hist, 0.5, 1.0, window=3) is None  # 1.0 is not < 1.0
    assert reward_hacking_warning(hist, 0.05, 0.1, window=3) is None  # reward fell
    assert reward_hacking_warning(hist, 0.5, 0.1, window=4) is None  # not enough history


def test_dpo_overfitting_by_hand():
    train, held_out = [0.60, 0.70, 0.80, 0.95], [0.70, 0.72, 0.70, 0.62]
    # window 3: train 0.70 -> 0.95 (+0.25), held-out 0.72 -> 0.62 (-0.10) -> overfitting
    w = dpo_overfitting_warning(train, held_out, window=3)
    assert w.startswith("held-out reward accuracy fell 0.72 -> 0.62 while training accuracy rose 0.70 -> 0.95")
    assert "raise loss.beta" in w
    # window 4: held-out 0.70 -> 0.62 still falls, train 0.60 -> 0.95 rises -> fires too
    assert dpo_overfitting_warning(train, held_out, window=4) is not None
    # held-out falls by only 0.01 (not more than min_change 0.02) -> quiet ; both rising -> quiet
    assert dpo_overfitting_warning([0.7, 0.9], [0.70, 0.69], window=2) is None
    assert dpo_overfitting_warning([0.7, 0.9], [0.6, 0.7], window=2) is None
    assert dpo_overfitting_warning([0.7], [0.7], window=2) is None
