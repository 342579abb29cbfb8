"""The repair step (moeroute/routers/_repair.py): augmenting chains of the largest score change, checked against an
exhaustive search on tiny groups, and positive move cycles applied before a chain."""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute.routers._repair import augment_open_slots, best_chains


def _objective(scores: torch.Tensor, experts: torch.Tensor) -> float:
    picked = torch.gather(scores, 2, experts.clamp(min=0))
    return float(torch.where(experts >= 0, picked, torch.zeros_like(picked)).double().sum())


def _moves(scores, experts, movable, x, y) -> list[float]:
    """Score changes of every token that may move its unit from expert ``x`` to ``y`` (one group, pre-step state)."""
    out = []
    for t in range(experts.shape[0]):
        row = experts[t].tolist()
        holds = any(row[j] == x and bool(movable[t, j]) for j in range(len(row)))
        if holds and y not in row:
            out.append(float(scores[t, y] - scores[t, x]))
    return out


def best_chain_brute(scores, experts, capacity, fill, movable) -> float:
    """The largest score change of one augmenting chain in a single group ``[T, E]`` / ``[T, R]`` by exhaustive
    search: an open token takes an expert it does not hold, then while the receiving expert is full (or by choice,
    past an expert with room) one of its movable holders moves on to an expert it does not hold, never revisiting an
    expert; the chain must end at an expert that had room."""
    t_count, e_count = scores.shape
    load = [sum(int(v == f) for v in experts.reshape(-1).tolist()) for f in range(e_count)]

    def extend(x: int, seen: frozenset) -> float:
        best = 0.0 if load[x] < capacity else -math.inf
        for y in range(e_count):
            if y in seen:
                continue
            for change in _moves(scores, experts, movable, x, y):
                best = max(best, change + extend(y, seen | {y}))
        return best

    best = -math.inf
    for u in range(t_count):
        row = experts[u].tolist()
        if not any(bool(fill[u, j]) and row[j] < 0 for j in range(len(row))):
            continue
        for f0 in range(e_count):
            if f0 not in row:
                best = max(best, float(scores[u, f0]) + extend(f0, frozenset({f0})))
    return best


def positive_cycle_brute(scores, experts, movable, tol: float = 1e-6) -> bool:
    """Whether some simple cycle of experts has moves of positive total score change (one group)."""
    e_count = scores.shape[1]
    for size in range(2, e_count + 1):
        for cyc in itertools.permutations(range(e_count), size):
            if cyc[0] != min(cyc):
                continue
            total = 0.0
            for x, y in zip(cyc, cyc[1:] + cyc[:1]):
                options = _moves(scores, experts, movable, x, y)
                if not options:
                    break
                total += max(options)
            else:
                if total > tol:
                    return True
    return False


def _tiny_case(draw_seed: int, tokens: int, experts_n: int, slots: int, capacity: int):
    gen = torch.Generator().manual_seed(draw_seed)
    scores = torch.rand(1, tokens, experts_n, generator=gen)
    experts = torch.full((1, tokens, slots), -1, dtype=torch.long)
    load = [0] * experts_n
    for t in range(tokens):
        order = torch.randperm(experts_n, generator=gen).tolist()
        j = 0
        for f in order:
            if j < slots and load[f] < capacity and float(torch.rand(1, generator=gen)) < 0.8:
                experts[0, t, j] = f
                load[f] += 1
                j += 1
    fill = torch.rand(1, tokens, slots, generator=gen) < 0.6
    movable = (torch.rand(1, tokens, slots, generator=gen) < 0.8) & (experts >= 0)
    return scores, experts, fill, movable


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    tokens=st.integers(2, 6),
    experts_n=st.integers(2, 4),
    slots=st.integers(1, 2),
    capacity=st.integers(1, 3),
)
def test_one_step_equals_the_best_chain_by_exhaustive_search(seed, tokens, experts_n, slots, capacity) -> None:
    scores, experts, fill, movable = _tiny_case(seed, tokens, experts_n, slots, capacity)
    if not bool((fill & (experts < 0)).any()):
        return
    best = best_chain_brute(scores[0], experts[0], capacity, fill[0], movable[0])
    before = _objective(scores, experts)
    cycle = positive_cycle_brute(scores[0], experts[0], movable[0])
    out, placed = augment_open_slots(scores, experts, capacity, fill, movable, max_steps=1)
    after = _objective(scores, out)
    if math.isinf(best):
        assert placed == 0 and after == before
        return
    assert placed == 1
    if cycle:
        # With a positive move cycle the step takes a valid chain, never better than the best one.
        assert after - before <= best + 1e-5
    else:
        assert math.isclose(after - before, best, abs_tol=1e-5)
    load = torch.bincount(out[out >= 0], minlength=experts_n)
    assert int(load.max()) <= capacity


def test_breadth_first_would_keep_the_fewest_hop_chain() -> None:
    # The counter-example of the issue: gains f->room -0.5, f->m -0.1, m->room -0.1. Expert 0 = f (full),
    # 1 = m (full), 2 = room. The best chain f -> m -> room changes the score by -0.2, the direct one by -0.5.
    gain = torch.full((1, 3, 3), -math.inf)
    gain[0, 0, 2], gain[0, 0, 1], gain[0, 1, 2] = -0.5, -0.1, -0.1
    room = torch.tensor([[False, False, True]])
    value, succ, cycle = best_chains(gain, room, 1e-9)
    assert math.isclose(float(value[0, 0]), -0.2, abs_tol=1e-6) and int(succ[0, 0]) == 1 and int(succ[0, 1]) == 2
    assert not bool(cycle[0])


def test_the_counter_example_end_to_end() -> None:
    # Capacity 2; f (expert 0) and m (expert 1) are full, expert 2 has room. The open token u takes f; holder a of f
    # could go straight to the room expert (-0.5), holder b to m (-0.1), whose holder c then to the room (-0.1).
    scores = torch.tensor([[
        [0.9, 0.0, 0.0],  # u: open slot
        [0.6, 0.0, 0.1],  # a holds f
        [0.6, 0.5, 0.0],  # b holds f
        [0.0, 0.3, 0.2],  # c holds m
        [0.0, 0.9, 0.0],  # d holds m
    ]])
    experts = torch.tensor([[[-1], [0], [0], [1], [1]]])
    fill = torch.tensor([[[True], [False], [False], [False], [False]]])
    movable = experts >= 0
    out, placed = augment_open_slots(scores, experts, 2, fill, movable)
    assert placed == 1
    assert out[0, :, 0].tolist() == [0, 0, 1, 2, 1]  # u takes f, b moves f -> m, c moves m -> room
    assert math.isclose(_objective(scores, out) - _objective(scores, experts), 0.9 - 0.2, abs_tol=1e-6)


def test_with_a_positive_cycle_the_chain_is_still_valid() -> None:
    # Tokens 0 and 1 hold each other's better expert (a positive swap cycle); token 2 has an open slot.
    scores = torch.tensor([[[0.1, 0.9, 0.0], [0.9, 0.1, 0.0], [0.2, 0.2, 0.5]]])
    experts = torch.tensor([[[0], [1], [-1]]])
    fill = torch.tensor([[[False], [False], [True]]])
    movable = experts >= 0
    assert positive_cycle_brute(scores[0], experts[0], movable[0])
    out, placed = augment_open_slots(scores, experts, 1, fill, movable)
    assert placed == 1 and out[0, :, 0].tolist() == [0, 1, 2]
