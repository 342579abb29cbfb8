"""Run an ablation config: every (arm, seed), then the captured logits and the report. Under torchrun every rank
runs the same sequence of runs (each data parallel); only rank 0 writes files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from moeroute.core.atomic import atomic_write_bytes
from moeroute.routers import bind_router
from moeroute.train.capture import capture_gate_logits, save_captured
from moeroute.train.checkpoint import load_checkpoint
from moeroute.train.config import AblationConfig, RunConfig, run_configs
from moeroute.train.data import Corpus
from moeroute.train.distributed import DistContext
from moeroute.train.loop import RunResult, build_model, train_run
from moeroute.train.report import write_report


@dataclass
class AblationResult:
    runs: list[RunResult] = field(default_factory=list)
    captured: Optional[Path] = None
    report: Optional[Path] = None


def capture_run(run: RunConfig, checkpoint: Path, corpus: Corpus, sequences: int, path: str) -> Path:
    """Load the trained model of ``run`` from ``checkpoint`` and save its gate logits (see :mod:`capture`)."""
    state = load_checkpoint(checkpoint)
    model = build_model(run)
    model.load_state_dict(state["model"])
    tensors = capture_gate_logits(model, corpus, run.data, sequences)
    meta = {"arm": run.arm.name, "router": run.arm.router, "weights": run.arm.weights, "seed": str(run.seed),
            "step": str(state["step"]), "group_size": str(run.data.seq_len), "k": str(run.model.k),
            "capacity_factor": str(run.model.capacity_factor), "source": "moeroute train"}
    return save_captured(tensors, path, meta)


def run_ablation(
    cfg: AblationConfig, arms: Optional[list[str]] = None, seeds: Optional[list[int]] = None, resume: bool = False,
    report: bool = True, progress: Optional[Callable[[str], None]] = None, dist: Optional[DistContext] = None,
) -> AblationResult:
    """Train every selected (arm, seed) of ``cfg``; copy each log to ``output.results/<arm>_seed<s>.csv``;
    capture logits if ``[capture]`` names a run that was trained; write the report over all logs present.
    ``dist``: this process's rank (every rank calls this alike; rank 0 alone writes results, captures and the
    report); default one process on ``cfg.train.device``."""
    out = AblationResult()
    runs = run_configs(cfg, arms, seeds)
    for arm in dict.fromkeys(r.arm for r in runs):
        bind_router(arm.router, weights=arm.weights)  # a bad spec fails now, not after hours of other arms
    main = dist is None or dist.is_main
    corpus = Corpus.from_config(cfg.data)
    results = Path(cfg.output.results)
    threads = torch.get_num_threads()
    try:
        for run in runs:
            result = train_run(run, Path(cfg.output.checkpoints) / run.name, corpus, resume,
                               progress if main else None, dist)
            out.runs.append(result)
            if not main:
                continue
            atomic_write_bytes(results / f"{run.name}.csv", result.log.read_bytes())
            cap = cfg.capture
            if cap.path and cap.arm == run.arm.name and cap.seed == run.seed:
                out.captured = capture_run(run, result.checkpoint, corpus, cap.sequences, cap.path)
                if progress:
                    progress(f"captured gate logits of {run.name} -> {out.captured}")
    finally:
        torch.set_num_threads(threads)
    if report and main:
        out.report = write_report(cfg, captured=captured_note(cfg))
    if dist is not None:
        dist.barrier()  # no rank leaves (and tears the group down) while rank 0 still writes
    return out


def captured_note(cfg: AblationConfig) -> Optional[str]:
    """The report's paragraph on the captured-logits file, if the config names one and it exists."""
    cap = cfg.capture
    if not cap.path or not Path(cap.path).is_file():
        return None
    from safetensors import safe_open

    with safe_open(cap.path, framework="pt") as f:
        keys = list(f.keys())
        shape = tuple(f.get_slice(keys[0]).get_shape()) if keys else ()
        meta = f.metadata() or {}
    size = Path(cap.path).stat().st_size
    return (f"`{cap.path}` ({size / 1e6:.2f} MB): keys {', '.join(keys)}, each {list(shape)} float32 gate logits of "
            f"run `{meta.get('arm', cap.arm)}` seed {meta.get('seed', cap.seed)} after {meta.get('step', '?')} steps, "
            f"on {cap.sequences} validation sequences of {meta.get('group_size', cfg.data.seq_len)} tokens (rows in "
            f"order: every {meta.get('group_size', cfg.data.seq_len)} rows are one routing group). Use it as the "
            f"workload `captured:{cap.path}:layer0`.")
