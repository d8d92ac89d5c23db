"""rollout.backend=vllm: refused by the training recipes (nothing syncs weights into vLLM), kept for sampling
from a fixed model by path (rejection sampling), where a missing vLLM is a clear error."""

import importlib.util

import pytest

from alignkit.config import ConfigError, ModelSection, load_config
from alignkit.models import load_vllm
from alignkit.recipes.grpo import GRPOConfig
from alignkit.recipes.ppo import PPOConfig
from alignkit.recipes.rejection_sampling import RejectionSamplingConfig


@pytest.mark.parametrize("config,name", [(GRPOConfig, "GRPO"), (PPOConfig, "PPO")])
def test_training_recipes_refuse_vllm_with_the_reason(config, name):
    with pytest.raises(ConfigError, match=f"rollout.backend.*vllm cannot sample for {name} training yet: "
                                          "nothing syncs the trained weights into vLLM") as err:
        load_config(config, None, ["rollout.backend=vllm"])
    assert "\n" not in str(err.value)
    assert load_config(config, None, ["rollout.backend=hf"]).rollout.backend == "hf"


def test_rejection_sampling_keeps_vllm():
    assert load_config(RejectionSamplingConfig, None, ["sampling.backend=vllm"]).sampling.backend == "vllm"
    with pytest.raises(ValueError, match="not model.path=tiny"):
        load_vllm(ModelSection(path="tiny"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_load_vllm_without_vllm_says_what_to_install():
    with pytest.raises(ImportError, match=r"pip install 'alignkit\[vllm\]'"):
        load_vllm(ModelSection(path="bundled"))
