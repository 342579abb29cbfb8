"""Save and restore a training run: model (with each layer's router state), optimizer, the SoftTopk schedule (its
step) and the run's config. A checkpoint does not depend on the number of data-parallel processes that wrote it
(the model and optimizer are replicas, the global batch is fixed by the config), so a run saved on N ranks resumes
on M."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from moeroute.core.atomic import atomic_save
from moeroute.core.errors import MoeRouteError
from moeroute.train.config import RunConfig, run_config_from_dict


def save_checkpoint(path: Path, cfg: RunConfig, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, softtopk: dict[str, Any], world_size: int = 1) -> None:
    """Write everything needed to resume after ``step`` optimizer steps; ``softtopk`` is the SoftTopk schedule's
    ``state_dict()`` (also inside the model's state dict as its ``schedule_step`` buffers, which is what a resume
    restores); ``world_size`` (how many ranks trained it) is recorded for information only. ``model`` is the bare
    module, not its DDP wrapper. Written through :mod:`moeroute.core.atomic`: an interrupted save leaves the
    previous checkpoint. Call on rank 0 only."""
    state = {
        "step": step,
        "config": asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "softtopk": softtopk,
        "world_size": int(world_size),
    }
    atomic_save(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The dict :func:`save_checkpoint` wrote, with ``config`` rebuilt as a :class:`RunConfig`."""
    if not Path(path).is_file():
        raise MoeRouteError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise MoeRouteError(f"{path}: cannot read checkpoint ({type(exc).__name__})") from None
    for key in ("step", "config", "model", "optimizer", "softtopk"):
        if key not in state:
            raise MoeRouteError(f"{path}: not a moeroute training checkpoint (no {key!r})")
    state["config"] = run_config_from_dict(state["config"])
    return state
