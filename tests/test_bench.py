"""`moeroute bench` runs end to end on tiny sizes and prints its tables (no timing is asserted)."""

from __future__ import annotations

from moeroute.experiments import bench
from moeroute.experiments.cli import main


def test_bench_prints_solver_and_router_tables(capsys):
    code = main([
        "bench", "--sections", "solvers,routers", "--solver-sizes", "64x8,2x32x4", "--router-sizes", "2x32x4",
        "--router", "gshard", "--router", "dropless", "--router", "exact", "--repeats", "2", "--quiet",
        "--workloads", "skew", "--k", "2,8",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "Exact MCMF optimum" in out and "ortools direct" in out and "expert_ssp" in out
    assert "WRONG" not in out  # every fast solver found OR-tools' integer optimum
    assert "Routers" in out and "dropless" in out and "torch.topk" in out
    assert "k=8" in out  # a second k: its sizes with E < k are skipped, the tables still print


def test_bench_rejects_bad_sizes_and_sections(capsys):
    assert main(["bench", "--sections", "nope"]) == 2
    assert main(["bench", "--sections", "solvers", "--k", "2,x"]) == 2
    assert main(["bench", "--sections", "solvers", "--solver-sizes", "12"]) == 2
    assert "size must look like" in capsys.readouterr().err


def test_memory_rows_measure_a_router_in_a_child():
    rows = bench.memory_rows(["gshard"], bench.Size(1, 256, 8), "gauss", 2, 1.0, threads=1, log=lambda m: None)
    assert [r["router"] for r in rows] == ["torch.topk", "gshard"]
    assert all("peak_mb" in r and r["peak_mb"] >= 0 for r in rows)


def test_slow_solver_is_capped():
    import numpy as np

    scores = np.random.default_rng(0).random((1, 8, 4))
    assert bench.capped_solve(scores, 2, 4, "spfa", cap_s=30) is not None


def test_bench_refuses_an_absent_device(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert main(["bench", "--sections", "routers", "--device", "cuda", "--router-sizes", "64x8", "--quiet"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_router_rows_skip_a_captured_workload_of_another_width():
    rows = bench.router_rows(
        ["gshard"], [bench.Size(1, 256, 8)], ["captured:data/captured/ablation_maxscore.safetensors:layer0"], 2, 1.0,
        repeats=1, log=lambda m: None,
    )
    assert rows == []  # the file has E = 16, the size E = 8
    rows = bench.router_rows(
        ["gshard"], [bench.Size(32, 512, 16)], ["captured:data/captured/ablation_maxscore.safetensors:layer0"], 2,
        1.0, repeats=1, log=lambda m: None, gap=False,
    )
    assert {r["size"] for r in rows} == {"16x512x16"}  # 8192 tokens: as many groups as the file holds
