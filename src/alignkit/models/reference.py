"""The reference policy of KL-regularized methods (DPO, GRPO, PPO, ...), in three forms:

- a frozen copy of the initial policy (:func:`frozen_copy`): eval mode, no gradients, one extra forward;
- the policy itself with its LoRA adapters disabled (``policy.disable_adapter()``): no second model in memory;
- logprobs precomputed once and cached (:func:`reference_cache`, preference pairs): no reference model
  during training; keyed by pair index, reused when the data and model fingerprint match.

:func:`reference_logps` reads pair logprobs from any of them; :func:`completion_reference` gives completion
logprobs of a rollout batch from a copy or the adapter-disabled policy; :func:`eval_reference` the reference
for scoring fresh samples.
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from alignkit.data.pairs import Pair, collate_pairs, row_length
from alignkit.models.forwards import completion_logprobs, pair_logps


def frozen_copy(model):
    """A deep copy of the initial policy, eval mode, requires_grad off (take it before LoRA / fp32 masters)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def completion_reference(reference, policy, batch, rows, *, temperature: float, forward=completion_logprobs):
    """Reference logprobs [R, C] of ``rows`` of a rollout batch: ``forward`` through the frozen ``reference``,
    or, when it is None, through the plain ``policy`` with its LoRA adapters disabled."""
    if reference is not None:
        return forward(reference, batch, rows, temperature=temperature)
    with policy.disable_adapter():  # LoRA: the reference is the base model
        return forward(policy, batch, rows, temperature=temperature)


@torch.no_grad()
def reference_logps(batch: dict, *, mode: str, ref_model=None, policy=None, cache: dict | None = None,
                    split: str = "train") -> torch.Tensor:
    """[2B] reference logprobs of a concatenated batch: from the frozen copy, the adapter-disabled policy
    (``policy`` unwrapped from DDP), or the cache (``cache[f"{split}_chosen"]`` [N] by ``batch["index"]``)."""
    if mode == "precomputed":
        idx = batch["index"].cpu()
        return torch.cat([cache[f"{split}_chosen"][idx], cache[f"{split}_rejected"][idx]]).to(batch["input_ids"].device)
    if mode == "adapter":
        with policy.disable_adapter():
            return pair_logps(policy, batch)
    return pair_logps(ref_model, batch)


@torch.no_grad()
def precompute_logps(model, pairs: list[Pair], pad_token_id: int, *, batch_size: int, device,
                     share_prefix: bool = False, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [N], rejected [N]) summed logprobs of every pair under ``model`` (keyed by ``pair.index``), in
    batches of similar length (little padding). With ``world`` > 1 each process does every world-th batch;
    the caller sums across processes."""
    was_training = model.training
    model.eval()
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    by_length = sorted(pairs, key=lambda p: row_length(p, share_prefix))
    for n, start in enumerate(range(0, len(by_length), batch_size)):
        if n % world != rank:
            continue
        group = by_length[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(group, pad_token_id, share_prefix=share_prefix).items()}
        c, r = pair_logps(model, batch).float().cpu().chunk(2)
        idx = batch["index"].cpu()
        chosen[idx], rejected[idx] = c, r
    model.train(was_training)
    return chosen, rejected


def data_fingerprint(model_key: str, train: list[Pair], held_out: list[Pair]) -> str:
    """Hash of the model (``model_key``, e.g. its config as JSON) and every pair's token ids: a cache made for
    other data or another model is never reused."""
    h = hashlib.sha256(model_key.encode())
    for p in train + [None] + held_out:
        h.update(b"|" if p is None else json.dumps([p.chosen.input_ids, p.chosen.response_mask,
                                                     p.rejected.input_ids, p.rejected.response_mask]).encode())
    return h.hexdigest()


def reference_cache(acc, path: Path, fingerprint: str, reference, train: list[Pair], held_out: list[Pair],
                    pad_token_id: int, batch_size: int, share_prefix: bool) -> tuple[dict, bool]:
    """{train_chosen, train_rejected, eval_chosen, eval_rejected} [N] fp32 from ``path`` when its fingerprint
    matches, else computed with ``reference`` (one pass, shared across processes) and saved. -> (cache, reused)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return {k: f.get_tensor(k) for k in f.keys()}, True
    cache = {}
    for split, pairs in (("train", train), ("eval", held_out)):
        c, r = precompute_logps(reference, pairs, pad_token_id, batch_size=batch_size, device=acc.device,
                                share_prefix=share_prefix, rank=acc.process_index, world=acc.num_processes)
        if acc.num_processes > 1:  # each process filled its own batches, zeros elsewhere: a sum gathers them
            c, r = (acc.reduce(t.to(acc.device), reduction="sum").cpu() for t in (c, r))
        cache[f"{split}_chosen"], cache[f"{split}_rejected"] = c, r
    if acc.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(cache, str(tmp), metadata={"fingerprint": fingerprint})
        tmp.replace(path)
    return cache, False




@contextmanager
def eval_reference(policy, ref_model, load_initial, device):
    """The reference for evaluating fresh samples: the frozen copy, the adapter-disabled policy, or (cache /
    reference-free without LoRA) the initial model (``load_initial()``) for the duration of the ``with`` block."""
    if ref_model is not None:
        yield ref_model
    elif hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            yield policy
    else:
        model = load_initial().to(device).eval()
        yield model
        del model


