"""Sweeps on several cores and on Ray: the rows a sweep stores are the same whichever executor computed them
(apart from where and when: latencies, timestamps, host and worker), the driver alone writes, and resume works
across executors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.cli import main
from moeroute.experiments.sweep.config import load_config
from moeroute.experiments.sweep.executors import Executor, RayExecutor, make_executor, start_local_ray
from moeroute.experiments.sweep.run import COLUMNS, EXECUTION_COLUMNS, run_sweep

TINY = """
    name = "tiny"
    groups = 2
    tokens = 32
    experts = 8
    seeds = 2
    repeats = 1
    routers = ["gshard", "gshard:drop_policy=probs", "maxscore", "sinkhorn", "exact", "aux_free"]
    workloads = ["gauss", "skew"]
    cf = [1.0, "none"]
"""
POINTS, ROUTERS = 2 * 2 * 2, 6


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(textwrap.dedent(TINY))
    return str(path)


@pytest.fixture(scope="module")
def serial(tmp_path_factory, config) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("serial")
    summary = run_sweep(load_config(config), out, progress=False)
    assert summary.points == POINTS and summary.errors == 0
    return pd.read_csv(out / "tiny.csv", keep_default_na=False, dtype=str)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) for this module's tests, shut down at the end."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra moeroute[cluster]")
    start_local_ray(2)
    yield ray
    ray.shutdown()


def computed(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns that say what was computed (not where or when), one row per key in key order."""
    return frame.drop(columns=list(EXECUTION_COLUMNS) + ["row_sha"]).sort_values("key").reset_index(drop=True)


def assert_same_rows(frame: pd.DataFrame, serial: pd.DataFrame) -> None:
    assert list(frame.columns) == COLUMNS
    assert len(frame) == len(serial) == POINTS * ROUTERS
    pd.testing.assert_frame_equal(computed(frame), computed(serial))


def test_two_worker_processes_store_the_rows_of_a_serial_run(tmp_path, config, serial):
    with make_executor("local", workers=2) as executor:
        summary = run_sweep(load_config(config), tmp_path, progress=False, executor=executor)
    assert summary.points == POINTS and "2 local worker processes" in summary.executor
    frame = pd.read_csv(tmp_path / "tiny.csv", keep_default_na=False, dtype=str)
    assert_same_rows(frame, serial)
    # two processes served the points (on a loaded machine one may have taken them all before the other started)
    assert frame["worker"].str.startswith("process:").all() and 1 <= frame["worker"].nunique() <= 2
    assert (frame["threads"] == "1").all() and (serial["worker"].str.startswith("serial:")).all()
    # resume is the executor's business no more than the rows are: a serial re-run finds everything done
    again = run_sweep(load_config(config), tmp_path, progress=False)
    assert again.rows_written == 0 and again.rows_skipped == POINTS * ROUTERS


def test_local_ray_stores_the_rows_of_a_serial_run(tmp_path, config, serial, ray_session):
    with make_executor("ray", workers=2) as executor:
        assert isinstance(executor, RayExecutor) and executor.workers == 2
        summary = run_sweep(load_config(config), tmp_path, progress=False, executor=executor)
    assert ray_session.is_initialized()  # a Ray this run did not start is left running
    assert summary.points == POINTS and summary.errors == 0
    frame = pd.read_csv(tmp_path / "tiny.csv", keep_default_na=False, dtype=str)
    assert_same_rows(frame, serial)
    assert frame["worker"].str.startswith("ray:").all()


def test_ray_via_the_command_line_resumes_a_partial_serial_run(tmp_path, config, serial, ray_session, capsys):
    half = tmp_path / "half.toml"
    half.write_text(Path(config).read_text().replace('seeds = 2', 'seeds = 1'))
    assert main(["run", str(half), "--out", str(tmp_path), "--no-progress"]) == 0
    assert main(["run", config, "--out", str(tmp_path), "--no-progress", "--executor", "ray"]) == 0
    err = capsys.readouterr().err
    assert f"{POINTS * ROUTERS // 2} row(s) written from {POINTS // 2} point(s)" in err and "Ray" in err
    assert_same_rows(pd.read_csv(tmp_path / "tiny.csv", keep_default_na=False, dtype=str), serial)


def test_without_ray_the_error_says_how_to_install(tmp_path, config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    assert main(["run", config, "--out", str(tmp_path), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'moeroute[cluster]'" in err and err.count("\n") == 1
    assert not (tmp_path / "tiny.csv").exists()


def test_bad_executor_options(tmp_path, config, capsys):
    assert main(["run", config, "--out", str(tmp_path), "--address", "auto"]) == 2
    assert "--address applies to --executor ray only" in capsys.readouterr().err
    assert main(["run", config, "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert type(make_executor("local", workers=1)) is Executor


def test_rows_from_a_worker_with_other_code_are_refused(tmp_path, config, monkeypatch):
    import moeroute.experiments.sweep.point as point

    class OtherCode(Executor):
        name = "fake"

        def run(self, tasks):
            for task in tasks:
                rows = point.compute_point(task)
                for row in rows:
                    row["code"] = "0123456789ab"
                yield task, rows

    with pytest.raises(MoeRouteError, match="runs other moeroute code"):
        run_sweep(load_config(config), tmp_path, progress=False, executor=OtherCode())


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc; Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_killed_driver_keeps_whole_points_and_its_workers_exit(tmp_path, scratch_routers):
    """SIGKILL a `moeroute run --workers 2` mid-sweep: whole points only on disk, the workers leave with the driver,
    and a serial re-run finishes the rest."""
    import os
    import signal
    import subprocess
    import time

    from moeroute.experiments.sweep.store import read_results

    plugin = tmp_path / "slow_router.py"
    plugin.write_text(textwrap.dedent('''
        import time
        from moeroute.routers.gshard import GShardOptions, gshard
        from moeroute.routers.registry import register_router

        @register_router("test_dawdler", GShardOptions, "gshard after a nap")
        def dawdler(x, opts):
            time.sleep(0.05)
            return gshard(x, opts)
    '''))
    cfg = tmp_path / "kill.toml"
    cfg.write_text('name = "kill"\nrouters = ["gshard", "test_dawdler"]\nworkloads = ["gauss"]\ntokens = 32\n'
                   'groups = 1\nexperts = 4\nseeds = 40\nrepeats = 1\n')
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "moeroute", "--plugin", str(plugin), "run", str(cfg), "--out", str(out),
           "--no-progress", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if len(read_results(out / "kill.csv")) >= 6:
                workers = _children(proc.pid)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-500:]
    rows = read_results(out / "kill.csv")
    assert 6 <= len(rows) < 80 and len(rows) % 2 == 0  # whole points only
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    for pid in alive:  # do not leave them behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert len(workers) >= 2 and not alive
    from moeroute.core.plugins import load_plugin_file
    from moeroute.routers import router_names

    if "test_dawdler" not in router_names():
        load_plugin_file(str(plugin))
    summary = run_sweep(load_config(str(cfg)), out, progress=False)
    assert summary.rows_skipped == len(rows) and summary.rows_written == 80 - len(rows)
