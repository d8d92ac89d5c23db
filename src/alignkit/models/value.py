"""PPO's critic V_phi(s_t): a per-token value model (lecture section 1, "the food critic").

Two forms, one output layout:

- ``ValueModel``: its own transformer trunk (a transformers base model, e.g. ``AutoModel.from_pretrained(path)``
  or the ``.model`` of a causal LM, copied) plus ``Linear(hidden, 1)``. Built from the policy's starting
  weights (``from_causal_lm``), a model directory, or a trained reward model (``alignkit rm``: its
  ``score`` weights start the head, as InstructGPT starts the critic from the reward model).
- ``SharedValueHead``: only the ``Linear(hidden, 1)``, reading the policy's own last hidden state (the one
  its LM head reads), captured by a forward hook during the policy's forward: one trunk, one forward.

Layout (aligned like ``alignkit.logprobs``): for ``input_ids`` [B, T],

    values[b, t] = V(input_ids[b, :t])    the value of the state token t is generated from
    values[b, t] = 0                      at padding and at each row's first real token (no state before it)

i.e. the head's output at position t - 1, shifted right by one; so a ``response_mask`` aligned with the tokens
selects V(s_t) for each response token a_t, the value GAE pairs with that token's reward.

Saved with safetensors: ``ValueModel.save_pretrained(dir)`` writes the trunk as a transformers model
(``config.json`` + ``model.safetensors``) and the head as ``value_head.safetensors``; ``from_pretrained``
reads both back. Why not ``*ForSequenceClassification`` (as the reward model is): it returns the
score at every position already, but only its last-token score is what the rest of the ecosystem understands,
and PPO needs every position; the head kept apart keeps the trunk a plain base model that any tool loads.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

HEAD_FILE = "value_head.safetensors"


def _aligned(head_out: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """[B, T] head outputs at positions 0..T-1 -> aligned values: shifted right by one, kept where token t has a
    token of its own sequence before it (padded rows: t and t-1 real, as ``alignkit.logprobs.predicted_mask``;
    packed rows: position > 0), else 0."""
    shifted = torch.cat([head_out.new_zeros(head_out.shape[0], 1), head_out[:, :-1]], dim=1)
    m = attention_mask.bool()
    if position_ids is not None:
        return shifted * (m & (position_ids > 0))
    return shifted * (m & torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1))


def _new_head(hidden_size: int, *, std: float, seed: int) -> nn.Linear:
    """Linear(hidden, 1): weight ~ normal(0, std) (seeded; the global RNG is left untouched), bias 0; std 0 gives
    a zero head, whose values are 0 until the value loss moves it (what PPO's recipe uses by default)."""
    head = nn.Linear(hidden_size, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nn.init.normal_(head.weight, std=std) if std > 0 else nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def _std(config, std: float | None) -> float:
    """The new head's init std: as given, else the model's ``initializer_range`` (0.02 when it has none)."""
    return getattr(config, "initializer_range", 0.02) if std is None else std


class ValueModel(nn.Module):
    """A transformer trunk + ``Linear(hidden, 1)``: ``forward(input_ids, attention_mask) -> values [B, T]``.

        critic = ValueModel.from_causal_lm(policy)                  # a copy of the policy's trunk, new head
        critic = ValueModel.from_pretrained("runs/rm/final")        # trunk (+ head) of a reward model dir
        values = critic(input_ids, attention_mask)                  # [B, T] fp32, see the module docstring
    """

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.head = head

    @classmethod
    def from_causal_lm(cls, causal_lm, *, seed: int = 0, std: float | None = None) -> ValueModel:
        """A deep copy of the causal LM's trunk (``causal_lm.model``; its LM head is not used) and a new head
        (weights ~ normal(0, std); std None = the model's ``initializer_range``; 0 = zeros)."""
        trunk = copy.deepcopy(causal_lm.get_decoder())
        return cls(trunk, _new_head(causal_lm.config.hidden_size, std=_std(causal_lm.config, std), seed=seed))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                        trust_remote_code: bool = False, std: float | None = None) -> ValueModel:
        """Trunk from a model directory (a causal LM, a reward model or a saved ValueModel) and the head from
        ``value_head.safetensors`` if there is one, else from a reward model's ``score`` weight, else new
        (``std`` as in ``from_causal_lm``)."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"value model directory not found or has no config.json: {p}")
        trunk = AutoModel.from_pretrained(p, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code,
                                          use_safetensors=True if any(p.glob("*.safetensors")) else None)
        config = trunk.config
        head = _new_head(config.hidden_size, std=_std(config, std), seed=seed)
        if (p / HEAD_FILE).is_file():
            head.load_state_dict(load_file(p / HEAD_FILE))
        else:
            score = _reward_score_weight(p)
            if score is not None:
                with torch.no_grad():
                    head.weight.copy_(score.to(head.weight.dtype))
        return cls(trunk, head.to(dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned values [B, T] fp32 (0 at each sequence's first token and at padding). Padded rows: positions
        ``cumsum(attention_mask) - 1``, as in ``alignkit.logprobs``, so left and right padding give the same.
        Packed rows (several sequences per row, see ``alignkit.data.packing``): pass ``position_ids``
        restarting at 0 per sequence; the trunk then attends within each sequence only."""
        packed = position_ids is not None
        if not packed:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.trunk(input_ids=input_ids, attention_mask=None if packed else attention_mask,
                            position_ids=position_ids, use_cache=False).last_hidden_state
        return _aligned(self.head(hidden).squeeze(-1).float(), attention_mask, position_ids if packed else None)

    def save_pretrained(self, path: str | Path) -> None:
        """Trunk as a transformers model directory (safetensors) + ``value_head.safetensors``."""
        from safetensors.torch import save_file

        p = Path(path)
        self.trunk.save_pretrained(p, safe_serialization=True)
        save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, p / HEAD_FILE)


class SharedValueHead(nn.Module):
    """``Linear(hidden, 1)`` on the policy's last hidden state (the shared-trunk critic).

        head = SharedValueHead.for_policy(policy)
        with head.capture(policy):
            logprobs = sequence_logprobs(policy, ids, mask)      # the policy's forward, as usual
        values = head.values(mask)                                # [B, T], same layout as ValueModel

    The value loss then trains the head and, through the hidden state, the policy's trunk too.
    """

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head
        self._hidden: torch.Tensor | None = None

    @classmethod
    def for_policy(cls, causal_lm, *, seed: int = 0, std: float | None = None) -> SharedValueHead:
        """A new head for ``causal_lm``'s hidden size (``std`` as in ``ValueModel.from_causal_lm``)."""
        return cls(_new_head(causal_lm.config.hidden_size, std=_std(causal_lm.config, std), seed=seed))

    @contextmanager
    def capture(self, causal_lm):
        """Record the last hidden state of ``causal_lm``'s trunk during the forwards inside the block."""
        def hook(module, args, output):
            self._hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

        handle = causal_lm.get_decoder().register_forward_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def values(self, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned values [B, T] from the last captured hidden state (consumed: a second call is an error);
        ``position_ids`` for packed rows, as in ``ValueModel.forward``."""
        if self._hidden is None:
            raise RuntimeError("SharedValueHead.values: no hidden state captured (run the policy inside capture())")
        hidden, self._hidden = self._hidden, None
        return _aligned(self.head(hidden).squeeze(-1).float(), attention_mask, position_ids)


def _reward_score_weight(path: Path) -> torch.Tensor | None:
    """The ``score.weight`` [1, hidden] of a reward model directory (``*ForSequenceClassification``), or None."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="pt") as sf:
            if "score.weight" in sf.keys():
                return sf.get_tensor("score.weight")
    return None
