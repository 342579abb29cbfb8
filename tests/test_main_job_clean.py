"""The main job writes only where git ignores: run a small sweep and the report with their default output folders
inside a fresh git repository that has the project's .gitignore, and check that git sees nothing new."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from moeroute.experiments.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_and_report_leave_the_tree_clean(tmp_path, monkeypatch, capsys):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.toml").write_text(
        'name = "default"\nrouters = ["gshard", "exact"]\nworkloads = ["skew"]\ntokens = 64\ngroups = 1\n'
        "experts = 8\nrepeats = 1\n"
    )
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "configs/tiny.toml", "--no-progress"]) == 0
    assert main(["report"]) == 0
    assert (tmp_path / "results" / "report" / "REPORT.md").is_file()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    assert status == ""
