"""Replaying recorded routings (expert ids without scores): loads, max_vio, per-rank balance and the drops a
capacity would cause, against plain loops; the score-based metrics are n/a, never invented."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import expert_capacity
from moeroute.experiments.cli import main
from moeroute.replay import replay
from moeroute.workloads.routings import read_routings

from reference.loops import gshard_loop


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def recorded(tokens: int = 300, layers: int = 3, k: int = 2, experts: int = 16, seed: int = 0) -> np.ndarray:
    """Skewed expert ids (tokens, layers, k), distinct within a token, as a serving engine records them."""
    rng = np.random.default_rng(seed)
    weights = np.arange(experts, 0, -1, dtype=float) ** 1.5
    out = np.empty((tokens, layers, k), dtype=np.int32)
    for t in range(tokens):
        for layer in range(layers):
            out[t, layer] = rng.choice(experts, size=k, replace=False, p=weights / weights.sum())
    return out


def reference(ids: np.ndarray, experts: int, cf: float, group: int, ranks: int) -> dict:
    """The replay by plain loops: counts, then first come rank-major per group (the gshard loop)."""
    n, k = ids.shape
    loads = [0] * experts
    for row in ids:
        for e in row:
            if e >= 0:
                loads[e] += 1
    mean = sum(loads) / experts
    per_rank = [sum(loads[r * experts // ranks:(r + 1) * experts // ranks]) for r in range(ranks)]
    cap = expert_capacity(cf, k, group, experts)
    kept = dropped = second_dropped = 0
    for g in range(n // group):
        prefs = ids[g * group:(g + 1) * group].tolist()
        out = gshard_loop(prefs, experts, cap)
        for want, got in zip(prefs, out):
            kept += sum(e >= 0 for e in got)
            dropped += sum(w >= 0 and o < 0 for w, o in zip(want, got))
            second_dropped += want[1] >= 0 and got[1] < 0
    return {"loads": loads, "max_vio": max(loads) / mean - 1, "rank_tokens": per_rank,
            "rank_max_over_mean": max(per_rank) / (sum(per_rank) / ranks), "capacity": cap,
            "slot_drop_rate": dropped / (kept + dropped), "second_choice_drop_rate": second_dropped / (n // group * group)}


@pytest.mark.parametrize("seed", [0, 1])
def test_replay_matches_plain_loops(seed):
    ids = recorded(seed=seed)[:, 1, :]
    got = replay(torch.from_numpy(ids).long(), 16, capacity_factor=1.0, group_size=64, ep_ranks=4)
    want = reference(ids, 16, 1.0, 64, 4)
    assert got.loads == want["loads"] and got.rank_tokens == want["rank_tokens"] and got.capacity == want["capacity"]
    assert got.max_vio == pytest.approx(want["max_vio"])
    assert got.rank_max_over_mean == pytest.approx(want["rank_max_over_mean"])
    assert got.slot_drop_rate == pytest.approx(want["slot_drop_rate"])
    assert got.second_choice_drop_rate == pytest.approx(want["second_choice_drop_rate"])
    assert got.groups == 4 and got.left_out == 300 - 256 and got.slot_drop_rate > 0
    assert got.objective is None and got.gap is None and got.rank1_affinity is None and got.latency_ms is None


def test_no_capacity_drops_nothing_and_empty_slots_are_not_drops():
    ids = torch.tensor([[0, 1], [0, -1], [0, 2], [3, -1]])
    m = replay(ids, 4)
    assert m.capacity is None and m.slot_drop_rate == 0.0 and m.loads == [3, 1, 1, 1]
    assert m.max_vio == pytest.approx(3 / 1.5 - 1)
    tight = replay(ids, 4, capacity_factor=0.5, group_size=4)  # C = ceil(0.5 * 2 * 4 / 4) = 1
    # rank 0 first: tokens 1 and 2 lose expert 0 to token 0; token 1 wanted nothing else, so it is dropped whole
    assert tight.capacity == 1 and tight.slot_drop_rate == pytest.approx(2 / 6) and tight.token_drop_rate == 0.25


def test_routed_experts_files_in_each_format(tmp_path, capsys):
    ids = recorded(tokens=128, layers=2)
    np.save(tmp_path / "r.npy", ids)
    torch.save({"routed_experts": torch.from_numpy(ids), "logprobs": torch.randn(128)}, tmp_path / "r.pt")
    save_file({"ids": torch.from_numpy(ids[:, 0, :]).contiguous()}, str(tmp_path / "r.safetensors"))
    assert [r.layer for r in read_routings(str(tmp_path / "r.pt"))] == ["0", "1"]
    assert torch.equal(read_routings(str(tmp_path / "r.npy"), layer="1")[0].experts, torch.from_numpy(ids[:, 1, :]).long())
    assert len(read_routings(str(tmp_path / "r.safetensors"))) == 1
    code, out, err = run(capsys, "eval", "--routing", str(tmp_path / "r.npy"), "--cf", "1.25", "--group-size", "64",
                         "--ep-ranks", "2", "--format", "json")
    assert code == 0 and "E=16 taken from the largest expert id" in err
    rows = json.loads(out)
    assert [r["layer"] for r in rows] == ["0", "1"] and all(r["objective"] is None and r["gap"] is None for r in rows)
    want = reference(ids[:, 0, :], 16, 1.25, 64, 2)
    assert rows[0]["loads"] == want["loads"] and rows[0]["slot_drop_rate"] == pytest.approx(want["slot_drop_rate"])
    code, out, _ = run(capsys, "eval", "--routing", str(tmp_path / "r.pt"), "--experts", "32", "--layer", "1")
    assert code == 0 and "n/a" in out and "E=32" in out


@pytest.mark.parametrize("argv, message", [
    (["--routing", "{d}/float.npy"], "expected integer expert ids"),
    (["--routing", "{d}/r.npy", "--experts", "4"], "expert id 15 is out of range for E=4"),
    (["--routing", "{d}/neg.npy"], "expert ids must be >= 0 (or -1 for no expert)"),
    (["--routing", "{d}/r.npy", "--ep-ranks", "3"], "ep_ranks=3 must be >= 1 and divide the E=16 experts"),
    (["--routing", "{d}/r.npy", "--router", "gshard"], "--router does not apply to --routing"),
    (["--routing", "{d}/r.npy", "--k", "2"], "--k does not apply to --routing"),
    (["--routing", "{d}/r.npy", "--layer", "7"], "no layer '7' (layers: 0, 1)"),
    (["--routing", "{d}/flat.npy"], "expected expert ids of shape (tokens, layers, k)"),
    (["--routing", "{d}/r.npy", "--group-size", "0"], "group size 0 must be between 1"),
])
def test_bad_routings_are_one_line(tmp_path, capsys, argv, message):
    ids = recorded(tokens=64, layers=2)
    ids[0, 0, 0] = 15
    np.save(tmp_path / "r.npy", ids)
    np.save(tmp_path / "float.npy", ids.astype(np.float32))
    np.save(tmp_path / "neg.npy", ids - 3)
    np.save(tmp_path / "flat.npy", ids.reshape(-1))
    code, _, err = run(capsys, "eval", *[a.format(d=tmp_path) for a in argv])
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_replay_refuses_bad_input_in_python():
    with pytest.raises(MoeRouteError, match="expected expert ids"):
        replay(torch.zeros(5, dtype=torch.long))
