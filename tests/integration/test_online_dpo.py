"""Online DPO (issue 20): pairs from the policy's own samples, ties dropped and counted, the CLI command,
reference-free losses load no reference, and a learning check on the bundled model."""

import json

import pytest
import torch

from alignkit.config import load_config
from alignkit.recipes import online_dpo
from alignkit.recipes.online_dpo import OnlineDPOConfig
from tests.helpers import rows, series

SMALL = ["rollout.prompts_per_step=8", "rollout.group_size=4", "rollout.max_new_tokens=24", "data.n_train=400",
         "data.n_eval=4", "data.levels=[1]", "train.eval_every=1000", "output.tensorboard=false"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(tmp_path, name, *overrides):
    return load_config(OnlineDPOConfig, None, SMALL + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def test_tied_groups_are_dropped_and_counted(tmp_path):
    online_dpo.run(cfg_for(tmp_path, "tied", "train.steps=2"), reward_funcs={"constant": lambda completion, **kw: 1.0})
    for row in rows(tmp_path / "tied")[1:]:
        assert row["pairs/tied"] == 8 and row["pairs/used"] == 0 and row["train/skipped"] == 1


def test_pairs_train_with_each_loss_and_the_reference_only_when_used(tmp_path, monkeypatch):
    copies = []
    real = online_dpo.frozen_copy
    monkeypatch.setattr(online_dpo, "frozen_copy", lambda m: copies.append(1) or real(m))
    for loss in ("sigmoid", "simpo"):
        online_dpo.run(cfg_for(tmp_path, loss, "train.steps=2", f"loss.loss_type={loss}"))
        row = rows(tmp_path / loss)[-1]
        assert row["pairs/used"] + row["pairs/tied"] == 8
        if row["pairs/used"]:
            assert {"train/loss", "train/rewards/margin", "train/rewards/accuracy"} <= set(row)
    assert len(copies) == 1  # sigmoid's reference; simpo loads none


def test_cli_runs_online_dpo(tmp_path, capsys):
    from alignkit.cli import main

    assert main(["online-dpo", *SMALL, "train.steps=1", f"output.dir={tmp_path}", "output.name=cli"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1


def test_online_dpo_raises_the_sampled_reward(tmp_path):
    """25 seeded steps, accuracy + format rewards on level-1 arithmetic: the sampled reward of the last 5 steps
    beats the first 5."""
    online_dpo.run(cfg_for(tmp_path, "learn", "train.steps=25", "optim.lr=3e-4"))
    reward = series(tmp_path / "learn", "reward/total")
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    print(f"\nonline DPO: reward/total first 5 steps {first:.3f} -> last 5 {last:.3f}")
    assert last >= first + 0.2
