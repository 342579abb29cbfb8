"""The moeroute command: listing, eval output formats, and one-line errors with exit status 2."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from moeroute.core.metrics import TABLE_KEYS
from moeroute.experiments.cli import main
from moeroute.routers import registry


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_routers_lists_every_router(capsys):
    code, out, _ = run(capsys, "routers", "--plain")
    assert code == 0
    for name in ("gshard", "dropless", "exact"):
        assert any(line.startswith(f"{name}: ") for line in out.splitlines())


def test_eval_synthetic_json_has_the_documented_keys(capsys):
    code, out, _ = run(capsys, "eval", "--synthetic", "skew", "--tokens", "64", "--experts", "8", "--groups", "2",
                       "--router", "gshard", "--router", "exact", "--format", "json", "--repeats", "1")
    assert code == 0
    rows = json.loads(out)
    assert [r["router"] for r in rows] == ["gshard", "exact"]
    assert all(list(r) == list(TABLE_KEYS) for r in rows)
    assert rows[1]["gap"] == 0.0 and rows[0]["capacity"] == 16 and rows[0]["groups"] == 2


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_eval_reads_every_file_type(tmp_path, capsys, suffix):
    logits = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"l{suffix}"
    if suffix == ".pt":
        torch.save({"layer0": logits, "layer1": logits * 2}, path)
        extra = ["--key", "layer1"]
    elif suffix == ".npy":
        np.save(path, logits.numpy())
        extra = []
    else:
        save_file({"layer0": logits}, str(path))
        extra = []
    code, out, _ = run(capsys, "eval", "--logits", str(path), *extra, "--router", "gshard", "--k", "2",
                       "--cf", "1.0", "--group-size", "16", "--format", "csv", "--repeats", "1")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["groups"] == "2" and rows[0]["tokens"] == "16" and rows[0]["capacity"] == "8"


def test_eval_table_output(capsys):
    code, out, _ = run(capsys, "eval", "--synthetic", "gauss", "--tokens", "32", "--experts", "4", "--repeats", "1")
    assert code == 0
    assert "gshard" in out and "exact" in out and "slot drop" in out


def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    rank1 = tmp_path / "rank1.npy"
    np.save(rank1, np.zeros(8, dtype=np.float32))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    multi = tmp_path / "multi.pt"
    torch.save({"a": torch.zeros(4, 2), "b": torch.zeros(4, 2)}, multi)
    odd = tmp_path / "odd.txt"
    odd.write_text("1,2")
    return corrupt, rank1, nan, multi, odd


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    corrupt, rank1, nan, multi, odd = bad_files(tmp_path)
    syn = ["eval", "--synthetic", "gauss", "--tokens", "16", "--experts", "4"]
    cases = [
        (["eval", "--logits", str(tmp_path / "missing.pt")], "not found"),
        (["eval", "--logits", str(corrupt)], "not a readable PyTorch tensor file"),
        (["eval", "--logits", str(odd)], "unsupported file type"),
        (["eval", "--logits", str(multi)], "several tensors"),
        (["eval", "--logits", str(multi), "--key", "zzz"], "no tensor named 'zzz'"),
        (["eval", "--logits", str(rank1)], "shape"),
        (["eval", "--logits", str(nan)], "NaN"),
        (syn + ["--k", "5"], "larger than the number of experts"),
        (syn + ["--k", "0"], "k must be"),
        (syn + ["--cf", "0"], "capacity factor"),
        (syn + ["--cf", "abc"], "capacity factor"),
        (syn + ["--group-size", "5", "--router", "gshard"], "already grouped"),
        (syn + ["--router", "nosuch"], "unknown router 'nosuch'"),
        (syn + ["--router", "gshard:colour=red"], "unknown option 'colour'"),
        (syn + ["--router", "gshard:drop_policy=random"], "must be one of"),
        (syn + ["--router", "gshard:weights=nosuch"], "unknown weight operator"),
        (["eval", "--synthetic", "nosuch"], "unknown workload"),
        (["eval", "--synthetic", "gauss", "--tokens", "0"], "tokens must be"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, err)
        assert "Traceback" not in err


def test_flat_logits_not_divisible_by_group_size(tmp_path, capsys):
    """Tokens that fill no whole group are left out with a note (a capture rarely has a multiple of T tokens)."""
    path = tmp_path / "l.npy"
    np.save(path, np.zeros((10, 4), dtype=np.float32))
    code, out, err = run(capsys, "eval", "--logits", str(path), "--group-size", "3", "--format", "json")
    assert code == 0 and "the last 1 of 10 tokens fill no group of 3" in err
    assert {row["groups"] for row in json.loads(out)} == {3}


def test_plugin_file_registers_a_router(tmp_path, capsys, scratch_routers):
    plugin = tmp_path / "my_router.py"
    plugin.write_text(
        "import torch\n"
        "from moeroute.routers import register_router, NoOptions\n"
        "@register_router('first_k', NoOptions, 'experts 0..k-1 for everyone', 'a test', capacity='ignored')\n"
        "def first_k(x, opts):\n"
        "    return torch.arange(x.k).expand(x.groups, x.tokens, x.k).clone()\n"
    )
    code, out, _ = run(capsys, "--plugin", str(plugin), "eval", "--synthetic", "gauss", "--tokens", "8",
                       "--experts", "4", "--router", "first_k", "--format", "json", "--cf", "1")
    assert code == 0
    assert json.loads(out)[0]["router"] == "first_k"
    assert "first_k" in registry.router_names()


def test_routers_listing_is_cached_per_code_fingerprint(tmp_path, capsys, monkeypatch):
    from moeroute.experiments.commands import routers as routers_command

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert run(capsys, "routers", "--plain")[0] == 0
    (cache,) = (tmp_path / "moeroute").glob("routers-*.json")
    assert cache.name == f"routers-{routers_command.code_fingerprint()}.json"
    cache.write_text(json.dumps([["from_the_cache", "a cached row", "", ""]]))
    assert "from_the_cache" in run(capsys, "routers", "--plain")[1]
    monkeypatch.setattr(routers_command, "code_fingerprint", lambda: "other-code")  # the code changed
    out = run(capsys, "routers", "--plain")[1]
    assert "from_the_cache" not in out and "gshard" in out


def test_train_on_cuda_without_cuda_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "ablation.toml")
    code, _, err = run(capsys, "train", config, "--quick", "--device", "cuda", "--output", str(tmp_path))
    assert code == 2 and err.strip().count("\n") == 0 and "CUDA is not available" in err


def test_eval_takes_score_options_and_the_ep_view(capsys):
    code, out, _ = run(capsys, "eval", "--synthetic", "force_biased:std=1", "--tokens", "64", "--experts", "8",
                       "--groups", "2", "--router", "gshard:score=sigmoid,groups=4,group_topk=2,scaling=2.5",
                       "--router", "qb:iters=2", "--router", "top_p:p=0.5", "--ep-ranks", "4", "--format", "json",
                       "--repeats", "1")
    assert code == 0
    rows = json.loads(out)
    assert [r["score"] for r in rows] == ["sigmoid", "softmax", "softmax"]
    assert all(r["ep_ranks"] == 4 and len(r["ep_rank_tokens"]) == 4 and r["max_vio"] >= 0 for r in rows)
    code, out, _ = run(capsys, "eval", "--synthetic", "gauss", "--tokens", "64", "--experts", "8", "--router", "qb",
                       "--ep-ranks", "4", "--repeats", "1")
    assert code == 0 and "ep max over mean" in out and "max vio" in out


def test_eval_refuses_a_score_for_a_router_without_one(capsys):
    code, _, err = run(capsys, "eval", "--synthetic", "gauss", "--tokens", "16", "--experts", "4",
                       "--router", "sinkhorn:score=sigmoid")
    assert code == 2 and "takes no score=" in err and len(err.strip().splitlines()) == 1
