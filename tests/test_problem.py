"""The capacity rule and input validation."""

import math

import numpy as np
import pytest
import torch

from moeroute import MoeRouteError, expert_capacity, route
from moeroute.core.problem import as_groups, make_input


@pytest.mark.parametrize(
    "cf,k,t,e,expected",
    [(1.0, 2, 512, 16, 64), (1.25, 2, 512, 16, 80), (0.5, 1, 10, 4, 2), (1.1, 1, 10, 1, 11), (2.0, 2, 3, 4, 3)],
)
def test_capacity_is_ceil_cf_k_t_over_e(cf, k, t, e, expected):
    assert expert_capacity(cf, k, t, e) == expected == math.ceil(round(cf * k * t / e, 9))


def test_no_capacity_factor_means_no_capacity():
    assert expert_capacity(None, 2, 512, 16) is None


def test_groups_from_flat_logits():
    x = torch.arange(24.0).reshape(6, 4)
    g = as_groups(x, group_size=3)
    assert g.shape == (2, 3, 4)
    assert torch.equal(g[1, 0], x[3])
    assert as_groups(x).shape == (1, 6, 4)
    assert as_groups(np.zeros((2, 3, 4), dtype=np.float32)).shape == (2, 3, 4)


@pytest.mark.parametrize(
    "logits,kwargs,message",
    [
        (torch.zeros(4), {}, "shape"),
        (torch.zeros(2, 2, 2, 2), {}, "shape"),
        (torch.tensor([[0.0, float("nan")]]), {}, "NaN"),
        (torch.tensor([[0.0, float("inf")]]), {}, "infinite"),
        (torch.zeros(4, 3), {"k": 4}, "larger than the number of experts"),
        (torch.zeros(4, 3), {"k": 0}, "k must be"),
        (torch.zeros(4, 3), {"capacity_factor": 0.0}, "capacity factor"),
        (torch.zeros(4, 3), {"capacity_factor": -1.0}, "capacity factor"),
        (torch.zeros(5, 3), {"group_size": 2}, "not divisible"),
        (torch.zeros(2, 4, 3), {"group_size": 2}, "already grouped"),
        (torch.zeros(4, 3, dtype=torch.long), {}, "floating point"),
        ([[0.0, 1.0]], {}, "torch.Tensor or numpy"),
    ],
)
def test_bad_input_names_the_problem(logits, kwargs, message):
    args = {"k": 1, "capacity_factor": 1.0, **kwargs}
    with pytest.raises(MoeRouteError, match=message):
        route(logits, "gshard", **args)


def test_scores_are_softmax_of_float_logits():
    x = make_input(torch.randn(2, 5, 4, dtype=torch.float64), 2, 1.0)
    assert x.logits.dtype == torch.float32
    torch.testing.assert_close(x.scores.sum(-1), torch.ones(2, 5))
    assert x.capacity == 3
