"""benchmarks/gpu_check.py: the bandwidth-limit, MFU and config arithmetic of the GPU check, at hand-computed values."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
_spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)


def test_param_counts_match_the_published_qwen25_sizes():
    # 0.5B: embedding 151936 * 896 = 136,134,656; per layer q 802,816 + k,v 229,376 + o 802,816 + qkv bias 1,152
    # + MLP 3 * 896 * 4864 = 13,074,432 + norms 1,792 = 14,912,384; x 24 + final norm 896; head tied
    assert gc.param_count(gc.QWEN25_05B) == 136_134_656 + 24 * 14_912_384 + 896 == 494_032_768
    # 1.5B: embedding 233,373,696; per layer 5,507,072 + 41,287,680 + 3,072 = 46,797,824; x 28 + 1,536
    assert gc.param_count(gc.QWEN25_15B) == 233_373_696 + 28 * 46_797_824 + 1_536 == 1_543_714_304


@pytest.mark.parametrize("name", ["tiny", "qwen2.5-0.5b", "qwen2.5-1.5b"])
def test_config_dicts_build_models_of_that_size(name):
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**gc.CONFIGS[name])
    with torch.device("meta"):  # shapes only: no memory
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == gc.param_count(gc.CONFIGS[name])


def test_tiny_config_is_hidden_64_two_layers():
    assert gc.TINY["hidden_size"] == 64 and gc.TINY["num_hidden_layers"] == 2


def test_decode_bytes_and_bandwidth_limit():
    cfg = gc.QWEN25_05B
    # K and V, 24 layers, 2 KV heads of 64 dims, 2 bytes: 2 * 24 * 2 * 64 * 2 = 12,288 bytes per context token
    assert gc.kv_bytes_per_token(cfg) == 12_288
    # 64 rows at 192 tokens of context: weights 494,032,768 * 2 + 64 * 192 * 12,288
    assert gc.decode_bytes_per_step(cfg, 64, 192) == 988_065_536 + 150_994_944 == 1_139_060_480
    # prompt 64 + half of 256 new tokens = 192 average context; H100 3350 GB/s -> 64 tokens per 0.34 ms step
    limit = gc.bandwidth_limit_tokens_per_s(cfg, 64, 64, 256, 3350.0)
    assert limit == pytest.approx(64 / (1_139_060_480 / 3.35e12))
    assert limit == pytest.approx(188_225, rel=1e-5)


def test_train_flops_and_mfu():
    # 6N + 12 L h T = 6 * 494,032,768 + 12 * 24 * 896 * 512
    assert gc.train_flops_per_token(gc.QWEN25_05B, 512) == 2_964_196_608 + 132_120_576
    # 10k tokens/s at 3 GFLOP each = 30 TFLOP/s of 989: 3.03%
    assert gc.mfu(10_000, 3e9, 989.0) == pytest.approx(30 / 989)


def test_gpu_peaks_by_name():
    assert gc.gpu_peaks("NVIDIA H100 80GB HBM3") == (3350.0, 989.0)
    assert gc.gpu_peaks("NVIDIA H200") == (4800.0, 989.0)
    assert gc.gpu_peaks("NVIDIA A100-SXM4-80GB") == (2039.0, 312.0)  # not A10's
    assert gc.gpu_peaks("Unknown GPU") == (None, None)
    assert gc.gpu_peaks("Unknown GPU", 1000.0, 100.0) == (1000.0, 100.0)


def test_digit_share_reward():
    assert gc.digit_share("a1b2") == 0.5
    assert gc._reward([[{"role": "assistant", "content": "12"}], ""]) == [1.0, 0.0]
