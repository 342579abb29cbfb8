"""``moeroute train CONFIG``: train the MoE language model once per (arm, seed) of an ablation config, then write
per-step logs, the summary table, figures and the Markdown report.

``torchrun --nproc_per_node N -m moeroute train CONFIG`` runs every run data parallel over N processes (gloo on
CPU, nccl with ``--device cuda``); rank 0 alone prints and writes. See docs/training.md."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from moeroute.core.errors import MoeRouteError

NAME = "train"
HELP = "train the small MoE LM for every arm and seed of an ablation config (e.g. configs/ablation.toml)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="a TOML ablation config")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_true", help="use the config's [profile.quick] (a tiny model, seconds)")
    prof.add_argument("--profile", metavar="NAME", help="apply [profile.NAME] of the config")
    p.add_argument("--arms", metavar="A,B", help="train only these arms (comma-separated names)")
    p.add_argument("--seeds", metavar="S,T", help="train only these seeds (comma-separated integers)")
    p.add_argument("--steps", type=int, help="override [train] steps")
    p.add_argument("--text", metavar="FILE", help="train on this text file instead of the bundled CPython docs")
    p.add_argument("--threads", type=int, help="torch CPU threads (override [train] threads)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (override [train] device); under torchrun cuda "
                   "means one GPU per process (cuda:LOCAL_RANK, nccl), cpu means gloo")
    p.add_argument("--output", metavar="DIR", help="write results, reports, checkpoints and captured logits under DIR")
    p.add_argument("--resume", action="store_true", help="continue runs from their checkpoints")
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild the report from existing logs")
    p.add_argument("--no-report", action="store_true", help="do not (re)write the report after training")


def _csv_list(text: str | None, cast, what: str) -> list | None:
    if not text:
        return None
    try:
        return [cast(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise MoeRouteError(f"--{what} must be a comma-separated list, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from moeroute.train.ablation import captured_note, run_ablation
    from moeroute.train.config import load_config, with_overrides
    from moeroute.train.distributed import init_distributed, launched_by_torchrun, shutdown
    from moeroute.train.report import write_report

    cfg = load_config(args.config, "quick" if args.quick else args.profile)
    train_over = {k: v for k, v in (("steps", args.steps), ("threads", args.threads), ("device", args.device)) if v is not None}
    data_over = {"text": args.text} if args.text else {}
    output_over, capture_over = {}, {}
    if args.output:
        root = Path(args.output)
        output_over = {"results": str(root / "results"), "reports": str(root / "reports"),
                       "report": str(root / "TRAINING.md"), "checkpoints": str(root / "runs")}
        if cfg.capture.path:
            capture_over = {"path": str(root / "captured" / Path(cfg.capture.path).name)}
    cfg = with_overrides(cfg, train=train_over, data=data_over, output=output_over, capture=capture_over)
    arms = _csv_list(args.arms, str, "arms")
    seeds = _csv_list(args.seeds, int, "seeds")
    if args.report_only:
        if launched_by_torchrun() and os.environ.get("RANK") != "0":
            return 0  # one writer
        path = write_report(cfg, captured=captured_note(cfg))
        if path is None:
            raise MoeRouteError(f"no training logs in {cfg.output.results}")
        print(f"report: {path}")
        return 0

    # The device is resolved (and the process group started) before anything is read or written, so a missing
    # GPU is one line and exit status 2.
    dist = init_distributed(cfg.train.device)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = run_ablation(cfg, arms, seeds, resume=args.resume, report=not args.no_report, progress=progress,
                              dist=dist)
    finally:
        shutdown(dist)
    if not dist.is_main:
        return 0
    where = f" on {dist.world} processes ({dist.backend}, {dist.device.type})" if dist.distributed else ""
    for r in result.runs:
        print(f"{r.name}: final val loss {r.final_val_loss:.4f} ({r.steps} steps, {r.seconds:.0f} s{where}) "
              f"log {r.log}")
    if result.captured:
        print(f"captured logits: {result.captured}")
    if result.report:
        print(f"report: {result.report}")
    return 0
