"""Reward model (Bradley-Terry): learning, plain-transformers loading, ModelReward, one concatenated forward,
exact accumulation, resume, data errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.config import load_config
from alignkit.data import DataError
from alignkit.recipes import reward_model
from alignkit.recipes.reward_model import RMConfig

PRESET = "configs/rm/arith_tiny.yaml"
SMALL = ["model.path=tiny", "data.n_train=64", "data.n_eval=8", "output.tensorboard=false", "train.eval_every=1000",
         "optim.warmup_steps=2", "optim.lr=3e-3", "train.steps=6", "train.batch_size=8"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CI machine's 2 cores are shared: one thread is several times faster than two fighting for them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_cfg(tmp_path, name, *overrides):
    return load_config(RMConfig, None, SMALL + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def final_weights(run_dir):
    return load_file(Path(run_dir) / "final" / "model.safetensors")


def train_losses(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


class StopAfter:
    """Stands in for GracefulStop: "SIGTERM arrives" at the n-th poll of .requested (one poll per step)."""

    def __init__(self, n):
        self.n = n

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.n -= 1
        return self.n <= 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The preset as shipped (seed 0): 100 steps of 32 synthetic pairs."""
    out = tmp_path_factory.mktemp("rm")
    cfg = load_config(RMConfig, PRESET, [f"output.dir={out}", "output.name=preset"])
    return reward_model.run(cfg), out / "preset"


def test_preset_learns_held_out_preferences(trained):
    summary, run_dir = trained
    start, end = summary["start"], summary["end"]
    assert start["eval/accuracy"] < 0.7
    assert end["eval/accuracy"] >= 0.9  # 0.95 measured (seeds 0-3: 0.95, 0.94, 0.92, 1.0)
    assert end["eval/preference_prob"] > 0.8 and end["eval/margin"] > 1.0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 100 and {"train/loss", "train/accuracy", "train/margin"} <= set(rows[-1])
    for name in ("config.yaml", "summary.json", "curves.png", "tensorboard", "final/model.safetensors"):
        assert (run_dir / name).exists(), name


def test_final_model_loads_in_plain_transformers_and_model_reward_ranks_correct_first(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.data import make_split
    from alignkit.data.preferences import to_preference_records
    from alignkit.models.reward_fn import ModelReward

    final = trained[1] / "final"
    _, held_out = make_split(3200, 100, level=2, seed=0)
    pairs = to_preference_records(held_out[:8], seed=1)
    rm = ModelReward(str(final), batch_size=4)
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = rm.score_batch(prompts, [p["chosen"] for p in pairs]), rm.score_batch(
        prompts, [p["rejected"] for p in pairs])
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 7
    assert rm(pairs[0]["chosen"], prompt=pairs[0]["prompt"], answer="ignored") == pytest.approx(chosen[0], abs=1e-5)

    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    chat = [{"role": "user", "content": pairs[0]["prompt"]}, {"role": "assistant", "content": pairs[0]["chosen"]}]
    ids = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        plain = model(**ids).logits[0, 0].item()
    assert plain == pytest.approx(chosen[0], abs=1e-4)


def test_concatenated_forward_equals_separate_forwards():
    from alignkit.config import ModelSection
    from alignkit.data import make_problems, pad_batch
    from alignkit.data.preferences import to_preference_records
    from alignkit.models.reward import build_reward_model, sequence_scores

    model, tok = build_reward_model(ModelSection(path="tiny"))
    data = reward_model.DataSection()
    # level 1 and 2 mixed: sequences of different lengths, so padding differs between the three batchings
    records = to_preference_records(make_problems(6, level=[1, 2], seed=0), seed=0)
    pairs, _ = reward_model.render_pairs(tok, records, data)
    with torch.no_grad():
        chosen, rejected = reward_model.pair_scores(model, reward_model.collate(pairs, tok.pad_token_id))
        sep_c = pad_batch([p.chosen for p in pairs], pad_token_id=tok.pad_token_id)
        sep_r = pad_batch([p.rejected for p in pairs], pad_token_id=tok.pad_token_id)
        alone = [sequence_scores(model, torch.tensor([p.chosen.input_ids]), torch.ones(1, len(p.chosen), dtype=torch.long))
                 for p in pairs]
    torch.testing.assert_close(chosen, sequence_scores(model, sep_c["input_ids"], sep_c["attention_mask"]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, sequence_scores(model, sep_r["input_ids"], sep_r["attention_mask"]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(chosen, torch.cat(alone), atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [[], ["model.lora.enabled=true", "model.lora.r=4"]], ids=["full", "lora"])
def test_resume_gives_the_same_weights(tmp_path, monkeypatch, extra):
    reward_model.run(small_cfg(tmp_path, "straight", *extra))
    monkeypatch.setattr(reward_model, "GracefulStop", StopAfter(3))
    part = reward_model.run(small_cfg(tmp_path, "resumed", *extra))
    assert part["interrupted"] and part["steps"] == 3
    assert (tmp_path / "resumed" / "checkpoints" / "step-3" / "COMPLETE").is_file()
    assert not (tmp_path / "resumed" / "final").exists()
    monkeypatch.setattr(reward_model, "GracefulStop", StopAfter(10**9))
    reward_model.run(small_cfg(tmp_path, "resumed", "output.resume=true", *extra))
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")  # bit-identical on CPU
    a, b = final_weights(tmp_path / "resumed"), final_weights(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_1x8_equals_4x2(tmp_path):
    reward_model.run(small_cfg(tmp_path, "a1", "train.steps=3", "train.grad_accum=1"))
    reward_model.run(small_cfg(tmp_path, "a4", "train.steps=3", "train.grad_accum=4"))
    assert train_losses(tmp_path / "a1") == pytest.approx(train_losses(tmp_path / "a4"), abs=1e-6)
    a, b = final_weights(tmp_path / "a1"), final_weights(tmp_path / "a4")
    # Adam divides by sqrt(v): float reordering of ~1e-8 in a gradient element that is itself near 0 (~eps)
    # moves that weight by a visible share of one step (measured: 1 of 16384 elements of a layer, by 5e-5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preference_file_with_margins_trains_and_bad_rows_name_file_row_field(tmp_path):
    good = [{"prompt": f"{i}+1", "chosen": f"<answer>{i + 1}</answer>", "rejected": f"<answer>{i + 3}</answer>",
             "margin": 0.5 * (i % 3)} for i in range(12)]
    f = _write(tmp_path / "prefs.jsonl", good)
    s = reward_model.run(small_cfg(tmp_path, "file", f"data.train_file={f}", "data.eval_fraction=0.25",
                                   "train.steps=2", "train.batch_size=4"))
    assert s["steps"] == 2 and (tmp_path / "file" / "final" / "config.json").is_file()

    bad = _write(tmp_path / "bad.jsonl", good[:2] + [{**good[2], "rejected": ""}])
    with pytest.raises(DataError, match=r"bad\.jsonl, row 3, field 'rejected': must be a non-empty string"):
        reward_model.run(small_cfg(tmp_path, "bad", f"data.train_file={bad}"))
    bad_margin = _write(tmp_path / "bad_margin.jsonl", good[:4] + [{**good[4], "margin": "big"}])
    with pytest.raises(DataError, match=r"bad_margin\.jsonl, row 5, field 'margin': must be a finite number"):
        reward_model.run(small_cfg(tmp_path, "bad_margin", f"data.train_file={bad_margin}",
                                   "data.eval_fraction=0.2"))


def test_cli_lists_rm_and_its_options(capsys):
    from alignkit.cli import main

    assert main([]) == 0 and "rm " in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["rm", "--help"])
    assert exit_info.value.code == 0 and "data.margin_field" in capsys.readouterr().out


def test_synthetic_preference_examples():
    import doctest

    import alignkit.data.preferences as preferences

    assert doctest.testmod(preferences).failed == 0


def test_lora_trains_adapters_and_score_head_and_merged_final_scores_the_same(tmp_path, monkeypatch):
    """``model.lora.enabled``: only LoRA adapters and the score head (peft SEQ_CLS ``modules_to_save``) train;
    ``final/`` (adapters merged) loads with plain transformers and ModelReward and scores like the in-memory
    model did."""
    from transformers import AutoModelForSequenceClassification

    from alignkit.data import make_split
    from alignkit.data.preferences import to_preference_records
    from alignkit.infra import train
    from alignkit.models.reward_fn import ModelReward

    records = to_preference_records(make_split(16, 6, level=2, seed=3)[1], seed=3)
    seen = {}

    def prepare(model, cfg, **kw):
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return train.prepare_model(model, cfg, **kw)

    real_export = train.export_model

    def export(model):  # the trained, still wrapped model, just before the recipe merges and saves it
        seen["params"] = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
        pairs, _ = reward_model.render_pairs(seen["tokenizer"], records, reward_model.DataSection())
        seen["batch"] = reward_model.collate(pairs, seen["tokenizer"].pad_token_id)
        with torch.no_grad():
            seen["scores"] = reward_model.pair_scores(model.eval(), seen["batch"])
        return real_export(model)

    from alignkit.models import reward as reward_models

    def build(cfg, real=reward_models.build_reward_model, **kw):
        model, seen["tokenizer"] = real(cfg, **kw)
        return model, seen["tokenizer"]

    monkeypatch.setattr(reward_model, "prepare_model", prepare)
    monkeypatch.setattr(train, "export_model", export)  # what save_final calls
    monkeypatch.setattr(reward_models, "build_reward_model", build)
    reward_model.run(small_cfg(tmp_path, "lora", "model.lora.enabled=true", "model.lora.r=4"))

    before, params = seen["before"], seen["params"]
    trainable = {n for n, (_, grad) in params.items() if grad}
    assert trainable and all("lora_" in n or n == "base_model.model.score.modules_to_save.default.weight"
                             for n in trainable)
    assert "base_model.model.score.modules_to_save.default.weight" in trainable  # the head is not frozen
    assert not any(n.startswith("base_model.model.score.") and "lora_" in n for n in params)  # no head adapter
    for n, (value, grad) in params.items():
        if not grad:  # frozen: the trunk's own weights and the head's original copy are as built
            plain = n.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
            assert torch.equal(value, before[plain]), n
    assert not torch.equal(params["base_model.model.score.modules_to_save.default.weight"][0], before["score.weight"])
    assert any("lora_B" in n and value.abs().max() > 0 for n, (value, _) in params.items())  # B starts at 0

    final = tmp_path / "lora" / "final"
    merged = AutoModelForSequenceClassification.from_pretrained(final).eval()
    weights = merged.state_dict()
    assert weights.keys() == before.keys()  # no lora_ / modules_to_save keys: a plain reward model
    assert torch.equal(weights["score.weight"], params["base_model.model.score.modules_to_save.default.weight"][0])
    assert torch.equal(weights["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"],
                           before["model.layers.0.self_attn.q_proj.weight"])  # adapters merged in
    with torch.no_grad():
        chosen, rejected = reward_model.pair_scores(merged, seen["batch"])
    torch.testing.assert_close(chosen, seen["scores"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, seen["scores"][1], atol=1e-5, rtol=0)
    rm = ModelReward(str(final), batch_size=4)
    scored = rm.score_batch([r["prompt"] for r in records], [r["chosen"] for r in records])
    torch.testing.assert_close(torch.tensor(scored), seen["scores"][0], atol=1e-4, rtol=0)
