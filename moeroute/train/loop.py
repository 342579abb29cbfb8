"""One training run of the ablation (one arm, one seed): the optimisation loop, per-step CSV log, evaluation on
the fixed validation set, checkpoint (with the SoftTopk step) and resume."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from moeroute.core.device import resolve_device
from moeroute.core.errors import MoeRouteError
from moeroute.core.metrics import routing_metrics
from moeroute.train.checkpoint import load_checkpoint, save_checkpoint
from moeroute.train.config import RunConfig
from moeroute.train.data import Corpus, train_batch, val_batches
from moeroute.train.model import MoELM
from moeroute.train.moe import MoEStats

LOG_COLUMNS = (
    "step", "tokens", "train_loss", "aux_loss", "val_loss", "slot_drop_rate", "second_choice_drop_rate",
    "mean_load_ratio", "max_load_ratio", "rank1_affinity", "rank2_affinity", "temperature", "lr", "step_time_s",
)
"""Columns of a run's ``log.csv``: one row per optimizer step; ``val_loss`` only on evaluation steps. Losses are
mean next-byte cross-entropy in nats; routing numbers are this step's training batch, averaged over MoE layers
(:func:`moeroute.core.metrics.routing_metrics`); ``temperature`` is SoftTopk's ``t`` (empty for other weight
operators)."""

_ROUTING_KEYS = ("slot_drop_rate", "second_choice_drop_rate", "mean_load_ratio", "max_load_ratio",
                 "rank1_affinity", "rank2_affinity")


@dataclass
class RunResult:
    name: str
    steps: int
    final_val_loss: float
    seconds: float
    log: Path
    checkpoint: Path


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


def layer_mean_metrics(stats: list[MoEStats]) -> dict[str, Optional[float]]:
    """The routing numbers of :data:`LOG_COLUMNS`, averaged over layers (``None`` where a layer has none)."""
    rows = [routing_metrics(s.inputs, s.routing) for s in stats]
    out: dict[str, Optional[float]] = {}
    for key in _ROUTING_KEYS:
        values = [getattr(m, key) for m in rows if getattr(m, key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


@torch.no_grad()
def evaluate_loss(model: MoELM, batches: list, device: torch.device) -> float:
    """Mean validation cross-entropy (nats per byte) in eval mode (SoftTopk at ``t = 1``)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        ce, _, _ = model.loss(x.to(device), y.to(device))
        total += float(ce) * x.numel()
        count += x.numel()
    model.train(was)
    return total / count


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.6g}"


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def train_run(
    cfg: RunConfig, run_dir: Path, corpus: Optional[Corpus] = None, resume: bool = False,
    progress: Optional[Callable[[str], None]] = None,
) -> RunResult:
    """Train run ``cfg`` for ``cfg.train.steps`` optimizer steps, writing ``run_dir/log.csv`` (every step) and
    ``run_dir/checkpoint.pt`` (at every evaluation and at the end). With ``resume``, continue from the checkpoint
    in ``run_dir`` if there is one: model, optimizer, SoftTopk step and log are restored, and the batches of the
    remaining steps are the ones a run without interruption would have drawn."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    corpus = corpus or Corpus.from_config(cfg.data)
    val = val_batches(corpus, cfg.data)
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    ckpt, log_path = run_dir / "checkpoint.pt", run_dir / "log.csv"
    start, rows = 0, []
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])  # the SoftTopk step came back with the model's schedule_step buffers
        rows = _read_log(log_path, start)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    began = time.perf_counter()
    val_loss = float("nan")
    with log_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(LOG_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
        for step in range(start, cfg.train.steps):
            tick = time.perf_counter()
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            temperature = model.temperature if cfg.arm.uses_softtopk else None
            x, y = train_batch(corpus, cfg.data, cfg.seed, step)
            ce, aux, stats = model.loss(x.to(device), y.to(device))
            if not torch.isfinite(ce):
                raise MoeRouteError(f"{cfg.name}: training loss became {float(ce)} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            (ce + aux).backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            model.step_schedule()
            elapsed = time.perf_counter() - tick
            done = step + 1
            evaluate_now = done % cfg.train.eval_every == 0 or done == cfg.train.steps
            row = {"step": done, "tokens": done * tokens_per_step, "train_loss": _fmt(float(ce.detach())),
                   "aux_loss": _fmt(float(aux.detach())), "temperature": _fmt(temperature), "lr": _fmt(lr),
                   "step_time_s": _fmt(elapsed)}
            row.update({k: _fmt(v) for k, v in layer_mean_metrics(stats).items()})
            if evaluate_now:
                val_loss = evaluate_loss(model, val, device)
                row["val_loss"] = _fmt(val_loss)
            writer.writerow(row)
            if evaluate_now:
                f.flush()
                save_checkpoint(ckpt, cfg, done, model, optimizer, model.schedule_state())
                if progress:
                    progress(f"{cfg.name}: step {done}/{cfg.train.steps} train {float(ce.detach()):.4f} val {val_loss:.4f}")
    if start >= cfg.train.steps:
        val_loss = evaluate_loss(model, val, device)
    return RunResult(cfg.name, cfg.train.steps, val_loss, time.perf_counter() - began, log_path, ckpt)
