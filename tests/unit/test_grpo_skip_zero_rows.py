"""GRPO's exact fast path (``loss.skip_zero_advantage_rows``): with beta = 0 the update forwards only the rows
whose advantage is nonzero, and ends where the full update ends, on the bundled tiny model: a mix of all-equal
and differing groups (mu = 2, several micro-batches), a step with a gradient followed by an all-zero step
(Adam's momentum still moves the weights), and with beta > 0 every row is forwarded."""

import pytest
import torch

from alignkit.config import load_config
from alignkit.recipes import grpo
from alignkit.recipes.grpo import GRPOConfig
from alignkit.rollout.batches import GroupBatch
from tests.helpers import final_weights, rows

SMALL = ["rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=12", "data.n_train=64",
         "data.n_eval=4", "train.eval_every=1000", "output.tensorboard=false", "loss.beta=0",
         "reward.success_key=none"]
ROWS = 16  # prompts_per_step x group_size

# Adam's first steps move each weight by ~lr whatever its gradient's scale, so a rounding-level difference in
# a near-zero gradient element (the sums run over fewer rows) shows at up to ~lr / 40 (tests/integration/
# test_grpo.py); lr 1e-5 keeps that under the 1e-6 bound, while a missed step, a wrong row or a lost momentum
# moves weights by ~lr. A wrong normalization is scale-only, which Adam hides: train/grad_norm catches it.
LR = "optim.lr=1e-5"


def mixed_reward(completion, answer=None, **fields):
    """Equal within the groups of even answers (zero advantage), differing (by completion length) elsewhere."""
    return 1.0 if int(answer) % 2 == 0 else float(len(completion) % 3)


def varied_then_flat():
    """The first step's 16 samples score by length, every later one 1.0 (all groups all-equal)."""
    calls = []

    def reward(completion, **fields):
        calls.append(1)
        return float(len(completion) % 3) if len(calls) <= ROWS else 1.0
    return reward


def run_pair(tmp_path, monkeypatch, name, reward_for, *overrides):
    """The same seeded run with the fast path on and off -> ({on, off}: logged rows, weights, rows per forward)."""
    forwarded = []
    real = grpo.completion_logprobs

    def spy(model, batch, sl, **kw):
        out = real(model, batch, sl, **kw)
        forwarded.append((out[0] if isinstance(out, tuple) else out).shape[0])
        return out

    monkeypatch.setattr(grpo, "completion_logprobs", spy)
    got = {}
    for switch in ("true", "false"):
        forwarded.clear()
        cfg = load_config(GRPOConfig, None, SMALL + [f"output.dir={tmp_path}", f"output.name={name}-{switch}",
                                                     f"loss.skip_zero_advantage_rows={switch}", *overrides])
        grpo.run(cfg, reward_funcs={"r": reward_for()})
        got[switch] = rows(tmp_path / f"{name}-{switch}")[1:], final_weights(tmp_path / f"{name}-{switch}"), list(forwarded)
    return got["true"], got["false"]


def assert_same_run(fast, naive):
    (a, wa, _), (b, wb, _) = fast, naive
    assert [x["reward/total"] for x in a] == [x["reward/total"] for x in b]  # the same samples
    # the loss sums per-token terms of a few units in fp32 over micro-batches of other rows: rounding ~1e-7
    assert [x["train/loss"] for x in a] == pytest.approx([x["train/loss"] for x in b], abs=1e-6)
    assert [x["train/grad_norm"] for x in a] == pytest.approx([x["train/grad_norm"] for x in b], rel=1e-5, abs=1e-9)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print("largest weight difference, fast vs full update:", worst)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), (k, (wa[k] - wb[k]).abs().max())


def test_mixed_groups_mu_2_micro_batches_match_the_full_update(tmp_path, monkeypatch):
    fast, naive = run_pair(tmp_path, monkeypatch, "mixed", lambda: mixed_reward, "train.steps=3", "loss.mu=2",
                           "loss.micro_batch_size=3", LR)
    assert_same_run(fast, naive)
    logged, _, forwarded = fast
    share = [x["train/active_rows"] for x in logged]
    assert all(0 <= s <= 1 for s in share) and any(0 < s < 1 for s in share), share  # some rows skipped, not all
    assert sum(forwarded) == 2 * sum(round(s * ROWS) for s in share)  # mu = 2 forwards per step, active rows only
    assert all(x["train/active_rows"] == 1.0 for x in naive[0]) and sum(naive[2]) == 2 * 3 * ROWS


def test_all_zero_step_after_a_gradient_step_still_steps_adam(tmp_path, monkeypatch):
    fast, naive = run_pair(tmp_path, monkeypatch, "flat", varied_then_flat, "train.steps=3", LR)
    assert_same_run(fast, naive)
    logged, _, forwarded = fast
    assert logged[0]["groups/zero_variance"] < 1 and logged[0]["train/active_rows"] > 0
    assert [x["train/active_rows"] for x in logged[1:]] == [0.0, 0.0]  # no forward at all ...
    assert all("train/entropy" not in x for x in logged[1:])
    assert sum(forwarded) == round(logged[0]["train/active_rows"] * ROWS)
    # ... and yet the weights moved on those steps (momentum), as they do in the full update
    assert [x["train/skipped"] for x in logged] == [0, 0, 0]


def test_beta_above_zero_forwards_every_row(tmp_path, monkeypatch):
    fast, naive = run_pair(tmp_path, monkeypatch, "beta", lambda: mixed_reward, "train.steps=1", "loss.beta=0.1")
    assert fast[0][0]["train/active_rows"] == 1.0 and fast[2] == [ROWS]
    assert fast[0][0]["train/loss"] == naive[0][0]["train/loss"]


def test_active_rows_and_select_rows():
    adv = torch.tensor([0.0, 1.0, -0.5, 0.0, float("nan")])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1], [1, 1]])
    assert grpo.active_rows(adv, mask).tolist() == [1, 4]  # row 2: no token; NaN is forwarded (the guard sees it)
    token_adv = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert grpo.active_rows(token_adv, mask).tolist() == []  # row 1's nonzero entry is masked; row 2 has no token
    batch = GroupBatch(torch.arange(10).view(5, 2), torch.ones(5, 2), torch.arange(15).view(5, 3),
                            torch.ones(5, 3), list("abcde"), ["stop"] * 5, [2, 3])
    sub = grpo.select_rows(batch, torch.tensor([1, 2, 4]))
    assert sub.prompt_ids.tolist() == [[2, 3], [4, 5], [8, 9]] and sub.completion_ids.shape == (3, 3)
    assert sub.completions == ["b", "c", "e"] and sub.group_sizes == [1, 2]
