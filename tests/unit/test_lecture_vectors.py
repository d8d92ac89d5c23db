"""The lecture's worked examples (tests/data/lecture_vectors.json, a copy of the design's seed/vectors.json)
at their exact values (ERRATA.md).

Each test states the arithmetic; a final test walks vectors.json itself so a changed vector fails here.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from alignkit.advantages import gae, group_advantages
from alignkit.losses import (
    AdaptiveKLController,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    policy_gradient_loss,
    ppo_objective,
    ppo_policy_loss,
    preference_probability,
    value_loss,
)
from alignkit.rewards import combine

T = torch.tensor
ONE = torch.ones(1, 1)


def lp(p):  # log-probability tensor [1, 1] of a probability
    return T([[math.log(p)]], dtype=torch.float64)


def test_pg1_policy_gradient():
    # L_PG = log(0.7) * 2.3 = -0.356675 * 2.3 = -0.820352 (objective); loss = +0.820352
    loss, _ = policy_gradient_loss(lp(0.7), T([2.3], dtype=torch.float64), ONE)
    assert loss.item() == pytest.approx(0.820352, abs=1e-6)


def test_ppo1_clip_function():
    # clip(r, 0.8, 1.2): 0.5 -> 0.8, 1.0 -> 1.0, 2.5 -> 1.2; with A = 1 and old = new*(1/r) the clipped
    # branch chooses min(r, clip(r)) -> 0.5, 1.0, 1.2
    r = T([[0.5, 1.0, 2.5]])
    loss, _ = ppo_policy_loss(torch.log(r), torch.zeros(1, 3), T([1.0]), torch.ones(1, 3))
    assert (-loss).tolist()[0] == pytest.approx([0.5, 1.0, 1.2])


def test_ppo2_clipped_objective_positive_advantage():
    # r = 0.65 / 0.4 = 1.625; unclipped 1.625*1.8 = 2.925; clipped 1.2*1.8 = 2.16; min = 2.16
    logprobs = lp(0.65).requires_grad_()
    loss, m = ppo_policy_loss(logprobs, lp(0.4), T([1.8], dtype=torch.float64), ONE)
    assert -loss.item() == pytest.approx(2.16, abs=1e-12)
    assert m["clip_fraction"].item() == 1.0
    loss.sum().backward()
    assert logprobs.grad.item() == 0.0  # the clipped branch is selected: no gradient through the ratio


@pytest.mark.parametrize(
    "r, expected, clipped",
    [(0.5, -0.72, True), (1.0, -0.9, False), (1.625, -1.4625, False)],
    # A = -0.9: r=0.5 -> min(-0.45, 0.8*-0.9=-0.72) = -0.72 (clipped branch);
    # r=1.0 -> -0.9; r=1.625 -> min(-1.4625, 1.2*-0.9=-1.08) = -1.4625 (penalty NOT capped)
)
def test_ppo3_clipped_objective_negative_advantage(r, expected, clipped):
    loss, m = ppo_policy_loss(lp(r), lp(1.0), T([-0.9], dtype=torch.float64), ONE)
    assert -loss.item() == pytest.approx(expected, abs=1e-12)
    assert m["clip_fraction"].item() == float(clipped)


@pytest.mark.parametrize("v, target, expected", [(2.3, 2.8, 0.25), (1.8, 2.1, 0.09), (0.8, 1.0, 0.04)])
def test_ppo4_ppo5_ppo9_value_loss(v, target, expected):
    # (2.3-2.8)^2 = 0.25 ; (1.8-2.1)^2 = 0.09 ; PPO-9: A = 1.0-0.8 = 0.2, (0.8-1.0)^2 = 0.04; no 1/2
    loss, _ = value_loss(T([[v]], dtype=torch.float64), T([[target]], dtype=torch.float64), ONE)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_ppo6_combined_objective_erratum():
    # -0.73 - 0.5*0.09 + 0.01*3.2 = -0.73 - 0.045 + 0.032 = -0.743 (the lecture's -0.683 is wrong)
    assert ppo_objective(T(-0.73), T(0.09), T(3.2)).item() == pytest.approx(-0.743, abs=1e-6)


@pytest.mark.parametrize(
    "kl, new_beta",
    # target 0.01: upper 1.5*0.01 = 0.015, lower 0.01/1.5 = 0.006667, strict inequalities
    [(0.016, 0.04), (0.015, 0.02), (0.0066, 0.01), (0.0067, 0.02), (0.01, 0.02), (0.05, 0.04)],
)
def test_ppo7_adaptive_kl_rule(kl, new_beta):
    assert AdaptiveKLController(0.02, 0.01).update(kl) == pytest.approx(new_beta)


def test_ppo8_entropy_coin():
    # fair: -2*0.5*ln 0.5 = ln 2 = 0.693147 ; biased: -(0.99 ln 0.99 + 0.01 ln 0.01) = 0.056002
    logits = torch.log(T([[0.5, 0.5], [0.99, 0.01]], dtype=torch.float64))
    assert entropy_from_logits(logits).tolist() == pytest.approx([0.693147, 0.056002], abs=1e-6)


def test_gae1_gae2_gae3_haiku():
    r, v, m = T([[0.5, 1.2, 2.1]]), T([[0.8, 1.5, 1.9]]), torch.ones(1, 3)
    # deltas: 0.5+0.99*1.5-0.8 = 1.185 ; 1.2+0.99*1.9-1.5 = 1.581 ; 2.1+0-1.9 = 0.2 (terminal V=0)
    a0, _ = gae(r, v, m, gamma=0.99, lam=0.0)
    assert a0[0].tolist() == pytest.approx([1.185, 1.581, 0.2], abs=1e-5)
    # A2 = 0.2 ; A1 = 1.581 + 0.9405*0.2 = 1.7691 ; A0 = 1.185 + 0.9405*1.7691 = 2.848839 (lecture: 2.836)
    a, ret = gae(r, v, m, gamma=0.99, lam=0.95)
    assert a[0].tolist() == pytest.approx([2.848839, 1.7691, 0.2], abs=1e-5)
    assert ret[0].tolist() == pytest.approx([3.648839, 3.2691, 2.1], abs=1e-5)  # V_targ = A + V
    # lambda = 1: MC return minus V: G = [3.74621, 3.279, 2.1] -> A = [2.94621, 1.779, 0.2]
    a1, _ = gae(r, v, m, gamma=0.99, lam=1.0)
    assert a1[0].tolist() == pytest.approx([2.94621, 1.779, 0.2], abs=1e-5)


@pytest.mark.parametrize(
    "diff, prob, loss",
    # sigma(3) = 0.952574, -log = 0.048587 ; sigma(0) = 0.5, ln 2 ; sigma(-2) = 0.119203 ; sigma(3.5)
    [(3.0, 0.952574, 0.048587), (0.0, 0.5, 0.693147), (-2.0, 0.119203, 2.126928), (3.5, 0.970688, 0.02975)],
)
def test_bt_preference_probability_and_loss(diff, prob, loss):
    rw, rl = T([2.5], dtype=torch.float64), T([2.5 - diff], dtype=torch.float64)
    assert preference_probability(rw, rl).item() == pytest.approx(prob, abs=1e-6)
    losses, _ = bradley_terry_loss(rw, rl)
    assert losses.item() == pytest.approx(loss, abs=1e-6)
    # shift invariance: adding a constant to both scores changes nothing
    p = preference_probability(rw, rl).item()
    assert preference_probability(rw + 7.0, rl + 7.0).item() == pytest.approx(p, abs=1e-12)


def _dpo(pw, pl, rw, rl, **kw):
    """-> (losses, chosen rewards, rejected rewards) from dpo_loss's (losses, metrics)."""
    d = lambda x: T([x], dtype=torch.float64)  # noqa: E731
    losses, m = dpo_loss(d(pw), d(pl), d(rw), d(rl), **kw)
    return losses, m["rewards/chosen"], m["rewards/rejected"]


def test_dpo1_implicit_rewards():
    # log(0.15/0.1) = 0.405465 ; log(0.05/0.08) = -0.470004 ; rewards *0.1 ; diff = 0.087547
    losses, cr, rr = _dpo(math.log(0.15), math.log(0.05), math.log(0.1), math.log(0.08), beta=0.1)
    assert cr.item() == pytest.approx(0.040547, abs=1e-6)
    assert rr.item() == pytest.approx(-0.047, abs=1e-6)
    assert (cr - rr).item() == pytest.approx(0.087547, abs=1e-6)
    assert losses.item() == pytest.approx(0.650331, abs=1e-6)  # -log sigma(0.087547)


def test_dpo2_training_step():
    # winner ratio -1.0 - -1.2 = 0.2 ; loser -2.0 - -1.5 = -0.5 ; margin 0.1*(0.2+0.5) = 0.07
    # sigma(0.07) = 0.517493 ; loss = -log 0.517493 = 0.65876
    losses, cr, rr = _dpo(-1.0, -2.0, -1.2, -1.5, beta=0.1)
    assert (cr - rr).item() == pytest.approx(0.07, abs=1e-9)
    assert losses.item() == pytest.approx(0.65876, abs=1e-5)


@pytest.mark.parametrize("rw, rl, weight", [(0.1, 0.3, 0.549834), (0.4, 0.1, 0.425557), (0.8, -0.2, 0.268941)])
def test_dpo3_gradient_weight(rw, rl, weight):
    # dL/dh for L = -log sigma(beta h): -beta * sigma(-beta h) = -beta * sigma(r_l - r_w)
    beta = 0.1
    pw = T([rw / beta], dtype=torch.float64, requires_grad=True)
    losses, _ = dpo_loss(pw, T([rl / beta], dtype=torch.float64), T([0.0]), T([0.0]), beta=beta)
    losses.sum().backward()
    assert -pw.grad.item() / beta == pytest.approx(weight, abs=1e-6)


def test_dpo4_variants():
    # cDPO e=0.1: -0.9 log sigma(0.07) - 0.1 log sigma(-0.07) = 0.66576
    losses, _, _ = _dpo(-1.0, -2.0, -1.2, -1.5, beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.66576, abs=1e-5)
    # reference-free: z = 0.1*(-1.0 - -2.0) = 0.1 ; -log sigma(0.1) = 0.644397
    losses, _, _ = _dpo(-1.0, -2.0, -1.2, -1.5, beta=0.1, reference_free=True)
    assert losses.item() == pytest.approx(0.644397, abs=1e-6)


GRPO_CASES = {
    # id: (rewards, population advantages, sample (ddof=1) advantages)
    "GRPO-1": ([1, 1, 0], [0.707107, 0.707107, -1.414214], [0.57735, 0.57735, -1.154701]),
    "GRPO-2": ([0, 1, 0, 1], [-1, 1, -1, 1], [-0.866025, 0.866025, -0.866025, 0.866025]),
    "GRPO-3": ([4.2, 4.8, 2.1, 3.5], [0.546594, 1.142879, -1.540402, -0.149071],
               [0.473365, 0.989762, -1.334028, -0.129099]),
    "GRPO-4": ([1, 1, 0, 1, 0, 0], [1, 1, -1, 1, -1, -1], [0.912871, 0.912871, -0.912871,
                                                 0.912871, -0.912871, -0.912871]),
    "GRPO-5": ([3.0, 2.5, 0.5, 1.5], [1.1717, 0.650945, -1.432078, -0.390567],
               [1.014722, 0.563735, -1.240216, -0.338241]),
    "GRPO-9": ([1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]),
    "GRPO-13": ([1, 1, 0, 0], [1, 1, -1, -1], [0.866025, 0.866025, -0.866025, -0.866025]),
}


@pytest.mark.parametrize("vid", sorted(GRPO_CASES))
def test_grpo_group_advantages(vid):
    # e.g. GRPO-3: mean 3.65, population std sqrt(4.05/4) = 1.006231 -> (4.2-3.65)/1.006231 = 0.546594
    rewards, pop, sample = GRPO_CASES[vid]
    r = T(rewards, dtype=torch.float64)
    assert group_advantages(r, len(rewards), eps=0.0 if vid != "GRPO-9" else 1e-8).tolist() == pytest.approx(pop, abs=1e-5)
    assert group_advantages(r, len(rewards), std_ddof=1).tolist() == pytest.approx(sample, abs=1e-5)
    assert group_advantages(r, len(rewards)).sum().item() == pytest.approx(0.0, abs=1e-9)


def test_grpo6_composite_then_advantages():
    # totals = [1+1+1, 1+1+0.5, 0, 0+1+0] = [3, 2.5, 0, 1] -> A = [1.153113, 0.733799, -1.36277, -0.524142]
    comps = {"R1": [1, 1, 1], "R2": [1, 1, 0.5], "R3": [0, 0, 0], "R4": [0, 1, 0]}
    w = {"accuracy": 1.0, "format": 1.0, "style": 1.0}
    totals = [combine(dict(zip(w, c)), w) for c in comps.values()]
    assert totals == [3.0, 2.5, 0.0, 1.0]
    assert group_advantages(T(totals), 4).tolist() == pytest.approx([1.153113, 0.733799, -1.36277, -0.524142], abs=1e-5)


def test_grpo7_weighted_reward():
    # 0.4*1.0 + 0.3*0.8 + 0.2*0.9 + 0.1*0.7 = 0.4 + 0.24 + 0.18 + 0.07 = 0.89
    w = {"accuracy": 0.4, "elegance": 0.3, "efficiency": 0.2, "explanation": 0.1}
    s = {"accuracy": 1.0, "elegance": 0.8, "efficiency": 0.9, "explanation": 0.7}
    assert combine(s, w) == pytest.approx(0.89, abs=1e-12)


def test_grpo10_normalization_gives_unit_scale():
    # [0, 10] -> [-1, 1]; [0.5, 0.51] -> std 0.005 -> [-0.999998, 0.999998] (with eps 1e-8)
    a = group_advantages(T([0.0, 10.0, 0.5, 0.51], dtype=torch.float64), 2)
    assert a.tolist() == pytest.approx([-1.0, 1.0, -0.999998, 0.999998], abs=1e-6)


def test_grpo12_single_update_has_ratio_one_and_no_clipping():
    logprobs = torch.randn(4, 5)
    _, m = ppo_policy_loss(logprobs, logprobs.detach(), torch.randn(4), torch.ones(4, 5))
    assert m["ratio_mean"].item() == 1.0 and m["clip_fraction"].item() == 0.0


# The lecture's worked numbers, recomputed (data, ours): a copy lives in the repo so the test always runs; the
# design's original beside the checkout (../shared/seed/vectors.json), when present, must still equal it.
VECTORS = Path(__file__).resolve().parents[1] / "data" / "lecture_vectors.json"
SHARED_VECTORS = Path(__file__).resolve().parents[3] / "shared" / "seed" / "vectors.json"
COVERED = {"PG-1", "PPO-1", "PPO-2", "PPO-3", "PPO-4", "PPO-5", "PPO-6", "PPO-7", "PPO-8", "PPO-9", "GAE-1",
           "GAE-2", "GAE-3", "BT-1", "BT-2", "BT-3", "BT-4", "DPO-1", "DPO-2", "DPO-3", "DPO-4", "GRPO-1",
           "GRPO-2", "GRPO-3", "GRPO-4", "GRPO-5", "GRPO-6", "GRPO-7", "GRPO-9", "GRPO-10", "GRPO-12", "GRPO-13"}


def test_vectors_file_agrees_with_these_tests():
    """The hand-written expectations above are the file's exact values (guards against a copying slip)."""
    vectors = {v["id"]: v for v in json.loads(VECTORS.read_text())}
    assert COVERED <= set(vectors)
    for vid, (_rewards, pop, sample) in GRPO_CASES.items():
        ex = vectors[vid]["exact"]
        assert ex["A_population"] == pytest.approx(pop, abs=1e-6), vid
        assert ex["A_sample"] == pytest.approx(sample, abs=1e-6), vid
    assert vectors["GAE-2"]["exact"]["A0"] == pytest.approx(2.848839)
    assert vectors["PPO-6"]["exact"]["L_as_written"] == pytest.approx(-0.743)
    assert vectors["PPO-7"]["exact"]["new_beta"] == [0.04, 0.02, 0.01, 0.02, 0.02, 0.04]
    assert vectors["DPO-4"]["exact"]["label_smoothed_loss(e=0.1)"] == pytest.approx(0.66576)
    assert vectors["GRPO-6"]["exact"]["derived_A_population"] == pytest.approx([1.153113, 0.733799, -1.36277, -0.524142])


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="../shared/seed/vectors.json not beside the checkout")
def test_repo_copy_of_the_vectors_has_not_drifted():
    """tests/data/lecture_vectors.json is the design's seed/vectors.json: copy it again when that one changes."""
    assert json.loads(VECTORS.read_text()) == json.loads(SHARED_VECTORS.read_text())
