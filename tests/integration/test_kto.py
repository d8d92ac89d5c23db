"""KTO recipe (issue 20): the unpaired record kind, pairs split with data.from_pairs, a step equal to the pure
loss by hand (z0 from the batch rolled by one), the CLI command, and a learning check on the bundled model."""

import json

import pytest
import torch

from alignkit.config import load_config
from alignkit.data import DataError, load_records, parse_record, unpaired_from_pairs, write_jsonl
from alignkit.losses.kto import kto_loss, kto_reference_point
from alignkit.models import BUNDLED_DIR, load_causal_lm, load_tokenizer
from alignkit.recipes import kto
from alignkit.recipes.kto import KTOConfig
from tests.helpers import rows

FAST = ["data.n_train=32", "data.n_eval=8", "train.eval_every=1000", "output.tensorboard=false", "train.batch_size=8"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(tmp_path, name, *overrides):
    return load_config(KTOConfig, None, FAST + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def test_unpaired_rows_are_validated_and_pairs_split(tmp_path):
    rec = parse_record("unpaired", {"prompt": "2+2", "completion": "4", "label": True, "id": 7})
    assert (rec.prompt, rec.completion, rec.label, rec.extra) == ("2+2", "4", True, {"id": 7})
    for bad, field in (({"prompt": "2+2", "completion": "4", "label": "yes"}, "label"),
                       ({"prompt": "2+2", "completion": "4"}, "label"),
                       ({"prompt": "2+2", "completion": "", "label": False}, "completion"),
                       ({"prompt": "2+2", "chosen": "4", "rejected": "5"}, None)):
        with pytest.raises(DataError) as err:
            parse_record("unpaired", bad, source="f.jsonl", row=3)
        assert err.value.field == field and "f.jsonl, row 3" in str(err.value)
    write_jsonl([{"prompt": "a", "completion": "b", "label": False}], tmp_path / "u.jsonl")
    assert load_records(tmp_path / "u.jsonl", "unpaired")[0].label is False
    split = unpaired_from_pairs([{"prompt": "p", "chosen": "c", "rejected": "r", "k": 1}])
    assert [(u.prompt, u.completion, u.label, u.extra) for u in split] == [("p", "c", True, {"k": 1}),
                                                                          ("p", "r", False, {"k": 1})]


def test_one_step_by_hand_equals_the_recipe(tmp_path):
    """Step 1 by hand: z0 from the batch rolled by one under policy and reference (equal at step 0, so z0 = 0),
    kto_loss summed / B, one AdamW step; the recipe's final weights and logged loss match."""
    cfg = cfg_for(tmp_path, "step", "train.steps=1", "loss.beta=0.5", "loss.undesirable_weight=1.5", "optim.lr=1e-3",
                  "optim.warmup_steps=0")
    kto.run(cfg)
    tok = load_tokenizer(BUNDLED_DIR)
    train_records, _ = kto.load_data(cfg.data, cfg.train.seed)
    train, kept, _ = kto.render_examples(tok, train_records, cfg.data)
    idx = kto.ShuffledOrder(len(train), cfg.train.seed).take(8)
    examples, records = [train[i] for i in idx], [kept[i] for i in idx]
    model, ref = load_causal_lm(BUNDLED_DIR).train(), load_causal_lm(BUNDLED_DIR).eval()
    mis = kto.mismatched(tok, records, cfg.data)
    assert len(mis) == 8
    with torch.no_grad():
        z0 = kto_reference_point(kto.logps_of(model, mis, tok.pad_token_id, "cpu"),
                                 kto.logps_of(ref, mis, tok.pad_token_id, "cpu"))
        ref_lp = kto.logps_of(ref, examples, tok.pad_token_id, "cpu")
    assert float(z0) == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([r.label for r in records])
    losses, _ = kto_loss(kto.logps_of(model, examples, tok.pad_token_id, "cpu"), ref_lp, labels, kl_ref_point=z0,
                         beta=0.5, undesirable_weight=1.5)
    loss = losses.sum() / 8
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    opt.step()
    row = rows(tmp_path / "step")[1]
    assert row["train/loss"] == pytest.approx(float(loss), abs=1e-6)
    from safetensors.torch import load_file

    got = load_file(tmp_path / "step" / "final" / "model.safetensors")
    for name, p in model.state_dict().items():
        if name in got:
            assert torch.allclose(got[name], p, atol=5e-5), name


def test_from_pairs_file_and_cli(tmp_path, capsys):
    from alignkit.cli import main

    pairs = [{"prompt": f"{a}+{a}", "chosen": f"<answer>{2 * a}</answer>", "rejected": f"{2 * a + 1}"} for a in range(12)]
    write_jsonl(pairs, tmp_path / "pairs.jsonl")
    assert main(["kto", *FAST, "train.steps=2", f"data.train_file={tmp_path / 'pairs.jsonl'}", "data.from_pairs=true",
                 "data.eval_fraction=0.2", f"output.dir={tmp_path}", "output.name=cli"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    first = rows(tmp_path / "cli")[0]
    assert first["data/desirable"] > 0 and first["data/undesirable"] > 0
    last = rows(tmp_path / "cli")[-1]
    assert {"train/loss", "train/kl", "eval/rewards/margin", "eval/kl"} <= set(last)


def test_kto_learns_to_separate_desirable_from_undesirable(tmp_path):
    """25 steps on the synthetic arithmetic feedback: the held-out margin (mean beta * r of desirable minus
    undesirable examples) rises from 0."""
    s = kto.run(cfg_for(tmp_path, "learn", "data.n_train=200", "data.n_eval=32", "train.steps=25",
                        "train.eval_every=25", "train.batch_size=16"))
    a, b = s["start"]["eval/rewards/margin"], s["end"]["eval/rewards/margin"]
    print(f"\nKTO held-out margin {a:.3f} -> {b:.3f}")
    assert a == pytest.approx(0.0, abs=1e-5) and b >= 0.1
