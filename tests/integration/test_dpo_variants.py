"""The DPO recipe's loss family (issue 20): every PREFERENCE_LOSSES key runs, SimPO and ORPO load no reference
and their held-out loss at step 0 equals the pure function on the initial model's logprobs and token counts,
options that do not apply are refused, the overfitting check fires on its pattern, and SimPO / ORPO learn on
the bundled model. One torch thread (see test_dpo.py)."""

import logging

import pytest
import torch

from alignkit.config import ConfigError, load_config
from alignkit.data.pairs import collate_pairs
from alignkit.losses.preference import PREFERENCE_LOSSES, PairLogps
from alignkit.models import BUNDLED_DIR, load_causal_lm, load_tokenizer
from alignkit.models.forwards import pair_logps
from alignkit.recipes import dpo
from alignkit.recipes.dpo import DPOConfig, OverfittingCheck
from tests.helpers import rows

FAST = ["model.path=bundled", "data.n_train=64", "data.n_eval=8", "data.max_length=64", "train.eval_generate=0",
        "train.eval_kl_prompts=0", "train.eval_every=1000", "output.tensorboard=false", "optim.warmup_steps=0",
        "optim.lr=1e-3", "train.batch_size=8"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(tmp_path, name, *overrides):
    return load_config(DPOConfig, None, FAST + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def held_out_by_hand(cfg, loss_type, **opts) -> float:
    """Mean held-out loss of the initial bundled model: plain [2B, T] batch, token counts from response masks."""
    tok = load_tokenizer(BUNDLED_DIR)
    model = load_causal_lm(BUNDLED_DIR).eval()
    _, eval_records = dpo.load_data(cfg.data, cfg.train.seed)
    pairs, _, _ = dpo.render_pairs(tok, eval_records, cfg.data)
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        pc, pr = pair_logps(model, batch).chunk(2)
    lc = torch.tensor([sum(p.chosen.response_mask[1:]) for p in pairs], dtype=torch.float32)
    lr = torch.tensor([sum(p.rejected.response_mask[1:]) for p in pairs], dtype=torch.float32)
    losses, _ = PREFERENCE_LOSSES[loss_type](PairLogps(pc, pr, lc, lr), **opts)
    return float(losses.mean())


@pytest.mark.parametrize("loss_type, options, by_hand", [
    ("sigmoid", ["loss.label_smoothing=0.1"], None),
    ("ipo", ["loss.beta=0.5"], None),
    ("simpo", ["loss.beta=2.0", "loss.gamma=0.3"], {"beta": 2.0, "gamma": 0.3}),
    ("orpo", ["loss.lam=0.2"], {"lam": 0.2}),
])
def test_each_loss_type_runs_with_its_reference_handling(tmp_path, monkeypatch, loss_type, options, by_hand):
    copies = []
    real = dpo.frozen_copy
    monkeypatch.setattr(dpo, "frozen_copy", lambda m: copies.append(1) or real(m))
    cfg = cfg_for(tmp_path, loss_type, "train.steps=2", "ref.mode=copy", f"loss.loss_type={loss_type}", *options)
    s = dpo.run(cfg)
    assert len(copies) == (0 if loss_type in ("simpo", "orpo") else 1)  # reference-free: no reference model
    last = rows(tmp_path / loss_type)[-1]
    for key in ("loss", "rewards/margin", "rewards/accuracy"):
        assert f"train/{key}" in last and f"eval/{key}" in last
    if by_hand is not None:
        assert s["start"]["eval/loss"] == pytest.approx(held_out_by_hand(cfg, loss_type, **by_hand), rel=1e-4)


@pytest.mark.parametrize("options, match", [
    (["loss.gamma=0.5"], "gamma"),
    (["loss.loss_type=simpo", "loss.lam=0.1"], "lam"),
    (["loss.loss_type=ipo", "loss.label_smoothing=0.1"], "label_smoothing"),
    (["loss.loss_type=orpo", "loss.label_smoothing=0.1"], "label_smoothing"),
    (["loss.loss_type=orpo", "loss.beta=0.5"], "no beta"),
    (["loss.loss_type=orpo", "loss.beta_final=0.5", "loss.beta_schedule=linear"], "no beta"),
    (["loss.loss_type=simpo", "loss.reference_free=true"], "reference_free"),
])
def test_options_that_do_not_apply_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        load_config(DPOConfig, None, options)


def test_overfitting_check_fires_when_held_out_accuracy_falls_as_training_accuracy_rises(caplog):
    caplog.set_level(logging.WARNING)
    check = OverfittingCheck()
    assert "eval/overfitting" not in check({"eval/rewards/accuracy": 0.5})  # before training
    outs = []
    for train, held_out in (([0.6, 0.7], 0.72), ([0.8], 0.70), ([0.9, 1.0], 0.62)):
        check.train_accuracy.extend(train)
        outs.append(check({"eval/rewards/accuracy": held_out})["eval/overfitting"])
    assert outs == [0.0, 0.0, 1.0]
    assert check.train_means == pytest.approx([0.65, 0.8, 0.95])
    assert "DPO is overfitting" in caplog.text
    fine = OverfittingCheck()
    for train, held_out in (([0.6], 0.6), ([0.7], 0.7), ([0.8], 0.8)):
        fine.train_accuracy.extend(train)
        assert fine({"eval/rewards/accuracy": held_out})["eval/overfitting"] == 0.0


@pytest.mark.parametrize("loss_type, options", [
    ("simpo", ["loss.beta=2.0", "loss.gamma=0.5"]),
    ("orpo", ["loss.lam=0.5"]),
])
def test_reference_free_losses_learn_the_preferred_format(tmp_path, loss_type, options):
    """25 steps on pairs preferring the R1 format over the right answer badly formatted (test_dpo's smoke
    setup): held-out reward accuracy (each loss's own implicit reward) and margin rise."""
    s = dpo.run(cfg_for(tmp_path, loss_type, f"loss.loss_type={loss_type}", *options, "data.n_train=400",
                        "data.n_eval=32", "data.rejected=bad_format", "train.steps=25", "train.batch_size=16",
                        "optim.warmup_steps=10", "train.eval_every=25"))
    a, b = s["start"], s["end"]
    print(f"\n{loss_type}: held-out reward accuracy {a['eval/rewards/accuracy']:.3f} -> "
          f"{b['eval/rewards/accuracy']:.3f}, margin {a['eval/rewards/margin']:.3f} -> {b['eval/rewards/margin']:.3f}")
    assert b["eval/rewards/margin"] > a["eval/rewards/margin"]
    assert b["eval/rewards/accuracy"] > a["eval/rewards/accuracy"] and b["eval/rewards/accuracy"] >= 0.95
