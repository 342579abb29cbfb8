"""One training run of the ablation (one arm, one seed): the optimisation loop (data parallel over the ranks of a
:class:`~moeroute.train.distributed.DistContext`, with micro-batches), per-step CSV log, evaluation on the fixed
validation set, checkpoint (with the SoftTopk step and the routers' state) and resume, across world sizes."""

from __future__ import annotations

import contextlib
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from moeroute.core.atomic import atomic_open
from moeroute.core.device import resolve_device
from moeroute.core.errors import MoeRouteError
from moeroute.train.checkpoint import load_checkpoint, save_checkpoint
from moeroute.train.config import ModelConfig, RunConfig
from moeroute.train.data import Corpus, micro_batch_size, rank_micro_batches, train_batch, val_batches
from moeroute.train.distributed import DistContext, wrap_model
from moeroute.train.losses import GlobalBalance, balance_terms, group_balance_loss, micro_batch_balance_loss, z_loss
from moeroute.train.model import MoELM, cross_entropy
from moeroute.train.moe import MoEStats
from moeroute.train.step_stats import ROUTING_COLUMNS, StepTally

LOG_COLUMNS = ("step", "tokens", "train_loss", "aux_loss", "z_loss", "val_loss", *ROUTING_COLUMNS,
               "temperature", "lr", "step_time_s")
"""Columns of a run's ``log.csv``: one row per optimizer step; ``val_loss`` only on evaluation steps. Losses are
mean next-byte cross-entropy in nats (``aux_loss``: the balance loss, ``z_loss``: the router z-loss, both summed
over layers, with their coefficients); every value is over the step's global batch (all ranks and micro-batches);
routing columns are :data:`moeroute.train.step_stats.ROUTING_COLUMNS`, averaged over MoE layers; ``temperature``
is SoftTopk's ``t`` (empty for other weight operators)."""


@dataclass
class RunResult:
    """``history``: the unrounded log values of every step this call trained (the same on every rank)."""

    name: str
    steps: int
    final_val_loss: float
    seconds: float
    log: Path
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)


def build_model(cfg: RunConfig) -> MoELM:
    """The model of run ``cfg``, initialised from ``cfg.seed`` (every arm of one seed starts from the same weights:
    the router and weight operator hold no parameters of their own)."""
    torch.manual_seed(cfg.seed)
    t = cfg.train
    return MoELM(cfg.model, cfg.data.seq_len, cfg.arm.router, cfg.arm.weights,
                 (t.softtopk_start, t.softtopk_end, t.softtopk_anneal_steps))


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, positions)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "pos")]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95))


def learning_rate(cfg: RunConfig, step: int) -> float:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(1, t.steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def router_losses(stats: list[MoEStats], cfg: ModelConfig, balance: GlobalBalance) -> tuple[torch.Tensor, torch.Tensor]:
    """The balance loss over ``cfg.balance_scope`` and the z-loss of one micro-batch, each summed over layers
    (:mod:`moeroute.train.losses`); zero tensors where a coefficient is 0. The balance loss follows the score
    function the router selects by (``Routing.score``): softmax scores and first choices for a softmax router,
    normalised sigmoid affinities and top-k counts for a sigmoid one (DeepSeek-V3)."""
    zero = stats[0].live.scores.new_zeros(())
    if cfg.aux_loss_coef == 0:
        aux = zero
    else:
        terms = [balance_terms(s.live.logits, s.live.scores, s.routing.score, s.live.k) for s in stats]
        if cfg.balance_scope == "global":
            aux = balance.loss(terms)
        else:
            per_layer = group_balance_loss if cfg.balance_scope == "group" else micro_batch_balance_loss
            aux = torch.stack([per_layer(p, f, cfg.aux_loss_coef) for p, f in terms]).sum()
    z = torch.stack([z_loss(s.live.logits, cfg.z_loss_coef) for s in stats]).sum() if cfg.z_loss_coef else zero
    return aux, z


@torch.no_grad()
def evaluate_loss(model: MoELM, batches: list, ctx: DistContext) -> float:
    """Mean validation cross-entropy (nats per byte) in eval mode (SoftTopk at ``t = 1``) over every rank's share
    of the validation set (one all-reduce)."""
    was = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for x, y in batches:
        ce, _ = model.loss(x.to(ctx.device), y.to(ctx.device))
        total += torch.tensor([float(ce) * x.numel(), x.numel()], dtype=torch.float64)
    model.train(was)
    total = ctx.all_reduce(total.to(ctx.device), "sum").cpu()
    return float(total[0] / total[1])


def _fmt(value: Optional[float]) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def write_log(path: Path, rows: list[dict]) -> None:
    """The whole log, written atomically (rank 0, at every checkpoint and at the end)."""
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(LOG_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class _Trainer:
    """The state of one run on one rank: the bare model, its DDP wrapper, the optimizer and the global balance
    statistics of the current step."""

    cfg: RunConfig
    ctx: DistContext
    model: MoELM
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    balance: GlobalBalance

    def step(self, corpus: Corpus, step: int) -> dict[str, float]:
        """One optimizer step on this rank's micro-batches of global batch ``step``; the step's log values."""
        cfg, ctx = self.cfg, self.ctx
        x, y = train_batch(corpus, cfg.data, cfg.seed, step)
        parts = rank_micro_batches(x, y, ctx.rank, ctx.world, cfg.train.micro_batches)
        tally = StepTally(cfg.model.layers, cfg.model.experts, ctx.device)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (xm, ym) in enumerate(parts):
            # DDP averages gradients over ranks on the last micro-batch's backward only
            accumulate = ctx.distributed and i < len(parts) - 1
            with self.ddp.no_sync() if accumulate else contextlib.nullcontext():
                logits, stats = self.ddp(xm.to(ctx.device))
                ce = cross_entropy(logits, ym.to(ctx.device))
                aux, z = router_losses(stats, cfg.model, self.balance)
                ((ce + aux + z) / len(parts)).backward()
            tally.add(stats, {"train_loss": float(ce.detach()), "aux_loss": float(aux.detach()),
                              "z_loss": float(z.detach())})
        values = tally.reduce(ctx.all_reduce, ctx.world)
        if not math.isfinite(values["train_loss"]):  # the same value on every rank: all stop together
            raise MoeRouteError(f"{cfg.name}: training loss became {values['train_loss']} at step {step + 1}")
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        self.model.step_schedule()
        self.model.step_router_states(ctx.all_reduce)
        self.balance.reset()
        return values


def _restore(ckpt: Path, model: MoELM, optimizer: torch.optim.Optimizer) -> int:
    """Load ``ckpt`` into ``model`` and ``optimizer`` (on every rank); the step it was saved after."""
    state = load_checkpoint(ckpt)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise MoeRouteError(f"{ckpt}: does not match this run's model ({first})") from None
    return int(state["step"])  # the SoftTopk step came back with the model's schedule_step buffers


def train_run(
    cfg: RunConfig, run_dir: Path, corpus: Optional[Corpus] = None, resume: bool = False,
    progress: Optional[Callable[[str], None]] = None, dist: Optional[DistContext] = None,
) -> RunResult:
    """Train run ``cfg`` for ``cfg.train.steps`` optimizer steps, writing ``run_dir/log.csv`` and
    ``run_dir/checkpoint.pt`` (at every evaluation and at the end; rank 0 only, atomically). With ``resume``,
    continue from the checkpoint in ``run_dir`` if there is one: model, router states, optimizer, SoftTopk step
    and log are restored, and the batches of the remaining steps are the ones a run without interruption would
    have drawn, whatever the number of ranks either run had.

    ``dist``: this process's place among data-parallel ranks (default: one process on ``cfg.train.device``).
    Every rank calls this with the same arguments; each trains on its share of every global batch."""
    ctx = dist or DistContext(device=resolve_device(cfg.train.device))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    corpus = corpus or Corpus.from_config(cfg.data)
    micro = micro_batch_size(cfg.data.batch_size, ctx.world, cfg.train.micro_batches)  # refused before any work
    val = val_batches(corpus, cfg.data, rank=ctx.rank, world=ctx.world, batch=micro)
    model = build_model(cfg).to(ctx.device)
    optimizer = make_optimizer(model, cfg)
    ckpt, log_path = run_dir / "checkpoint.pt", run_dir / "log.csv"
    start, rows = 0, []
    if resume and ckpt.is_file():
        start = _restore(ckpt, model, optimizer)
        rows = _read_log(log_path, start) if ctx.is_main else []
    trainer = _Trainer(cfg, ctx, model, wrap_model(model, ctx), optimizer,
                       GlobalBalance(cfg.model.aux_loss_coef, ctx.all_reduce))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    began = time.perf_counter()
    val_loss = float("nan")
    history: list[dict[str, float]] = []
    for step in range(start, cfg.train.steps):
        tick = time.perf_counter()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        temperature = model.temperature if cfg.arm.uses_softtopk else None
        values = trainer.step(corpus, step)
        done = step + 1
        row = {"step": done, "tokens": done * tokens_per_step, "temperature": _fmt(temperature), "lr": _fmt(lr),
               "step_time_s": _fmt(time.perf_counter() - tick), **{k: _fmt(v) for k, v in values.items()}}
        history.append({"step": done, **values})
        if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
            val_loss = evaluate_loss(model, val, ctx)
            row["val_loss"] = _fmt(val_loss)
            history[-1]["val_loss"] = val_loss
            rows.append(row)
            if ctx.is_main:
                save_checkpoint(ckpt, cfg, done, model, optimizer, model.schedule_state(), ctx.world)
                write_log(log_path, rows)
                if progress:
                    progress(f"{cfg.name}: step {done}/{cfg.train.steps} train {values['train_loss']:.4f} "
                             f"val {val_loss:.4f}")
        else:
            rows.append(row)
    if start >= cfg.train.steps:
        val_loss = evaluate_loss(model, val, ctx)
    return RunResult(cfg.name, cfg.train.steps, val_loss, time.perf_counter() - began, log_path, ckpt, history)
