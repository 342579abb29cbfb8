"""Data-parallel training: the global batch is sharded the same whatever the number of ranks, the router losses
and a stateful router's statistics are global, and a 2-process run (gloo on CPU, spawned here) equals a 1-process
run with the same global batch at every step, with checkpoints that resume across world sizes."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.routing import Slots
from moeroute.experiments.cli import main
from moeroute.routers import register_router
from moeroute.routers._capacity import apply_capacity
from moeroute.train.checkpoint import load_checkpoint
from moeroute.train.config import Arm, DataConfig, ModelConfig, OptimConfig, RunConfig
from moeroute.train.data import Corpus, rank_micro_batches
from moeroute.train.distributed import DistContext, init_distributed, shutdown
from moeroute.train.loop import train_run
from moeroute.train.losses import GlobalBalance, balance_terms, group_balance_loss, micro_batch_balance_loss, z_loss
from moeroute.train.moe import MoELayer

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ablation.toml"
WORLD = 2
# fork where the platform has it: the ranks inherit the imported torch and this module (1 s to start on a busy
# 2-core machine, against 13 s for spawn, which imports everything again in each rank); no thread or process group
# exists in the parent to be copied half-way.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux" else "spawn"
COMPARED = ("train_loss", "aux_loss", "z_loss", "val_loss", "slot_drop_rate", "second_choice_drop_rate",
            "mean_load_ratio", "max_load_ratio", "balance_violation", "rank1_affinity_with_drops",
            "rank2_affinity_with_drops")


# --- a stateful router for these tests only: its routing depends on token counts summed over ranks --------------

@dataclass(frozen=True)
class CountOptions:
    rate: float = 0.5


def count_router(x, opts: CountOptions) -> Slots:
    """Top-k of ``scores - rate * share`` where ``share`` is each expert's fraction of all tokens routed in
    earlier optimizer steps (state ``total``, global after ``step_update``); this call's kept load is added to
    ``pending`` (local to the rank until the step ends). Groups are independent within a call."""
    e = x.experts
    total = x.state.get("total", torch.zeros(e, dtype=torch.float64, device=x.scores.device))
    pending = x.state.get("pending", torch.zeros_like(total))
    share = (total / total.sum().clamp(min=1.0)).to(x.scores.dtype)
    preferred = torch.topk(x.scores - opts.rate * share, x.k, dim=-1).indices
    experts = apply_capacity(x, preferred)
    load = torch.bincount(experts[experts >= 0].reshape(-1), minlength=e).to(total.dtype)
    return Slots(experts, state={"total": total, "pending": pending + load})


def count_step(state, all_reduce, opts: CountOptions):
    """Once per optimizer step: the step's counts of every rank join the running total."""
    return {"total": state["total"] + all_reduce(state["pending"], "sum"), "pending": torch.zeros_like(state["pending"])}


def register_count_router() -> None:
    register_router("count_test", CountOptions, "test-only stateful router", "tests", step_update=count_step)(
        count_router)


# --- the tiny runs ----------------------------------------------------------------------------------------------

def tiny_run(arm: Arm, steps: int = 4, **train) -> RunConfig:
    model = ModelConfig(d_model=16, layers=1, heads=2, experts=4, k=2, expert_hidden=16, balance_scope="global",
                        z_loss_coef=1e-3)
    data = DataConfig(seq_len=32, batch_size=4, val_sequences=4)
    opt = OptimConfig(steps=steps, warmup_steps=1, eval_every=2, softtopk_anneal_steps=3, threads=1, **train)
    return RunConfig(model, data, opt, arm, seed=3)


GLOBAL = Arm("global-softtopk", "gshard", "softtopk")
COUNT = Arm("count", "count_test", "softmax")
# The production routers with state: DeepSeek-V3's bias on sigmoid scores (Megatron's update from loads summed over
# ranks; a large rate so that 4 steps move it) under the sigmoid balance loss, and QB (beta averaged over ranks,
# with an EMA) over two micro-batches.
AUX_FREE = Arm("auxfree", "aux_free:mode=megatron,score=sigmoid,update_every=0,rate=0.05", "softmax")
QB = Arm("qb", "qb:update_every=0,ema=0.5", "softmax", aux_loss_coef=0.0)
SCENARIOS = {  # name: (run, steps to stop at (None = all), resume)
    "global_full": (tiny_run(GLOBAL, micro_batches=2), None, False),
    "count_full": (tiny_run(COUNT), None, False),
    "global_half": (tiny_run(GLOBAL, micro_batches=2), 2, False),
    "count_half": (tiny_run(COUNT), 2, False),
    "auxfree_full": (tiny_run(AUX_FREE), None, False),
    "qb_full": (tiny_run(QB, micro_batches=2), None, False),
}
STATEFUL = {"auxfree_full": "bias", "qb_full": "beta"}  # the state each router carries from step to step


def _run(name: str, root: Path, ctx: DistContext | None, corpus: Corpus, resume: bool = False):
    cfg, stop, _ = SCENARIOS[name]
    if stop and not resume:
        cfg = replace(cfg, train=replace(cfg.train, steps=stop))
    return train_run(cfg, root / name, corpus, resume=resume, dist=ctx)


def _worker(rank: int, world: int, port: int, root: str, one_rank_dirs: str) -> None:
    """One of ``world`` spawned ranks: full runs, half runs (checkpoints for the 1-rank resume), and the resume
    of the checkpoints a 1-rank run left in ``one_rank_dirs``; rank 0 writes the histories as JSON."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    register_count_router()
    ctx = init_distributed("cpu", timeout_s=120)
    try:
        corpus = Corpus.from_config(SCENARIOS["global_full"][0].data)
        out = {}
        for name in ("global_full", "count_full", "global_half", "count_half", *STATEFUL):
            out[name] = _run(name, Path(root), ctx, corpus).history
        for name in ("global_half", "count_half"):  # resume what one process saved
            out[name + "_resumed"] = _run(name, Path(one_rank_dirs), ctx, corpus, resume=True).history
        if ctx.is_main:
            (Path(root) / "histories.json").write_text(json.dumps(out))
        # the command line under torchrun: it finds the process group started, trains, rank 0 writes, it leaves
        code = main(["train", str(CONFIG), "--quick", "--arms", "gshard-softmax", "--steps", "2", "--no-report",
                     "--output", str(Path(root) / "cli")])
        (Path(root) / f"cli_rank{rank}.txt").write_text(str(code))
    finally:
        shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def max_difference(a: list[dict], b: list[dict]) -> float:
    """The largest absolute difference of the compared log values over all steps (steps must match)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    worst = 0.0
    for x, y in zip(a, b):
        for key in COMPARED:
            if key in x or key in y:
                u, v = x[key], y[key]
                if not (math.isnan(u) and math.isnan(v)):
                    worst = max(worst, abs(u - v))
    return worst


@pytest.fixture(scope="module")
def tiny_corpus():
    return Corpus.from_config(SCENARIOS["global_full"][0].data)


def test_two_ranks_equal_one_at_every_step_and_resume_across_world_sizes(tmp_path, scratch_routers, tiny_corpus):
    register_count_router()
    one, two = tmp_path / "one", tmp_path / "two"
    # 1 rank first saves the half runs that 2 ranks will resume ...
    for name in ("global_half", "count_half"):
        _run(name, one, None, tiny_corpus)
    torch.multiprocessing.start_processes(_worker, args=(WORLD, _free_port(), str(two), str(one)), nprocs=WORLD,
                                          start_method=START_METHOD, join=True)
    got = json.loads((two / "histories.json").read_text())
    # ... then runs everything in one process and resumes the half runs 2 ranks saved.
    for name in ("global_full", "count_full"):
        ref = _run(name, one, None, tiny_corpus).history
        assert len(ref) == 4 and all(math.isfinite(r["train_loss"]) for r in ref)
        assert max_difference(ref, got[name]) < 1e-5, name
        assert max_difference(ref[:2], got[name.replace("full", "half")]) < 1e-5
        # 2 ranks resumed a 1-rank checkpoint, 1 rank resumes a 2-rank checkpoint: both continue the same run.
        assert max_difference(ref[2:], got[name.replace("full", "half") + "_resumed"]) < 1e-5
        resumed = _run(name.replace("full", "half"), two, None, tiny_corpus, resume=True).history
        assert max_difference(ref[2:], resumed) < 1e-5
    # The production routers' state is reduced over ranks once per step: 2 ranks train as 1, and end with the same
    # bias / beta (which did move).
    for name, key in STATEFUL.items():
        ref = _run(name, one, None, tiny_corpus).history
        assert max_difference(ref, got[name]) < 1e-5, name
        states = [_router_state(root / name)[key] for root in (one, two)]
        assert float(states[0].abs().max()) > 0 and torch.allclose(states[0], states[1], atol=1e-6), name
    assert load_checkpoint(two / "global_half" / "checkpoint.pt")["world_size"] == 1  # re-saved by the 1-rank resume
    assert load_checkpoint(one / "global_half" / "checkpoint.pt")["world_size"] == WORLD  # re-saved by 2 ranks
    assert [(two / f"cli_rank{r}.txt").read_text() for r in range(WORLD)] == ["0", "0"]
    cli = two / "cli"
    assert len((cli / "results" / "gshard-softmax_seed0.csv").read_text().splitlines()) == 3  # header + 2 steps
    assert (cli / "runs" / "gshard-softmax_seed0" / "checkpoint.pt").is_file()
    assert not [f for f in cli.rglob("*") if ".partial." in f.name]
    # The stateful router's statistics are global: its total counts every kept slot of the global batch, the
    # same after 2 ranks as after 1 (a per-rank total would hold about half).
    tokens = 4 * 32 * 2  # global batch x seq_len x k per step
    for root in (one, two):
        state = load_checkpoint(root / "count_half" / "checkpoint.pt")["model"]["blocks.0.moe._extra_state"]
        total = state["router_state"]["total"]
        kept = sum((1 - r["slot_drop_rate"]) * tokens for r in got["count_full"])
        assert float(total.sum()) == pytest.approx(kept, rel=1e-6)
        assert float(state["router_state"]["pending"].abs().sum()) == 0.0


def _router_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The router state of the first MoE layer in the checkpoint of ``run_dir``."""
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]["blocks.0.moe._extra_state"]["router_state"]


# --- the pieces -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world, micro", [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)])
def test_micro_batch_m_of_all_ranks_is_the_same_rows_whatever_the_world(world, micro):
    x = torch.arange(8).unsqueeze(1).repeat(1, 3)
    y = x + 100
    parts = [rank_micro_batches(x, y, r, world, micro) for r in range(world)]
    b = 8 // (world * micro)
    for m in range(micro):
        rows = torch.cat([parts[r][m][0] for r in range(world)])
        assert torch.equal(rows, x[m * world * b:(m + 1) * world * b])  # micro-batch m, any world size
        assert torch.equal(torch.cat([parts[r][m][1] for r in range(world)]), rows + 100)


def test_a_batch_that_does_not_divide_is_one_line(tiny_corpus, tmp_path):
    with pytest.raises(MoeRouteError, match="does not divide over 2 process"):
        rank_micro_batches(torch.zeros(6, 2), torch.zeros(6, 2), 0, 2, 2)
    run = tiny_run(GLOBAL, micro_batches=3)
    with pytest.raises(MoeRouteError, match="batch_size=4 does not divide"):
        train_run(run, tmp_path / "r", tiny_corpus)
    assert not (tmp_path / "r").exists()


def test_balance_losses_and_z_loss_match_their_formulas():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 4, generator=gen)
    scores = logits.softmax(-1)
    first = torch.nn.functional.one_hot(scores.argmax(-1), 4).float()
    p, f = balance_terms(logits, scores, "softmax", 2)
    assert torch.equal(p, scores) and torch.equal(f, first)  # GShard: softmax scores, first choices
    per_group = [4 * (scores[g].mean(0) * first[g].mean(0)).sum() for g in range(3)]
    assert float(group_balance_loss(p, f, 0.5)) == pytest.approx(0.5 * float(sum(per_group)) / 3, rel=1e-6)
    flat_s, flat_f = scores.reshape(-1, 4), first.reshape(-1, 4)
    micro = 4 * (flat_s.mean(0) * flat_f.mean(0)).sum()
    assert float(micro_batch_balance_loss(p, f, 0.5)) == pytest.approx(0.5 * float(micro), rel=1e-6)
    # one rank, one micro-batch: the global batch is the micro-batch
    glob = GlobalBalance(0.5, DistContext().all_reduce)
    assert float(glob.loss([(p, f)])) == pytest.approx(0.5 * float(micro), rel=1e-6)
    # a second micro-batch: c counts both micro-batches so far, m only the new one
    other = torch.randn(3, 10, 4, generator=gen).softmax(-1)
    both = torch.nn.functional.one_hot(torch.cat([scores, other]).argmax(-1), 4).float().reshape(-1, 4).mean(0)
    other_terms = balance_terms(other.log(), other, "softmax", 2)
    assert float(glob.loss([other_terms])) == pytest.approx(0.5 * 4 * float((other.reshape(-1, 4).mean(0) * both).sum()))
    glob.reset()
    assert glob.counts is None and glob.tokens == 0
    lse = torch.logsumexp(logits, -1)
    assert float(z_loss(logits, 1e-3)) == pytest.approx(1e-3 * float((lse ** 2).mean()), rel=1e-6)


def test_sigmoid_balance_loss_is_deepseek_v3_sequence_wise_loss():
    """For a sigmoid router the loss is DeepSeek-V3's sequence-wise balance loss, written here as in its paper:
    ``alpha * sum_i f_i P_i`` per sequence with ``f_i = E / (k T) * #{t : i in top-k of s_t}`` and
    ``P_i = mean_t s_it / sum_j s_jt`` (normalised affinities), and its gradient reaches the logits."""
    gen = torch.Generator().manual_seed(1)
    g, t, e, k, alpha = 2, 12, 6, 2, 1e-4
    logits = torch.randn(g, t, e, generator=gen, requires_grad=True)
    p, f = balance_terms(logits, logits.softmax(-1), "sigmoid", k)
    expected = 0.0
    for seq in range(g):
        s = torch.sigmoid(logits[seq]).detach()
        chosen = [set(row.topk(k).indices.tolist()) for row in s]
        f_i = [e / (k * t) * sum(i in c for c in chosen) for i in range(e)]
        share = s / s.sum(dim=1, keepdim=True)
        expected += alpha * sum(f_i[i] * float(share[:, i].mean()) for i in range(e))
    loss = group_balance_loss(p, f, alpha)
    assert float(loss.detach()) == pytest.approx(expected / g, rel=1e-6)
    assert torch.allclose(f.sum(-1), torch.ones(g, t)) and torch.allclose(p.sum(-1), torch.ones(g, t))
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    # balanced first choices and uniform affinities score exactly the coefficient, as the softmax form does
    flat = torch.zeros(1, 4, 4)
    p0, f0 = balance_terms(flat, flat.softmax(-1), "sigmoid", 1)
    assert float(group_balance_loss(p0, torch.eye(4).unsqueeze(0), alpha)) == pytest.approx(alpha)
    assert torch.allclose(p0, torch.full_like(p0, 0.25)) and f0.sum() == 4


def test_layer_keeps_router_state_steps_it_and_checkpoints_it(scratch_routers):
    register_count_router()
    torch.manual_seed(0)
    layer = MoELayer(d_model=8, hidden=8, experts=4, k=2, capacity_factor=2.0, router="count_test")
    x = torch.randn(2, 16, 8)
    layer(x)
    assert float(layer.router_state["pending"].sum()) == 2 * 16 * 2  # C = 16 = T: every slot is kept
    layer.eval()
    layer(x)  # evaluation reads the state and leaves it alone
    assert float(layer.router_state["pending"].sum()) == 64
    layer.train()
    calls = []

    def fake_all_reduce(t, op):
        calls.append(op)
        return t * 3  # as if three ranks had counted the same

    layer.step_router_state(fake_all_reduce)
    assert calls == ["sum"] and float(layer.router_state["total"].sum()) == 192
    assert float(layer.router_state["pending"].sum()) == 0
    copy = MoELayer(d_model=8, hidden=8, experts=4, k=2, capacity_factor=2.0, router="count_test")
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy.router_state["total"], layer.router_state["total"])
    # a stateless router has no state and no step_update: stepping is a no-op
    plain = MoELayer(d_model=8, hidden=8, experts=4, k=2, capacity_factor=1.0, router="gshard")
    plain(x)
    plain.step_router_state(fake_all_reduce)
    assert plain.router_state == {} and len(calls) == 1


def test_one_process_context_is_the_identity():
    ctx = init_distributed("cpu")
    assert ctx.world == 1 and ctx.is_main and not ctx.distributed
    t = torch.tensor([1.0, 2.0])
    for op in ("sum", "mean", "max"):
        out = ctx.all_reduce(t, op)
        assert torch.equal(out, t) and out is not t
    with pytest.raises(MoeRouteError, match="all_reduce op"):
        ctx.all_reduce(t, "min")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_one_line_before_anything_is_written(tmp_path, capsys):
    assert main(["train", str(CONFIG), "--quick", "--device", "cuda", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moeroute: error: device cuda: CUDA is not available") and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, backend, expected", [("cpu", "gloo", "cpu"), ("cuda", "nccl", "cuda:1")])
def test_torchrun_picks_the_backend_from_the_device(monkeypatch, device, backend, expected):
    """gloo on CPU, nccl and the rank's own GPU (LOCAL_RANK) on CUDA; the process group itself is faked here."""
    import moeroute.train.distributed as d

    started = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(d, "resolve_device", lambda name: torch.device(name))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda b, **kw: started.append((b, kw)))
    ctx = d.init_distributed(device)
    assert (ctx.backend, str(ctx.device), ctx.rank, ctx.world, ctx.is_main) == (backend, expected, 1, 2, False)
    assert started == [(backend, {"rank": 1, "world_size": 2})]
    monkeypatch.setenv("LOCAL_RANK", "2")
    if device == "cuda":
        with pytest.raises(MoeRouteError, match="LOCAL_RANK=2 but only 2 CUDA device"):
            d.init_distributed(device)
