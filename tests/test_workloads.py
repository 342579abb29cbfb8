"""Workload generators: shape, determinism, documented behaviour, option errors; the captured workload."""

from __future__ import annotations

import pytest
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.workloads import (
    captured_logits,
    check_workload,
    parse_captured,
    synthetic_logits,
    workload,
    workload_logits,
    workload_names,
)

FAMILIES = ["gauss", "skew", "zipf", "hot", "clustered", "rotating", "collapse", "ties", "force_biased"]


def test_every_family_is_registered_and_documented():
    assert set(FAMILIES) <= set(workload_names())
    for name in FAMILIES:
        w = workload(name)
        assert w.description and w.options.__doc__ and len(w.options.__doc__) > 40


@pytest.mark.parametrize("name", FAMILIES)
def test_shape_dtype_and_determinism(name):
    a = synthetic_logits(name, 3, 64, 8, seed=5)
    b = synthetic_logits(name, 3, 64, 8, seed=5)
    c = synthetic_logits(name, 3, 64, 8, seed=6)
    assert a.shape == (3, 64, 8) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zipf_popularity_follows_the_ranks():
    x = synthetic_logits("zipf:alpha=1.5", 8, 512, 8, seed=0)
    share = torch.bincount(x.argmax(-1).flatten(), minlength=8).float()
    top = share.sort(descending=True).values
    assert top[0] > 2 * top[3] > 0  # the rank-1 expert is far more popular than the rank-4 one
    flat = synthetic_logits("zipf:alpha=0", 1, 64, 8, seed=0)
    gauss_like = flat - flat.mean(-1, keepdim=True)
    assert gauss_like.std() > 0.5


def test_hot_experts_take_most_first_choices():
    x = synthetic_logits("hot:hot=2,boost=4", 4, 256, 16, seed=1)
    counts = torch.bincount(x.argmax(-1).flatten(), minlength=16)
    assert counts.sort(descending=True).values[:2].sum() > 0.8 * counts.sum()


def test_clustered_neighbours_share_preferences():
    x = synthetic_logits("clustered:clusters=2,separation=4,noise=0.1", 1, 200, 16, seed=2)[0]
    first = x.argmax(-1)
    changes = int((first[1:] != first[:-1]).sum())
    assert changes <= 3  # two contiguous blocks (plus rare noise flips)


def test_rotating_hot_set_moves_between_groups():
    x = synthetic_logits("rotating:hot=4,boost=6", 4, 128, 16, seed=3)
    hot_sets = [set(torch.bincount(g.argmax(-1), minlength=16).topk(4).indices.tolist()) for g in x]
    assert all(hot_sets[i].isdisjoint(hot_sets[i + 1]) for i in range(3))


def test_collapse_sends_nearly_every_first_choice_to_one_expert():
    x = synthetic_logits("collapse", 2, 256, 16, seed=4)
    counts = torch.bincount(x.argmax(-1).flatten(), minlength=16)
    assert counts.max() > 0.9 * counts.sum()


def test_ties_have_many_exactly_equal_logits():
    x = synthetic_logits("ties:levels=3", 1, 100, 16, seed=0)[0]
    assert set(x.unique().tolist()) <= {0.0, 1.0, 2.0}
    top = (x == x.max(-1, keepdim=True).values).sum(-1)
    assert (top > 1).float().mean() > 0.9  # nearly every token has a tied first choice


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown workload"),
        ("gauss:temperature=0", "temperature"),
        ("hot:hot=0", "hot"),
        ("collapse:fraction=1.5", "fraction"),
        ("ties:levels=0", "levels"),
        ("zipf:alpha=-1", "alpha"),
        ("gauss:bogus=1", "unknown option"),
        ("skew:bias=abc", "float"),
    ],
)
def test_bad_workload_specs(spec, message):
    with pytest.raises(MoeRouteError, match=message):
        check_workload(spec)


def test_counts_beyond_the_experts_are_refused():
    with pytest.raises(MoeRouteError, match="exceeds the number of experts"):
        synthetic_logits("hot:hot=9", 1, 8, 8)
    with pytest.raises(MoeRouteError, match="tokens must be >= 1"):
        synthetic_logits("gauss", 1, 0, 8)


def test_captured_workload_cuts_windows(tmp_path):
    data = torch.randn(1000, 8)
    path = tmp_path / "cap.pt"
    torch.save({"layer0": data, "layer1": data * 2}, path)
    spec = f"captured:{path}:layer1"
    assert parse_captured(spec) == (str(path), "layer1")
    x = captured_logits(spec, groups=3, tokens=100, seed=0)
    assert x.shape == (3, 100, 8)
    windows = (data * 2)[:1000].reshape(10, 100, 8)
    assert all(any(torch.equal(g, w) for w in windows) for g in x)  # every group is one whole window
    assert torch.equal(x, captured_logits(spec, 3, 100, seed=0))
    assert not torch.equal(x, captured_logits(spec, 3, 100, seed=1))
    assert workload_logits(spec, 3, 100, None, 0).shape == (3, 100, 8)
    with pytest.raises(MoeRouteError, match="E=8"):
        workload_logits(spec, 3, 100, 16, 0)


def test_captured_path_without_key_and_grouped_file(tmp_path):
    path = tmp_path / "one.pt"
    torch.save(torch.randn(2, 64, 4), path)
    x = captured_logits(f"captured:{path}", groups=4, tokens=32, seed=0)
    assert x.shape == (4, 32, 4)


def test_workloads_command_lists_every_family(capsys):
    from moeroute.experiments.cli import main

    assert main(["workloads", "--plain"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in FAMILIES) and "captured:PATH[:KEY]" in out


def test_force_biased_shares_one_bias_across_groups():
    a = synthetic_logits("force_biased:std=2", 4, 2048, 8, seed=3)
    per_group = a.mean(dim=1)  # [G, E]: N(0,1) noise averages out, the shared bias stays
    assert torch.allclose(per_group, per_group[0].expand_as(per_group), atol=0.1)
    assert 0.5 < float(per_group[0].std()) < 4.0
    flat = synthetic_logits("force_biased:std=0", 2, 2048, 8, seed=3)
    assert float(flat.mean(dim=(0, 1)).abs().max()) < 0.1 and float(flat.std()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(MoeRouteError, match="std"):
        synthetic_logits("force_biased:std=-1", 1, 8, 4)
