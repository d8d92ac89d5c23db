"""A trained reward model as a reward function (in models/, not rewards/: it loads a model, and rewards/ stays
pure): ``ModelReward(path)(completion, prompt=...) -> float``.

The (prompt, completion) pair is rendered exactly as ``alignkit rm`` rendered its training pairs (the
model directory's chat template: the prompt as a user turn or the given messages, then the completion as
the assistant turn, ending with EOS) and scored by the ``*ForSequenceClassification`` model, which reads
its score at the last real token (``alignkit.models.reward``). ``score_batch`` pads batches of
``batch_size`` rows (sorted by length, so little padding) for RL scoring.

A sequence longer than ``max_length`` (default: the model's ``max_position_embeddings``) keeps its last
``max_length`` tokens, i.e. the start of the prompt is cut: the end, where the score is read, is kept.

torch and transformers are imported when a model is loaded, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence


class ModelReward:
    """Scores completions with a trained reward model directory (``runs/<name>/final``).

        rm = ModelReward("runs/rm-arith-tiny/final")
        rm("<think>2+2=4</think><answer>4</answer>", prompt="2+2")          # -> float
        rm.score_batch(["2+2", "3+3"], ["<answer>4</answer>", "<answer>7</answer>"])   # -> [float, float]
    """

    def __init__(self, path: str, *, device: str = "cpu", batch_size: int = 32, max_length: int | None = None,
                 dtype: str = "float32", trust_remote_code: bool = False):
        from alignkit.models.reward import load_reward_model

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.path, self.device, self.batch_size = str(path), device, batch_size
        self.model, self.tokenizer = load_reward_model(path, device=device, dtype=dtype,
                                                       trust_remote_code=trust_remote_code)
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None)
        self.__name__ = "model_reward"  # reward functions are logged under their name

    def __call__(self, completion: str, *, prompt, **_) -> float:
        """Score of one completion to ``prompt`` (a string or a list of chat messages); other example
        fields are ignored."""
        return self.score_batch([prompt], [completion])[0]

    def _ids(self, prompt, completion: str) -> list[int]:
        from alignkit.data import render_sft

        ids = render_sft(self.tokenizer, {"prompt": prompt, "completion": completion}).input_ids
        return ids[-self.max_length:] if self.max_length else ids

    def score_batch(self, prompts: Sequence, completions: Sequence[str]) -> list[float]:
        """Scores of ``completions[i]`` to ``prompts[i]``, in order."""
        import torch

        from alignkit.data import pad_batch
        from alignkit.models.reward import sequence_scores

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [self._ids(p, c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = [0.0] * len(rows)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                b = pad_batch([rows[i] for i in idx], pad_token_id=self.tokenizer.pad_token_id, side="right")
                scores = sequence_scores(self.model, b["input_ids"].to(self.device),
                                         b["attention_mask"].to(self.device))
                for i, s in zip(idx, scores.tolist()):
                    out[i] = s
        return out
