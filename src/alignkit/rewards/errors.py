"""The one exception a reward raises when it cannot score a sample (as opposed to scoring it 0)."""


class RewardError(Exception):
    """A reward could not be computed (verifier or sandbox failure, bad example fields).

    The scorer (``alignkit.rewards.registry.score``) turns it into a failed, counted sample that is left out
    of the loss; it is never a reward of 0.
    """
