"""reward.workers reaches the scorer: sandboxed rewards (code) are scored in parallel by default, configurably."""

import torch

from alignkit.config import RLRewardSection
from alignkit.rollout.scoring import Scorer


def test_reward_workers_reaches_score_with_model(monkeypatch):
    from alignkit import rewards

    seen = {}
    real = rewards.score_with_model

    def spy(*args, **kw):
        seen["workers"] = kw.get("workers")
        return real(*args, **kw)

    monkeypatch.setattr(rewards, "score_with_model", spy)
    ids, mask = torch.tensor([[5, 6]]), torch.tensor([[1, 1]])
    for workers in (None, 1, 3):
        scorer = Scorer(RLRewardSection(weights={"format": 1.0}, workers=workers), device="cpu")
        scorer(["<think>a</think><answer>1</answer>"], ids, mask, [{}], ["q"])
        assert seen["workers"] == workers
