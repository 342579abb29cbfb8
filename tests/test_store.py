"""The results store at scale: an index instead of the rows, compaction that streams lines, later rows replacing
earlier ones, columns that grow during a run, and a killed run's segments folded in by the next."""

from __future__ import annotations

import os

from moeroute.experiments.sweep.store import Done, ResultStore, parts_dir, read_results, row_checksum


def test_index_holds_status_not_rows(tmp_path):
    path = tmp_path / "s.csv"
    with ResultStore(path, ["key", "x", "error", "code"]) as store:
        store.add([{"key": "a", "x": 1, "error": "", "code": "c1"}, {"key": "b", "x": 2, "error": "boom", "code": "c1"}])
    store = ResultStore(path, ["key", "x", "error", "code"])
    assert store.rows == {"a": Done(False, "c1"), "b": Done(True, "c1")}
    store.close()


def test_compaction_keeps_the_last_row_of_a_key_and_grows_columns(tmp_path):
    path = tmp_path / "s.csv"
    with ResultStore(path, ["key", "x"]) as store:
        store.add([{"key": str(i), "x": i} for i in range(5)])
    table_before = path.read_bytes()
    with ResultStore(path, ["key", "x"]) as store:
        store.add([{"key": "2", "x": 20}])
        store.add([{"key": "2", "x": 200, "worker": "w1"}])  # a new column half-way through a run
        store.add([{"key": "9", "x": 9}])
    rows = {r["key"]: r for r in read_results(path)}
    assert sorted(rows) == ["0", "1", "2", "3", "4", "9"]
    assert rows["2"]["x"] == "200" and rows["2"]["worker"] == "w1" and rows["0"]["worker"] == ""
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["key", "x", "worker", "row_sha"]
    for row in rows.values():  # old rows were re-sealed under the new header
        assert row["row_sha"] == row_checksum(row, header)
    assert not parts_dir(path).exists() and table_before != path.read_bytes()


def test_unchanged_rows_are_copied_byte_for_byte(tmp_path):
    path = tmp_path / "s.csv"
    with ResultStore(path, ["key", "x"]) as store:
        store.add([{"key": str(i), "x": f"{i / 7:.17g}"} for i in range(100)])
    lines = path.read_bytes().splitlines()
    with ResultStore(path, ["key", "x"]) as store:
        store.add([{"key": "new", "x": 1}])
    assert path.read_bytes().splitlines()[: len(lines)] == lines


def test_segments_of_a_killed_run_are_folded_in_at_the_next_open(tmp_path):
    path = tmp_path / "s.csv"
    with ResultStore(path, ["key", "x"]) as store:
        store.add([{"key": "a", "x": 1}])
    store = ResultStore(path, ["key", "x"])
    store.add([{"key": "a", "x": 2}])
    store.add([{"key": "b", "x": 3}])
    store._lock_fh.close()  # a SIGKILL: no compaction, the lock released by the kernel
    store._lock_fh = None
    os.unlink(path.with_name("s.lock"))
    assert {r["key"]: r["x"] for r in read_results(path)} == {"a": "2", "b": "3"}  # readers see the segments
    with ResultStore(path, ["key", "x"]) as again:
        assert set(again.rows) == {"a", "b"} and not parts_dir(path).exists()  # compacted on open
    assert {r["key"]: r["x"] for r in read_results(path)} == {"a": "2", "b": "3"}
