"""Sweep configs (good and bad), the sweep runner, and resume after a run killed mid-sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from moeroute.core.device import resolve_device
from moeroute.core.errors import MoeRouteError
from moeroute.core.plugins import load_plugin_file
from moeroute.experiments.cli import main
from moeroute.experiments.sweep.config import load_config
from moeroute.experiments.sweep.run import COLUMNS, run_sweep
from moeroute.experiments.sweep.store import ResultStore, read_results, results_frame
from moeroute.routers import router_names

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent(
    '''
    """Test routers: a slow one (so a sweep can be killed mid-way) and one that refuses every input."""
    import time
    from moeroute.core.errors import MoeRouteError
    from moeroute.routers.gshard import GShardOptions, gshard
    from moeroute.routers.registry import NoOptions, register_router

    @register_router("test_slowpoke", GShardOptions, "gshard after a nap")
    def slowpoke(x, opts):
        time.sleep(0.03)
        return gshard(x, opts)

    @register_router("test_refuser", NoOptions, "refuses everything")
    def refuser(x, opts):
        raise MoeRouteError("test_refuser refuses this point")
    '''
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "test_routers.py"
    path.write_text(PLUGIN)
    if "test_slowpoke" not in router_names():
        load_plugin_file(str(path))
    return path


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


GOOD_TOML = """
    name = "mini"
    groups = 1
    tokens = 32
    experts = 8
    seeds = 2
    repeats = 1
    [[grid]]
    name = "main"
    routers = ["gshard", "gshard:drop_policy=probs", "exact"]
    workloads = ["gauss", "hot:hot=2"]
    [[grid]]
    name = "cf"
    routers = ["gshard", "dropless"]
    workloads = ["gauss"]
    cf = [0.5, 1.0, "none"]
"""

GOOD_YAML = """
    name: mini
    groups: 1
    tokens: 32
    experts: 8
    seeds: 2
    repeats: 1
    grid:
      - name: main
        routers: [gshard, "gshard:drop_policy=probs", exact]
        workloads: [gauss, "hot:hot=2"]
      - name: cf
        routers: [gshard, dropless]
        workloads: [gauss]
        cf: [0.5, 1.0, none]
"""


def test_good_config_toml_and_yaml_agree(tmp_path):
    a = load_config(write(tmp_path, "a.toml", GOOD_TOML))
    b = load_config(write(tmp_path, "b.yaml", GOOD_YAML))
    assert a.name == b.name == "mini"
    assert a.points == b.points
    # main: 2 workloads x 2 seeds; cf: 3 cfs x 2 seeds, but cf=1 gauss repeats main's points -> merged
    assert len(a.points) == 4 + 4
    merged = [routers for grid, p, routers in a.points if p.workload == "gauss" and p.cf == 1.0]
    assert all(set(r) == {"gshard", "gshard:drop_policy=probs", "exact", "dropless"} for r in merged)
    assert {p.cf for _, p, _ in a.points} == {0.5, 1.0, None}
    assert {p.seed for _, p, _ in a.points} == {0, 1}


def test_single_grid_at_top_level_and_canonical_specs(tmp_path):
    cfg = load_config(write(tmp_path, "one.toml", """
        routers = ["gshard:drop_policy=probs,renormalize=true"]
        workloads = "gauss"
        tokens = 64
        seeds = [3, 7]
    """))
    assert cfg.name == "one"
    (grid,) = cfg.grids
    assert grid.routers == ("gshard:drop_policy=probs,renormalize=true",)
    assert grid.tokens == (64,) and grid.groups == (4,) and grid.experts == (16,) and grid.seeds == (3, 7)


@pytest.mark.parametrize(
    "body, message",
    [
        ('workloads = ["gauss"]', "missing 'routers'"),
        ('routers = ["gshard"]', "missing 'workloads'"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\ntokenz = [4]', "unknown key 'tokenz'"),
        ('routers = ["gshard", "warp_drive", "hyperloop:stage2=exact"]\nworkloads = ["gauss"]',
         "unknown router\\(s\\) warp_drive, hyperloop"),
        ('routers = ["gshard:drop_policy=random"]\nworkloads = ["gauss"]', "drop_policy"),
        ('routers = ["gshard"]\nworkloads = ["nope"]', "unknown workload"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\ntokens = [0]', "'tokens' must be integers >= 1"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\ncf = [0]', "'cf' must be numbers > 0"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\ncf = ["lots"]', "'cf' of a sweep grid must be float; got 'lots'"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\nk = [20]', "k=20 exceeds E=16"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\nseeds = 0', "'seeds' as a count"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\nrepeats = 0', "'repeats' must be integers >= 1"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\nsolver = "magic"', "unknown solver"),
        ('routers = []\nworkloads = ["gauss"]', "'routers' of a sweep grid is empty"),
        ('name = "../evil"\nrouters = ["gshard"]\nworkloads = ["gauss"]', "plain file name"),
        ('routers = ["gshard"]\nworkloads = ["gauss"]\n[[grid]]\nname = "a"\n[[grid]]\nname = "a"', "grid names repeat"),
        ('routers = ["gshard"\nworkloads = ', "cannot parse"),
    ],
)
def test_bad_configs(tmp_path, body, message):
    with pytest.raises(MoeRouteError, match=message):
        load_config(write(tmp_path, "bad.toml", body))


def test_bad_config_files(tmp_path):
    with pytest.raises(MoeRouteError, match="not found"):
        load_config(str(tmp_path / "nope.toml"))
    with pytest.raises(MoeRouteError, match=".toml, .yaml"):
        load_config(write(tmp_path, "c.json", "{}"))
    with pytest.raises(MoeRouteError, match="table/mapping"):
        load_config(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_captured_workload_in_a_config(tmp_path):
    torch.save({"layer0": torch.randn(100, 6)}, tmp_path / "cap.pt")
    cfg = load_config(write(tmp_path, "cap.toml", f"""
        routers = ["gshard"]
        workloads = ["captured:{tmp_path / 'cap.pt'}:layer0"]
        tokens = 50
        groups = 2
        experts = [8, 16]
    """))
    assert [p.experts for _, p, _ in cfg.points] == [6]  # the file's E, once, whatever the grid's experts
    with pytest.raises(MoeRouteError, match="too few"):
        load_config(write(tmp_path, "cap2.toml", f"""
            routers = ["gshard"]
            workloads = ["captured:{tmp_path / 'cap.pt'}:layer0"]
            tokens = 50
            groups = 3
        """))


def test_run_writes_rows_and_resumes(tmp_path, plugin):
    cfg = load_config(write(tmp_path, "r.toml", GOOD_TOML.replace('"exact"]', '"exact", "test_refuser"]')))
    first = run_sweep(cfg, tmp_path / "out", progress=False)
    df = pd.read_csv(tmp_path / "out" / "mini.csv", keep_default_na=False)
    assert list(df.columns) == COLUMNS
    # gauss cf=1: main's 4 routers + cf's dropless; hot: 4; the cf-only points (0.5, none): 2 each; 2 seeds each
    assert first.rows_written == len(df) == 2 * 5 + 2 * 4 + 4 * 2
    assert df["key"].is_unique
    refused = df[df["router"] == "test_refuser"]
    assert len(refused) == first.errors == 4 and refused["error"].str.contains("refuses").all()
    good = df[df["error"] == ""]
    assert good["sorted_load_ratios"].str.startswith("[").all()
    assert (good["torch_version"] == torch.__version__).all() and (good["threads"] == 1).all()
    assert set(good["cf"]) == {"0.5", "1.0", "none"}
    # a re-run skips every good row and retries only the errors, replacing them (no duplicates)
    again = run_sweep(cfg, tmp_path / "out", progress=False)
    assert again.rows_skipped == len(good) and again.rows_written == 4
    df2 = pd.read_csv(tmp_path / "out" / "mini.csv", keep_default_na=False)
    assert len(df2) == len(df) and df2["key"].is_unique
    assert not list((tmp_path / "out").glob("*.partial*"))


def test_store_ignores_leftover_temp_files_and_refuses_a_second_writer(tmp_path):
    path = tmp_path / "s.csv"
    with ResultStore(path, ["key", "x"]) as store:
        store.add([{"key": "a", "x": 1}])
        (tmp_path / "s.csv.partial.999999").write_text("key,x\nb,2\nc,")  # a torn temp file from a killed run
        (tmp_path / "s.parts" / "00000009-1.csv.partial.7").write_text("key,x\nd,")
        with pytest.raises(MoeRouteError, match="another moeroute run"):
            ResultStore(path, ["key", "x"])
    with ResultStore(path, ["key", "x"]) as store:
        assert set(store.rows) == {"a"}
    assert not list(tmp_path.glob("*.partial*")) and not (tmp_path / "s.parts").exists()
    assert [r["key"] for r in read_results(path)] == ["a"]


def test_store_segments_are_read_before_compaction_and_cost_only_their_rows(tmp_path):
    path = tmp_path / "s.csv"
    store = ResultStore(path, ["key", "x"])
    store.add([{"key": str(i), "x": i} for i in range(3)])
    segment = store.add([{"key": "9", "x": 9}])
    assert segment.read_text().count("\n") == 2  # its header and its one row, whatever is stored already
    assert sorted(r["key"] for r in read_results(path)) == ["0", "1", "2", "9"]  # readers see uncompacted parts
    store.compact()
    store.close()
    assert not (tmp_path / "s.parts").exists()
    frame = results_frame(path)
    assert sorted(frame["x"].tolist()) == [0, 1, 2, 9]


def test_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(MoeRouteError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(MoeRouteError, match="unknown device|unsupported device"):
        resolve_device("tpu")


def test_cli_run_errors_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = write(tmp_path, "c.toml", 'routers = ["gshard"]\nworkloads = ["gauss"]\ntokens = 16\ngroups = 1')
    assert main(["run", cfg, "--device", "cuda", "--out", str(tmp_path)]) == (0 if torch.cuda.is_available() else 2)


def test_kill_mid_sweep_then_resume(tmp_path, plugin):
    """SIGKILL a real `python -m moeroute run` mid-sweep: the CSV stays parseable with whole points only, and a
    re-run finishes the rest without duplicating or losing a row."""
    cfg = write(tmp_path, "kill.toml", """
        name = "kill"
        routers = ["gshard", "test_slowpoke"]
        workloads = ["gauss"]
        tokens = 32
        groups = 1
        experts = 4
        seeds = 40
        repeats = 1
    """)
    out = tmp_path / "out"
    csv = out / "kill.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "moeroute", "--plugin", str(plugin), "run", cfg, "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            if len(read_results(csv)) >= 6:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the sweep was not killed mid-way: {proc.stderr.read().decode()[-500:]}"
    killed = results_frame(csv)
    assert 6 <= len(killed) < 80 and len(killed) % 2 == 0  # whole points only
    assert killed["key"].is_unique and killed["error"].isna().all()

    summary = run_sweep(load_config(cfg), out, progress=False)
    assert summary.rows_skipped == len(killed) and summary.rows_written == 80 - len(killed)
    final = pd.read_csv(csv, keep_default_na=False)
    assert len(final) == 80 and final["key"].is_unique
    assert sorted(final["seed"].unique()) == list(range(40))
    assert (final.groupby("seed").size() == 2).all()
    kept = final.set_index("key").loc[killed["key"], ["timestamp", "latency_ms"]]
    assert (kept.astype(str).values == killed.set_index("key")[["timestamp", "latency_ms"]].astype(str).values).all()  # not recomputed
    assert not list(out.glob("*.partial*"))


def test_rows_carry_score_function_balance_and_ep_view(tmp_path):
    cfg = write(tmp_path, "modern.toml", """
        name = "modern"
        routers = ["gshard", "gshard:score=sigmoid,groups=4,group_topk=2", "exact:score=sigmoid", "qb"]
        workloads = ["force_biased:std=1"]
        tokens = 64
        groups = 2
        experts = 16
        k = 4
        ep_ranks = 4
        repeats = 1
    """)
    run_sweep(load_config(cfg), tmp_path, progress=False)
    rows = {r["router"]: r for r in read_results(tmp_path / "modern.csv")}
    assert rows["gshard"]["score"] == "softmax"
    assert rows["gshard:group_topk=2,groups=4,score=sigmoid"]["score"] == "sigmoid"
    exact = rows["exact:score=sigmoid"]
    assert exact["score"] == "sigmoid" and abs(float(exact["gap"])) < 1e-6  # against the sigmoid optimum
    assert float(rows["gshard"]["optimum"]) != float(exact["optimum"])  # two score functions, two optima
    for row in rows.values():
        assert row["ep_ranks"] == "4" and len(json.loads(row["ep_rank_tokens"])) == 4
        assert float(row["max_vio"]) >= 0 and 0 <= float(row["gini"]) < 1
