"""Where a model comes from: a GGUF file (a tiny one written here with the gguf package), a Hub id (never
fetched here: offline), a local directory; attn_implementation and chat_template from the config."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit.config import ModelSection, load_config
from alignkit.infra.train import save_final
from alignkit.models import build_tiny, load_causal_lm, load_policy, load_tokenizer
from alignkit.models.loading import model_source
from alignkit.recipes import sft
from alignkit.recipes.sft import SFTConfig

TEXT = "<|user|>12+3=? <think>ok</think><|end|>héllo"


def write_tiny_gguf(path, model, tok):
    """``model`` (a tiny llama) and ``tok`` as an all-F32 GGUF, the way llama.cpp's converter lays it out:
    llama.cpp tensor names, q/k rows permuted for its rotary layout, byte-level ('gpt2') vocabulary with
    control / user-defined token types, no merges, the chat template."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    inv = {i: t for t, i in tok.get_vocab().items()}
    ids, special, added = sorted(inv), set(tok.all_special_ids), set(tok.added_tokens_decoder)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([inv[i] for i in ids])
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED if i in added
                       else gguf.TokenType.NORMAL for i in ids])
    w.add_token_scores([0.0] * len(ids))  # no merges: transformers derives them (none) from the vocabulary
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    heads = {".q_proj.": c.num_attention_heads, ".k_proj.": c.num_key_value_heads}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        for key, n in heads.items():
            if key in name:
                a = a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model, tok = build_tiny()
    d = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(d / "tiny.gguf", model, tok)
    return d, model, tok


def logits(model, tok):
    with torch.no_grad():
        return model(torch.tensor([tok(TEXT).input_ids])).logits


def test_gguf_loads_model_and_tokenizer_from_the_file(tiny_gguf):
    d, ref, ref_tok = tiny_gguf
    model, tok = load_policy(ModelSection(path=str(d), gguf_file="tiny.gguf"))
    assert model.dtype == torch.float32 and getattr(model, "hf_quantizer", None) is None
    assert tok(TEXT).input_ids == ref_tok(TEXT).input_ids
    assert tok.chat_template == ref_tok.chat_template and tok.eos_token == ref_tok.eos_token
    torch.testing.assert_close(logits(model, tok), logits(ref, ref_tok), atol=1e-5, rtol=0)
    by_file, _ = load_policy(ModelSection(path=str(d / "tiny.gguf")))  # gguf_file inferred
    torch.testing.assert_close(logits(by_file, tok), logits(model, tok), atol=0, rtol=0)
    assert load_policy(ModelSection(path=str(d), gguf_file="tiny.gguf", dtype="bfloat16"))[0].dtype == torch.bfloat16


def test_gguf_model_saves_as_plain_safetensors(tiny_gguf, tmp_path):
    d, _, _ = tiny_gguf
    model, tok = load_policy(ModelSection(path=str(d / "tiny.gguf")))
    save_final(model, tok, tmp_path)
    assert (tmp_path / "final" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    torch.testing.assert_close(logits(reloaded, tok), logits(model, tok), atol=0, rtol=0)
    assert load_tokenizer(tmp_path / "final")(TEXT).input_ids == tok(TEXT).input_ids


def test_sft_trains_a_gguf_model(tiny_gguf, tmp_path):
    d, _, _ = tiny_gguf
    cfg = load_config(SFTConfig, None, [
        "data.n_train=16", "data.n_eval=4", "train.eval_generate=0", "output.tensorboard=false", "train.steps=2",
        "train.batch_size=4", "optim.warmup_steps=1", f"output.dir={tmp_path}", "output.name=g",
        f"model.path={d}", "model.gguf_file=tiny.gguf"])
    sft.run(cfg)
    assert (tmp_path / "g" / "final" / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "g" / "final").config.vocab_size == 267


def test_gguf_errors_say_what_is_there(tiny_gguf):
    d, _, _ = tiny_gguf
    with pytest.raises(FileNotFoundError, match=r"GGUF file 'other.gguf' not found .*tiny.gguf"):
        load_policy(ModelSection(path=str(d), gguf_file="other.gguf"))
    with pytest.raises(FileNotFoundError, match="has no config.json but holds .*tiny.gguf.*set model.gguf_file"):
        load_policy(ModelSection(path=str(d)))
    with pytest.raises(ValueError, match="model.gguf_file names 'x.gguf'"):
        model_source(d / "tiny.gguf", "x.gguf")


def test_hub_id_offline_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    src = model_source("nobody-xyz/no-such-model")
    assert not src.local and src.location == "nobody-xyz/no-such-model"
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(FileNotFoundError, match="neither a local directory nor available from the Hub "
                                                    r"\(HF_HUB_OFFLINE is set") as err:
            load("nobody-xyz/no-such-model")
        assert "\n" not in str(err.value) and err.value.__cause__ is None


def test_hub_id_goes_to_from_pretrained_with_the_cache(monkeypatch):
    seen = {}

    def fake(location, **kwargs):
        seen.update(location=location, **kwargs)
        return build_tiny()[0]

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", attn_implementation="sdpa")
    assert seen["location"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "local_files_only" not in seen and seen["attn_implementation"] == "sdpa"


def test_a_missing_path_that_is_no_hub_id():
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub id"):
        model_source("./no/such/dir")


def test_attn_implementation_reaches_the_model(tmp_path):
    build_tiny(tmp_path)
    for impl in ("eager", "sdpa"):
        model, _ = load_policy(ModelSection(path=str(tmp_path), attn_implementation=impl))
        assert model.config._attn_implementation == impl
    assert load_policy(ModelSection(path="tiny", attn_implementation="sdpa"))[0].config._attn_implementation == "sdpa"


def test_chat_template_from_a_file_or_a_string(tmp_path):
    build_tiny(tmp_path / "m")
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    (tmp_path / "t.jinja").write_text(template)
    msgs = [{"role": "user", "content": "hi"}]
    for value in (str(tmp_path / "t.jinja"), template):
        for path in (str(tmp_path / "m"), "tiny"):
            _, tok = load_policy(ModelSection(path=path, chat_template=value))
            assert tok.apply_chat_template(msgs, tokenize=False) == "[user]hi"
    with pytest.raises(FileNotFoundError, match="neither a file nor a Jinja template"):
        load_policy(ModelSection(path=str(tmp_path / "m"), chat_template=str(tmp_path / "missing.jinja")))


def test_a_tokenizer_without_template_keeps_none(tmp_path):
    _, tok = build_tiny()
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).chat_template is None


def test_reward_model_trunk_from_a_gguf(tiny_gguf):
    from alignkit.models.reward import build_reward_model

    d, ref, ref_tok = tiny_gguf
    model, tok = build_reward_model(ModelSection(path=str(d / "tiny.gguf")))
    assert type(model).__name__ == "LlamaForSequenceClassification" and tok.pad_token_id == ref_tok.pad_token_id
    torch.testing.assert_close(model.model.embed_tokens.weight, ref.model.embed_tokens.weight, atol=0, rtol=0)
