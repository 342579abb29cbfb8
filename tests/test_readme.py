"""README's Python blocks run as written (the documented paths must be real), and its plugin example works as a
``--plugin`` file from the command line."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from moeroute.experiments.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, scratch_routers, monkeypatch):
    # A real module in sys.modules, as a user's script would be (dataclasses look their module up there).
    module = types.ModuleType(f"readme_block_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), module.__dict__)


def test_readme_plugin_from_the_command_line(tmp_path, scratch_routers, capsys):
    (plugin,) = [b for b in BLOCKS if "@register_router" in b]
    path = tmp_path / "my_router.py"
    path.write_text(plugin)
    code = main(["--plugin", str(path), "eval", "--synthetic", "skew", "--tokens", "256", "--router", "noisy_topk",
                 "--router", "gshard", "--format", "csv"])
    out = capsys.readouterr().out
    assert code == 0 and "noisy_topk" in out and "gshard" in out
