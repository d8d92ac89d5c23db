"""LoRA outputs: final/ holds the merged model and final/adapter the adapter alone (peft loads it onto the
base and gives the merged model's logits); lora.adapter_path starts a run from a saved adapter."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from alignkit.config import LoraSection, ModelSection, load_config
from alignkit.infra.train import prepare_model
from alignkit.models import build_tiny
from alignkit.recipes import sft
from alignkit.recipes.sft import SFTConfig

FAST = ["data.n_train=32", "data.n_eval=8", "train.eval_generate=0", "output.tensorboard=false",
        "train.eval_every=1000", "optim.warmup_steps=1", "optim.lr=1e-2", "train.batch_size=8",
        "model.path=tiny", "model.lora.enabled=true", "model.lora.r=4"]


def cfg_for(tmp_path, name, *overrides):
    return load_config(SFTConfig, None, FAST + [f"output.dir={tmp_path}", f"output.name={name}", *overrides])


def test_final_adapter_loads_with_peft_and_a_run_continues_from_it(tmp_path):
    first = sft.run(cfg_for(tmp_path, "a", "train.steps=3"))
    final = tmp_path / "a" / "final"
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert (final / "adapter" / "adapter_model.safetensors").is_file()

    ids = torch.tensor([[5, 40, 41, 42, 60, 61, 3, 70]])
    base = build_tiny()[0]  # model.path=tiny is build_tiny's seed-0 model
    with torch.no_grad():
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, final / "adapter").eval()(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(final)(ids).logits
    torch.testing.assert_close(peft_logits, merged_logits, atol=1e-5, rtol=0)
    assert (peft_logits - base_logits).abs().max() > 1e-3  # the adapter is not a no-op

    second = sft.run(cfg_for(tmp_path, "b", "train.steps=1", f"model.lora.adapter_path={final / 'adapter'}"))
    # the second run starts where the first ended: same held-out loss before its first step
    assert second["start"]["eval/loss"] == pytest.approx(first["end"]["eval/loss"], abs=1e-5)
    assert (tmp_path / "b" / "final" / "adapter" / "adapter_config.json").is_file()


def test_adapter_path_trains_the_loaded_adapter(tmp_path):
    model, _ = build_tiny()
    model = prepare_model(model, ModelSection(path="tiny", lora=LoraSection(enabled=True, r=2)))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    model.save_pretrained(tmp_path / "ad")
    cfg = ModelSection(path="tiny", lora=LoraSection(enabled=True, r=8, adapter_path=str(tmp_path / "ad")))
    loaded = prepare_model(build_tiny()[0], cfg)
    trainable = {n: p for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert loaded.peft_config["default"].r == 2  # the adapter's own rank, not the config's 8
    assert all(float(p.detach().min()) == pytest.approx(0.01) for n, p in trainable.items() if "lora_B" in n)


def test_adapter_path_needs_lora_enabled_and_an_adapter(tmp_path):
    with pytest.raises(ValueError, match="adapter_path needs model.lora.enabled=true"):
        prepare_model(build_tiny()[0], ModelSection(path="tiny", lora=LoraSection(adapter_path=str(tmp_path))))
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        prepare_model(build_tiny()[0], ModelSection(
            path="tiny", lora=LoraSection(enabled=True, adapter_path=str(tmp_path))))
