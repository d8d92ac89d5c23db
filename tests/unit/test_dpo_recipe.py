"""DPO recipe pieces: the lecture's worked examples through the recipe's loss path (collate -> one forward ->
split -> dpo_loss -> metrics), the gradient, the shared-prefix layout, the reference modes, beta schedule,
synthetic pairs and the bad-input policy."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from alignkit.config import ConfigError, LoraSection, ModelSection, load_config
from alignkit.data import DataError, RenderedExample, make_problems, pad_batch
from alignkit.data.pairs import common_prefix_length
from alignkit.infra.train import prepare_model
from alignkit.logprobs import sequence_logprobs
from alignkit.models import build_tiny
from alignkit.models.forwards import prefix_sharing_mask
from alignkit.models.reference import precompute_logps
from alignkit.recipes import dpo
from alignkit.recipes.dpo import DataSection, DPOConfig, LossSection, Pair
from alignkit.rewards import accuracy_reward, format_reward

PAD = 3


class LookupLM(torch.nn.Module):
    """A causal LM over 4 tokens whose next-token distribution is the same everywhere: p = probs.

    A pair is prompt [0] + response [1] (chosen) or [2] (rejected), so log pi(y_w | x) = log p[1] and
    log pi(y_l | x) = log p[2], exactly what the lecture's examples give.
    """

    def __init__(self, p_chosen: float, p_rejected: float):
        super().__init__()
        probs = torch.tensor([1e-6, p_chosen, p_rejected, 1.0 - 1e-6 - p_chosen - p_rejected], dtype=torch.float64)
        assert probs.min() > 0
        self.logits = torch.nn.Parameter(probs.log())
        self.config = SimpleNamespace(_attn_implementation="sdpa")

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=None):
        B, T = input_ids.shape
        keep = T if logits_to_keep is None else min(logits_to_keep, T)
        return SimpleNamespace(logits=self.logits.expand(B, keep, -1))


def lecture_pair_loss(policy, ref, *, share_prefix, **loss):
    """The recipe's path: collate -> pair_logps (one forward) -> reference_logps (mode copy) -> pair_loss."""
    pairs = [Pair(RenderedExample([0, 1], [0, 1]), RenderedExample([0, 2], [0, 1]), 0)]
    batch = dpo.collate(pairs, PAD, share_prefix=share_prefix)
    logps = dpo.pair_logps(LookupLM(*policy), batch)
    ref_logps = dpo.reference_logps(batch, mode="copy", ref_model=LookupLM(*ref))
    cfg = LossSection(**loss)
    losses, stats = dpo.pair_loss(logps, ref_logps, beta=cfg.beta, cfg=cfg)
    return losses.item(), {k: v.item() for k, v in stats.items()}


both_layouts = pytest.mark.parametrize("share_prefix", [False, True])


@both_layouts
def test_dpo1_poetry_implicit_rewards(share_prefix):
    # r_w = 0.1 * log(0.15 / 0.10) = 0.1 * 0.405465 = 0.040547; r_l = 0.1 * log(0.05 / 0.08) = -0.047000
    # margin = 0.087547; loss = -log sigma(0.087547) = 0.650331
    loss, s = lecture_pair_loss((0.15, 0.05), (0.10, 0.08), share_prefix=share_prefix, beta=0.1)
    assert s["rewards/chosen"] == pytest.approx(0.040547, abs=1e-6)
    assert s["rewards/rejected"] == pytest.approx(-0.047000, abs=1e-6)
    assert s["rewards/margin"] == pytest.approx(0.087547, abs=1e-6)
    assert loss == pytest.approx(0.650331, abs=1e-6)
    assert s["rewards/accuracy"] == 1.0


@both_layouts
def test_dpo2_ml_tutor_training_step(share_prefix):
    # log-ratios: w = -1.0 - (-1.2) = 0.2, l = -2.0 - (-1.5) = -0.5; margin = 0.1 * 0.7 = 0.07
    # confidence sigma(0.07) = 0.517493; loss = log(1 + e^-0.07) = 0.658760; grad weight 1 - 0.517493 = 0.482507
    e = math.exp
    loss, s = lecture_pair_loss((e(-1.0), e(-2.0)), (e(-1.2), e(-1.5)), share_prefix=share_prefix, beta=0.1)
    assert s["logps/chosen"] == pytest.approx(-1.0, abs=1e-6) and s["logps/rejected"] == pytest.approx(-2.0, abs=1e-6)
    assert s["rewards/margin"] == pytest.approx(0.07, abs=1e-6)
    assert s["rewards/confidence"] == pytest.approx(0.517493, abs=1e-6)
    assert s["rewards/grad_weight"] == pytest.approx(0.482507, abs=1e-6)
    assert loss == pytest.approx(0.658760, abs=1e-6)


@pytest.mark.parametrize("r_w, r_l, weight", [(0.1, 0.3, 0.549834), (0.4, 0.1, 0.425557), (0.8, -0.2, 0.268941)])
def test_dpo3_gradient_weights(r_w, r_l, weight):
    # beta = 0.1: a reward r is a log-ratio of r / 0.1, so pi = pi_ref * e^(10 r); weight = sigma(r_l - r_w)
    ref_w, ref_l = {0.1: 0.1, 0.4: 0.01, 0.8: 1e-4}[r_w], {0.3: 0.02, 0.1: 0.1, -0.2: 0.5}[r_l]
    policy = (ref_w * math.exp(10 * r_w), ref_l * math.exp(10 * r_l))
    _, s = lecture_pair_loss(policy, (ref_w, ref_l), share_prefix=True, beta=0.1)
    assert s["rewards/chosen"] == pytest.approx(r_w, abs=1e-6) and s["rewards/rejected"] == pytest.approx(r_l, abs=1e-6)
    assert s["rewards/grad_weight"] == pytest.approx(weight, abs=1e-6)


def test_dpo4_label_smoothing_reference_free_and_ipo():
    e = math.exp
    policy, ref = (e(-1.0), e(-2.0)), (e(-1.2), e(-1.5))
    # cDPO, e = 0.1, z = 0.07: 0.9 * 0.658760 + 0.1 * log(1 + e^0.07) = 0.9 * 0.658760 + 0.1 * 0.728760 = 0.665760
    loss, _ = lecture_pair_loss(policy, ref, share_prefix=True, beta=0.1, label_smoothing=0.1)
    assert loss == pytest.approx(0.66576, abs=1e-5)
    # reference-free: z = 0.1 * (-1.0 - (-2.0)) = 0.1; loss = log(1 + e^-0.1) = 0.644397
    loss, s = lecture_pair_loss(policy, ref, share_prefix=True, beta=0.1, reference_free=True)
    assert loss == pytest.approx(0.644397, abs=1e-6) and s["rewards/margin"] == pytest.approx(0.1, abs=1e-6)
    # IPO: h = 0.2 - (-0.5) = 0.7; (h - 1 / (2 * 0.1))^2 = (0.7 - 5)^2 = 18.49
    loss, _ = lecture_pair_loss(policy, ref, share_prefix=True, beta=0.1, loss_type="ipo")
    assert loss == pytest.approx(18.49, abs=1e-5)


def test_tie_counts_half_in_reward_accuracy():
    loss, s = lecture_pair_loss((0.2, 0.1), (0.2, 0.1), share_prefix=True, beta=0.1)  # policy == reference
    assert loss == pytest.approx(math.log(2)) and s["rewards/accuracy"] == 0.5 and s["rewards/confidence"] == 0.5


# ------------------------------------------------------------------------------------------------------------


def tiny_pairs(tokenizer, n=6, *, rejected="mixed", seed=0, max_length=64):
    records = dpo.arithmetic_preferences(make_problems(n, level=2, seed=seed), rejected=rejected, seed=seed)
    records.append({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "12+30"}],
                    "chosen": [{"role": "assistant", "content": "<think>12+30=42</think><answer>42</answer>"}],
                    "rejected": [{"role": "assistant", "content": "42"}]})
    pairs, _, counts = dpo.render_pairs(tokenizer, records, DataSection(max_length=max_length))
    assert counts == {"dropped": 0, "skipped_identical": 0}
    return pairs


def plain_sequence_logp(model, example: RenderedExample) -> torch.Tensor:
    """log pi(y | x) of ONE sequence in its own forward (the naive computation)."""
    b = pad_batch([example], pad_token_id=0)
    return (sequence_logprobs(model, b["input_ids"], b["attention_mask"]) * b["response_mask"]).sum()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_layout_equals_the_plain_concatenated_batch(attn):
    model, tok = build_tiny()
    model.config._attn_implementation = attn
    pairs = tiny_pairs(tok, 8)
    assert any(common_prefix_length(p.chosen.input_ids, p.rejected.input_ids) > 12 for p in pairs)
    with torch.no_grad():
        plain = dpo.pair_logps(model, dpo.collate(pairs, tok.pad_token_id))
        shared = dpo.pair_logps(model, dpo.collate(pairs, tok.pad_token_id, share_prefix=True))
        one_by_one = torch.stack([plain_sequence_logp(model, p.chosen) for p in pairs]
                                 + [plain_sequence_logp(model, p.rejected) for p in pairs])
    assert torch.allclose(shared, plain, atol=2e-5, rtol=0)
    assert torch.allclose(plain, one_by_one, atol=2e-5, rtol=0)


@both_layouts
def test_gradient_is_beta_sigma_weighted_difference_of_sequence_gradients(share_prefix):
    """grad_theta L = -(1/B) sum_i beta * sigma(r_l - r_w) * (grad log pi(y_w) - grad log pi(y_l)), each
    gradient computed separately from its own forward; autograd on the recipe's batch loss must match."""
    model, tok = build_tiny()
    model = model.double()
    pairs = tiny_pairs(tok, 3)
    ref_model = dpo.frozen_copy(model)
    with torch.no_grad():  # move the policy away from the reference so the weights are not all 1/2
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    beta, B = 0.5, len(pairs)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = dpo.collate(pairs, tok.pad_token_id, share_prefix=share_prefix)
    ref = dpo.reference_logps(batch, mode="copy", ref_model=ref_model)
    loss, _ = dpo.batch_loss(model, batch, ref, num_pairs=B, beta=beta, cfg=LossSection(beta=beta))
    autograd = torch.autograd.grad(loss, params)

    expected = [torch.zeros_like(p) for p in params]
    weights = []
    for i, pair in enumerate(pairs):
        lw, ll = plain_sequence_logp(model, pair.chosen), plain_sequence_logp(model, pair.rejected)
        gw, gl = torch.autograd.grad(lw, params), torch.autograd.grad(ll, params)
        r_w, r_l = beta * (lw.item() - ref[i].item()), beta * (ll.item() - ref[B + i].item())
        w = 1.0 / (1.0 + math.exp(-(r_l - r_w)))  # sigma(r_l - r_w)
        weights.append(w)
        for e, a, b in zip(expected, gw, gl):
            e += beta * w * (a - b) / B
    assert max(abs(w - 0.5) for w in weights) > 0.05
    scale = max(float(w.abs().max()) for w in expected)  # ~0.1
    for got, want in zip(autograd, expected):  # logprobs are computed in fp32 (selective_log_softmax)
        assert float((-got - want).abs().max()) < 1e-5 * scale


def test_reference_modes_give_the_same_logprobs_after_the_policy_moved():
    model, tok = build_tiny()
    copy_ref = dpo.frozen_copy(model)
    policy = prepare_model(model, ModelSection(path="tiny", lora=LoraSection(enabled=True, r=4)))
    pairs = tiny_pairs(tok, 5)
    chosen, rejected = precompute_logps(policy, pairs, tok.pad_token_id, batch_size=2, device="cpu",
                                            share_prefix=True)
    cache = {"train_chosen": chosen, "train_rejected": rejected}
    with torch.no_grad():  # "train" the adapters: the policy now differs from the reference
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    batch = dpo.collate(pairs[::-1], tok.pad_token_id, share_prefix=True)  # another order: the index keys it
    copy = dpo.reference_logps(batch, mode="copy", ref_model=copy_ref)
    adapter = dpo.reference_logps(batch, mode="adapter", policy=policy)
    pre = dpo.reference_logps(batch, mode="precomputed", cache=cache)
    assert torch.allclose(copy, adapter, atol=1e-5) and torch.allclose(copy, pre, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(dpo.pair_logps(policy, batch), copy, atol=1e-2)


def test_beta_schedules():
    const = LossSection(beta=0.3)
    assert [dpo.beta_at(s, 5, const) for s in range(5)] == [0.3] * 5
    lin = LossSection(beta=1.0, beta_final=0.2, beta_schedule="linear")
    assert [dpo.beta_at(s, 5, lin) for s in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    cos = LossSection(beta=1.0, beta_final=0.2, beta_schedule="cosine")
    # 0.2 + 0.8 * 0.5 * (1 + cos(pi * s / 4)): 1.0, 0.882843, 0.6, 0.317157, 0.2
    assert [dpo.beta_at(s, 5, cos) for s in range(5)] == pytest.approx([1.0, 0.882843, 0.6, 0.317157, 0.2], abs=1e-6)


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="beta_final"):
        load_config(DPOConfig, None, ["loss.beta_schedule=linear"])
    with pytest.raises(ConfigError, match="unknown key 'ref.kind'"):
        load_config(DPOConfig, None, ["ref.kind=copy"])
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(DPOConfig, None, ["loss.label_smoothing=0.5"])
    cfg = load_config(DPOConfig, None, ["model.path=tiny", "ref.mode=adapter"])
    with pytest.raises(ValueError, match="model.lora.enabled=true"):
        dpo.run(cfg)


def test_synthetic_pairs_prefer_the_correct_well_formatted_trace():
    problems = make_problems(200, level=2, seed=1)
    rows = dpo.arithmetic_preferences(problems, seed=3)
    assert rows == dpo.arithmetic_preferences(problems, seed=3)  # seeded
    assert {r["rejected_kind"] for r in rows} == {"wrong_answer", "bad_format"}
    for r in rows:
        assert format_reward(r["chosen"]) == 1.0 and accuracy_reward(r["chosen"], answer=r["answer"]) == 1.0
        preferred = format_reward(r["rejected"]) * accuracy_reward(r["rejected"], answer=r["answer"])
        assert preferred == 0.0 and r["rejected"] != r["chosen"]
    wrong = dpo.arithmetic_preferences(problems[:50], rejected="wrong_trace", seed=0)
    assert all(format_reward(r["rejected"]) == 1.0 and accuracy_reward(r["rejected"], answer=r["answer"]) == 0.0
               for r in wrong)
    with pytest.raises(ValueError, match="rejected must be"):
        dpo.arithmetic_preferences(problems, rejected="rude")


def test_bad_input_identical_pair_is_a_counted_logged_skip(caplog):
    _, tok = build_tiny()
    records = [{"prompt": "1+1", "chosen": "<answer>2</answer>", "rejected": "<answer>2</answer>"},
               {"prompt": "1+2", "chosen": "<answer>3</answer>", "rejected": "3"}]
    with caplog.at_level(logging.WARNING, logger="alignkit.recipes.dpo"):
        pairs, kept, counts = dpo.render_pairs(tok, records, DataSection())
    assert counts == {"dropped": 0, "skipped_identical": 1}
    assert len(pairs) == 1 and pairs[0].index == 0 and kept[0].prompt == "1+2"
    assert "row 1: chosen and rejected are identical" in caplog.text


def test_bad_input_empty_side_is_a_data_error_naming_the_field():
    _, tok = build_tiny()
    with pytest.raises(DataError, match=r"row 2, field 'rejected': must be a non-empty string"):
        dpo.render_pairs(tok, [{"prompt": "1+2", "chosen": "3", "rejected": "4"},
                               {"prompt": "1+1", "chosen": "2", "rejected": ""}], DataSection())


def test_bad_input_prompt_longer_than_max_length_errors_or_is_dropped():
    _, tok = build_tiny()
    records = [{"prompt": "1+" * 40 + "1", "chosen": "<answer>41</answer>", "rejected": "41"},
               {"prompt": "1+2", "chosen": "<answer>3</answer>", "rejected": "3"}]
    with pytest.raises(DataError, match=r"row 1: example is \d+ tokens, longer than max_length=32"):
        dpo.render_pairs(tok, records, DataSection(max_length=32))
    pairs, _, counts = dpo.render_pairs(tok, records, DataSection(max_length=32, on_overflow="drop"))
    assert counts == {"dropped": 1, "skipped_identical": 0} and len(pairs) == 1


def test_collate_layouts():
    _, tok = build_tiny()
    pairs = tiny_pairs(tok, 3)
    plain = dpo.collate(pairs, tok.pad_token_id)
    B = len(pairs)
    assert plain["input_ids"].shape[0] == 2 * B and plain["index"].tolist() == list(range(B))
    assert plain["input_ids"][0, :len(pairs[0].chosen)].tolist() == pairs[0].chosen.input_ids
    assert plain["input_ids"][B, :len(pairs[0].rejected)].tolist() == pairs[0].rejected.input_ids
    shared = dpo.collate(pairs, tok.pad_token_id, share_prefix=True)
    c, r = pairs[0].chosen, pairs[0].rejected
    S = common_prefix_length(c.input_ids, r.input_ids)
    row = shared["input_ids"][0, :len(c) + len(r) - S].tolist()
    assert row == c.input_ids + r.input_ids[S:]
    assert shared["position_ids"][0, len(c)].item() == S and shared["prev"][0, len(c)].item() == S - 1
    assert shared["chosen_mask"].sum() == plain["response_mask"][:B].sum()
    assert shared["rejected_mask"].sum() == plain["response_mask"][B:].sum()
    mask = prefix_sharing_mask(shared["segments"][:1], None)[0, 0]
    assert not mask[len(c), S:len(c)].any() and mask[len(c), :S].all()  # rejected never sees chosen's rest
