"""Peak memory of evaluating one layer of a large capture: 10^6 tokens x 256 experts per layer (float32, about
1 GB a layer), two layers in one safetensors file written to a scratch folder (never committed).

Each measurement runs in a fresh Python process and reports its peak resident memory (``ru_maxrss``):

- ``python + torch + moeroute``: the floor, importing what every command imports;
- ``eval --max-groups``: ``moeroute eval`` on one layer, ``--group-size T --max-groups G`` (only those G windows are
  read from the file), routers gshard, dropless and maxscore, and the exact optimum;
- ``sweep point``: ``moeroute run`` on a config whose workload is ``captured:FILE:layer1`` (G groups of T);
- ``whole layer, as read before``: what the captured workload did before lazy reading (``load_file`` of the file,
  then the layer validated and made contiguous float32), for contrast.

    python benchmarks/captured_memory.py                       # T = 4096, G = 2 (a few minutes, 2 GB of disk)
    python benchmarks/captured_memory.py --tokens 1000000 --experts 256 --group-size 4096 --groups 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_capture(path: Path, tokens: int, experts: int, layers: int, chunk: int = 65536) -> None:
    """A safetensors file of ``layers`` float32 ``[tokens, experts]`` tensors (skewed Gaussian logits, seeded),
    streamed chunk by chunk so the writer never holds a layer in memory (the format: an 8-byte little-endian header
    length, a JSON header of dtype / shape / byte offsets, then the raw data)."""
    size = tokens * experts * 4
    header = {f"layer{i}": {"dtype": "F32", "shape": [tokens, experts], "data_offsets": [i * size, (i + 1) * size]}
              for i in range(layers)}
    header["__metadata__"] = {"moeroute.routing": json.dumps({"k": 8, "score": "softmax"})}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for _ in range(layers):
            bias = rng.normal(0, 0.5, experts).astype(np.float32)
            for start in range(0, tokens, chunk):
                n = min(chunk, tokens - start)
                fh.write((rng.standard_normal((n, experts), dtype=np.float32) + bias).tobytes())


def peak_mb(argv: list[str]) -> tuple[float, float]:
    """Peak resident MB and seconds of ``argv`` run as a child of a fresh Python process."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
             "assert r.returncode == 0, r.stderr.decode()[-500:]; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    mb, seconds = out.stdout.split()
    return float(mb), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4096)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--dir", help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="captured_memory_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        cap = scratch / "big.safetensors"
        t0 = time.perf_counter()
        write_capture(cap, args.tokens, args.experts, args.layers)
        print(f"{cap.name}: {args.layers} layer(s) x {args.tokens:,} tokens x {args.experts} experts, "
              f"{cap.stat().st_size / 1e9:.2f} GB, written in {time.perf_counter() - t0:.0f} s")
        config = scratch / "point.toml"
        config.write_text(f'name = "big"\nrouters = ["gshard", "dropless", "maxscore"]\n'
                          f'workloads = ["captured:{cap}:layer1"]\ntokens = {args.group_size}\n'
                          f'groups = {args.groups}\nrepeats = 1\n')
        py = [sys.executable]
        cases = [
            ("python + torch + moeroute", py + ["-c", "import torch, moeroute.evaluation, moeroute.workloads"]),
            (f"eval --max-groups {args.groups} (T={args.group_size})",
             py + ["-m", "moeroute", "eval", "--logits", str(cap), "--key", "layer1", "--group-size",
                   str(args.group_size), "--max-groups", str(args.groups), "--router", "gshard", "--router",
                   "dropless", "--router", "maxscore", "--repeats", "1", "--format", "json"]),
            (f"sweep point (G={args.groups}, T={args.group_size})",
             py + ["-m", "moeroute", "run", str(config), "--out", str(scratch / "res"), "--no-progress"]),
            ("whole layer, as read before (load_file)",
             py + ["-c", "from safetensors.torch import load_file; from moeroute.core.problem import as_groups; "
                         f"x = as_groups(load_file({str(cap)!r})['layer1']); x.reshape(-1, x.shape[-1]).contiguous()"]),
        ]
        print(f"{'what':<40} {'peak RSS MB':>12} {'seconds':>8}")
        for name, argv in cases:
            mb, seconds = peak_mb(argv)
            print(f"{name:<40} {mb:>12.0f} {seconds:>8.1f}", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
