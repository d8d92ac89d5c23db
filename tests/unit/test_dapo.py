"""DAPO helpers: dynamic sampling, overlong filtering, soft overlong punishment (hand-computed)."""

import doctest

import pytest
import torch

from alignkit.losses import dapo
from alignkit.losses.dapo import (
    DynamicSampler,
    overlong_mask,
    select_informative_groups,
    soft_overlong_penalty,
)


def test_select_informative_groups_uneven_and_invalid():
    # groups [1, 1, 1] | [0, 1] | [0.5, 0.5, <failed 9>] | [2]
    #   all equal -> F ; differ -> T ; valid rows equal (the 9 does not count) -> F ; one row -> F
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 9.0, 2.0])
    valid = torch.tensor([True] * 7 + [False, True])
    assert select_informative_groups(r, [3, 2, 3, 1], valid).tolist() == [False, True, False, False]
    # without the valid mask the failed 9 would make group 3 look informative
    assert select_informative_groups(r, [3, 2, 3, 1]).tolist() == [False, True, True, False]
    assert select_informative_groups(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2).tolist() == [True, False]
    with pytest.raises(ValueError, match="do not cover the 4 rewards"):
        select_informative_groups(torch.zeros(4), 3)


def test_dynamic_sampler_fills_the_batch_across_draws():
    s = DynamicSampler(target_groups=3, max_draws=3)
    # draw 1, G = 2: [1, 0] | [1, 1] | [0, 0] | [1, 0] -> groups 0 and 3 informative, 2 of 3 kept
    assert s.add(torch.tensor([1.0, 0, 1, 1, 0, 0, 1, 0]), 2) == [0, 3]
    assert not s.done
    # draw 2: [0, 1] | [1, 0] -> both informative, only 1 still needed -> [0]
    assert s.add(torch.tensor([0.0, 1, 1, 0]), 2) == [0]
    assert s.filled and s.done
    # 3 kept of 4 + 2 = 6 groups seen -> kept_share 0.5
    assert s.metrics() == {"dynamic_sampling/draws": 2, "dynamic_sampling/groups_kept": 3,
                           "dynamic_sampling/kept_share": 0.5, "dynamic_sampling/filled": 1.0}
    with pytest.raises(RuntimeError, match="after done"):
        s.add(torch.tensor([0.0, 1.0]), 2)


def test_dynamic_sampler_stops_short_after_max_draws():
    s = DynamicSampler(target_groups=2, max_draws=2)
    assert s.add(torch.ones(4), 2) == []  # every group all-equal
    assert s.add(torch.tensor([1.0, 0.0, 1.0, 1.0]), [2, 2], valid=torch.tensor([True, False, True, True])) == []
    assert s.done and not s.filled
    assert s.metrics()["dynamic_sampling/filled"] == 0.0 and s.metrics()["dynamic_sampling/kept_share"] == 0.0
    with pytest.raises(ValueError, match="must be >= 1"):
        DynamicSampler(target_groups=0, max_draws=1)


def test_overlong_mask():
    assert overlong_mask(["eos", "length", "stop", "length"]).tolist() == [True, False, True, False]
    assert overlong_mask([]).tolist() == []
    with pytest.raises(ValueError, match=r"unknown finish reasons \['timeout'\]"):
        overlong_mask(["eos", "timeout"])


def test_soft_overlong_penalty_dapo_values():
    # DAPO: L_max = 20480, L_cache = 4096 -> the ramp starts after 16384 tokens
    #   16384 -> 0 ; 16385 -> (16384 - 16385) / 4096 = -0.000244 ; 18432 -> -2048 / 4096 = -0.5
    #   20480 -> -4096 / 4096 = -1 ; 20481 (beyond L_max) -> -1
    lengths = torch.tensor([100, 16384, 16385, 18432, 20480, 20481])
    got = soft_overlong_penalty(lengths, max_tokens=20480, cache_tokens=4096)
    assert got.tolist() == pytest.approx([0.0, 0.0, -1 / 4096, -0.5, -1.0, -1.0])
    # no cache: a step at L_max
    assert soft_overlong_penalty(torch.tensor([16, 17]), 16, 0).tolist() == [0.0, -1.0]
    with pytest.raises(ValueError, match="need 0 <= cache_tokens <= max_tokens"):
        soft_overlong_penalty(lengths, 16, 32)


def test_doctests():
    assert doctest.testmod(dapo).failed == 0
