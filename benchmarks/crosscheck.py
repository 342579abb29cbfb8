"""Cross-check moeroute's routers against Megatron-Core, DeepSpeed and Hugging Face transformers on a large grid.

For every comparison of ``moeroute.crosscheck.COMPARISONS``: k in {1, 2, 4, 8}, cf in {0.5, 1, 1.25, 2} (once per k
for comparisons without capacity), on random logits (Megatron's force_biased benchmark logits, std 1) and on router
logits captured from the trained model (data/captured), groups of T tokens and E = 16 experts. Prints a markdown
table: groups routed identically out of groups compared, the largest combine-weight difference over the identical
groups, and whether the final router state (bias, beta) matched; then what the libraries' own rules do that has no
equivalent (measured here).

    DS_BUILD_OPS=0 DS_ACCELERATOR=cpu pip install -e ".[crosscheck]"
    python benchmarks/crosscheck.py                     # 60 groups of 256 tokens per (k, cf): 960 per comparison
    python benchmarks/crosscheck.py --groups 8 --tokens 64   # seconds
    python benchmarks/crosscheck.py --megatron-lm ~/Megatron-LM   # QB from a Megatron-LM checkout

The table of the run on the committed data is in docs/crosscheck.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_BUILD_OPS", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from moeroute import route  # noqa: E402
from moeroute.crosscheck import COMPARISONS, Outcome, run_comparison  # noqa: E402
from moeroute.crosscheck import libraries as lib  # noqa: E402
from moeroute.workloads import workload_logits  # noqa: E402

CAPTURED = ROOT / "data" / "captured" / "ablation_maxscore.safetensors"
KS = (1, 2, 4, 8)
CFS = (0.5, 1.0, 1.25, 2.0)


def logit_pool(groups: int, tokens: int) -> dict[str, torch.Tensor]:
    """``groups`` random and ``groups`` captured groups (half from each captured layer)."""
    half = groups // 2
    captured = torch.cat([
        workload_logits(f"captured:{CAPTURED}:layer0", half, tokens, None, seed=1),
        workload_logits(f"captured:{CAPTURED}:layer1", groups - half, tokens, None, seed=2),
    ])
    return {"random": workload_logits("force_biased:std=1", groups, tokens, 16, seed=0), "captured": captured}


def run_all(pool: dict[str, torch.Tensor]) -> list[tuple[object, Outcome, str]]:
    rows = []
    for c in COMPARISONS:
        total = Outcome(c.name)
        skipped = set()
        for logits in pool.values():
            for k in KS:
                for cf in CFS if c.capacity else (None,):
                    out = run_comparison(c, logits, k, cf)
                    if out.skipped:
                        skipped.add(out.skipped)
                        continue
                    total.add(out)
        reason = "" if total.compared else "; ".join(sorted(s for s in skipped if not s.startswith("not applicable")))
        rows.append((c, total, reason))
    return rows


def _weights(out: Outcome) -> str:
    if not out.compared:
        return "-"
    if not out.weights_compared:
        return "n/a"
    return "0 (bit-identical)" if out.max_weight_diff == 0.0 else f"{out.max_weight_diff:.2e}"


def print_table(rows: list[tuple[object, Outcome, str]]) -> None:
    print("| comparison | library | identical / compared | max weight diff | final state | note |")
    print("|---|---|---|---|---|---|")
    for c, out, reason in rows:
        lib_name = {"megatron.core": "Megatron-Core", "deepspeed": "DeepSpeed", "transformers": "transformers"}[c.library]
        ident = f"{out.identical} / {out.compared}" if out.compared else "not run"
        state = "-" if out.state_identical is None else ("identical" if out.state_identical else "differs")
        note = reason or c.note
        if not c.equivalent:
            note = ("no equivalent: " + note).strip()
        print(f"| {c.name} | {lib_name} | {ident} | {_weights(out)} | {state} | {note} |")


def position_evidence() -> list[str]:
    """Which tokens Megatron's ``position`` policy and DeepSpeed's ``top1gating(use_rts=False)`` keep when all 70
    tokens of a group want one expert and C = 61 (moeroute keeps tokens 0..60)."""
    logits = torch.zeros(1, 70, 2)
    logits[..., 0] = 5.0
    cf = 61 / 35
    lines = []
    ours = (route(logits, "gshard", k=1, capacity_factor=cf).experts[0, :, 0] >= 0).nonzero().squeeze(1).tolist()
    lines.append(f"moeroute gshard (first come): kept {len(ours)}, dropped {sorted(set(range(70)) - set(ours))}")
    if not lib.missing("megatron.core"):
        maps, _ = lib.megatron_topk(logits, 1, cf, drop_policy="position")
        kept = maps[0, :, 0].nonzero().squeeze(1).tolist()
        lines.append(f"Megatron-Core position: kept {len(kept)}, dropped {sorted(set(range(70)) - set(kept))}")
    if not lib.missing("deepspeed"):
        maps, _ = lib.deepspeed_gate(logits, 1, cf, "top1")
        kept = maps[0, :, 0].nonzero().squeeze(1).tolist()
        lines.append(f"DeepSpeed top1gating(use_rts=False): kept {len(kept)}, dropped {sorted(set(range(70)) - set(kept))}")
    return lines


def sinkhorn_overflow() -> str:
    """The smallest logit offset at which Megatron's ``sinkhorn`` returns NaN (bisection on a [64, 8] group)."""
    if lib.missing("megatron.core"):
        return "Megatron-Core not installed"
    mu = lib.megatron_utils()
    base = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))

    def nan_at(offset: float) -> bool:
        return bool(torch.isnan(mu.sinkhorn(base + torch.tensor([offset] + [0.0] * 7))).any())

    lo, hi = 0.0, 200.0
    if not nan_at(hi):
        return "no NaN up to a logit offset of 200"
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if nan_at(mid) else (mid, hi)
    return f"Megatron-Core sinkhorn returns NaN once one expert's logits exceed the others' by about {hi:.1f}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for dist in ("megatron-core", "deepspeed", "transformers"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} absent")
    return ", ".join(parts)


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=30, help="random groups and captured groups each (default 30)")
    p.add_argument("--tokens", type=int, default=256, help="tokens per group T (default 256)")
    p.add_argument("--megatron-lm", metavar="PATH", help="a Megatron-LM checkout, for what megatron-core lacks (QB)")
    args = p.parse_args(argv)
    if args.megatron_lm:
        os.environ[lib.MEGATRON_LM_ENV] = args.megatron_lm
    torch.set_num_threads(1)
    start = time.perf_counter()
    pool = logit_pool(args.groups, args.tokens)
    rows = run_all(pool)
    print(f"{2 * args.groups} groups of {args.tokens} tokens, E = 16, k in {KS}, cf in {CFS}; {versions()}\n")
    print_table(rows)
    print("\nNo equivalent (all 70 tokens want expert 0, k = 1, C = 61):")
    for line in position_evidence():
        print(f"- {line}")
    print(f"- {sinkhorn_overflow()}")
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
