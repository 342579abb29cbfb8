"""Exact solvers and routers timed side by side: the same as ``moeroute bench`` (see benchmarks/README.md).

    PYTHONPATH=$PWD python benchmarks/bench_routing.py --quick      # about 1 min
    PYTHONPATH=$PWD python benchmarks/bench_routing.py              # full run, about 10 min
"""

import sys

from moeroute.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
