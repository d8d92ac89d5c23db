"""Rejection sampling keeps exactly the completions whose reward passes the threshold (table-driven)."""

import pytest

from alignkit.data.curation import select_verified

CASES = [
    # (completions, rewards, threshold, dedupe, max_keep, kept)
    (["a", "b", "c", "d"], [0, 1, 0, 1], 1.0, True, None, [1, 3]),  # lecture GRPO-11, threshold 1.0
    (["a", "b", "c", "d"], [0, 1, 0, 1], 0.8, True, None, [1, 3]),  # and 0.8
    (["a", "b", "c"], [0.8, 0.79999, 1.2], 0.8, True, None, [0, 2]),  # the threshold itself passes
    (["a", "b"], [None, 1.0], 0.5, True, None, [1]),  # a failed verifier is never kept
    (["same", " same ", "other"], [1, 1, 1], 1.0, True, None, [0, 2]),  # whitespace duplicates dropped
    (["same", " same ", "other"], [1, 1, 1], 1.0, False, None, [0, 1, 2]),
    (["a", "b", "c", "d"], [0.9, 1.0, 0.95, 1.0], 0.8, True, 2, [1, 3]),  # best two, in sampling order
    ([], [], 1.0, True, None, []),
]


@pytest.mark.parametrize("completions, rewards, threshold, dedupe, max_keep, kept", CASES)
def test_select_verified(completions, rewards, threshold, dedupe, max_keep, kept):
    assert select_verified(completions, rewards, threshold=threshold, dedupe=dedupe, max_keep=max_keep) == kept


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="2 completions but 1 rewards"):
        select_verified(["a", "b"], [1.0], threshold=1.0)
