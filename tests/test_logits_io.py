"""Loading logits files (.pt, .npy, .safetensors) and the captured workload's error paths: every malformed file
is a one-line MoeRouteError, never a torch traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from moeroute.core.errors import MoeRouteError
from moeroute.workloads import captured_logits, captured_tokens, check_workload
from moeroute.workloads.files import load_logits, read_tensors


def test_round_trip_each_format(tmp_path):
    x = torch.randn(40, 8)
    torch.save(x, tmp_path / "a.pt")
    np.save(tmp_path / "a.npy", x.numpy())
    save_file({"layer0": x, "layer1": x + 1}, str(tmp_path / "a.safetensors"))
    assert torch.equal(load_logits(str(tmp_path / "a.pt")), x)
    assert torch.equal(load_logits(str(tmp_path / "a.npy")), x)
    assert torch.equal(load_logits(str(tmp_path / "a.safetensors"), "layer1"), x + 1)
    assert set(read_tensors(str(tmp_path / "a.safetensors"))) == {"layer0", "layer1"}


def test_missing_file(tmp_path):
    with pytest.raises(MoeRouteError, match="not found"):
        captured_tokens(str(tmp_path / "nope.pt"))
    with pytest.raises(MoeRouteError, match="not found"):
        check_workload(f"captured:{tmp_path / 'nope.pt'}")


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x00\x01 this is not a tensor file \xff" * 3)
    with pytest.raises(MoeRouteError, match=r"not a readable (PyTorch tensor|NumPy \.npy|safetensors) file \(damaged"):
        captured_tokens(str(path))


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_empty_and_random_files_get_one_line(tmp_path, suffix, capsys):
    import os

    from moeroute.experiments.cli import main

    empty, noise = tmp_path / f"empty{suffix}", tmp_path / f"noise{suffix}"
    empty.write_bytes(b"")
    noise.write_bytes(os.urandom(300))
    for path, words in ((empty, "empty file (0 bytes)"), (noise, "not a readable")):
        assert main(["eval", "--logits", str(path)]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


def test_empty_logits_tensor(tmp_path, capsys):
    from moeroute.experiments.cli import main

    torch.save(torch.zeros(0, 8), tmp_path / "zero.pt")
    assert main(["eval", "--logits", str(tmp_path / "zero.pt")]) == 2
    assert "logits are empty: shape (0, 8)" in capsys.readouterr().err


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("1 2 3")
    with pytest.raises(MoeRouteError, match="unsupported file type"):
        captured_tokens(str(path))


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5)])
def test_wrong_rank(tmp_path, shape):
    path = tmp_path / "r.pt"
    torch.save(torch.randn(*shape), path)
    with pytest.raises(MoeRouteError, match=r"shape \[N, E\] or \[G, T, E\]"):
        captured_tokens(str(path))


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_non_finite(tmp_path, bad, word):
    x = torch.randn(20, 4)
    x[3, 1] = bad
    path = tmp_path / "n.pt"
    torch.save(x, path)
    with pytest.raises(MoeRouteError, match=word):
        captured_tokens(str(path))


def test_integer_logits_refused(tmp_path):
    path = tmp_path / "i.pt"
    torch.save(torch.ones(10, 4, dtype=torch.long), path)
    with pytest.raises(MoeRouteError, match="floating point"):
        captured_tokens(str(path))


def test_unknown_key_and_dict_without_key(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"layer0": torch.randn(8, 4), "layer1": torch.randn(8, 4)}, str(path))
    with pytest.raises(MoeRouteError, match="no tensor named 'layer7'"):
        captured_tokens(str(path), "layer7")
    with pytest.raises(MoeRouteError, match="holds several tensors"):
        captured_tokens(str(path))
    with pytest.raises(MoeRouteError, match="no tensor named"):
        check_workload(f"captured:{path}:layer9")


def test_key_on_a_single_tensor_file(tmp_path):
    path = tmp_path / "s.pt"
    torch.save(torch.randn(8, 4), path)
    with pytest.raises(MoeRouteError, match="single tensor"):
        captured_tokens(str(path), "layer0")


def test_not_a_tensor(tmp_path):
    path = tmp_path / "o.pt"
    torch.save({"a": [1, 2, 3]}, path)
    with pytest.raises(MoeRouteError):
        captured_tokens(str(path))


def test_too_few_tokens_for_the_groups(tmp_path):
    path = tmp_path / "few.pt"
    torch.save(torch.randn(250, 4), path)
    assert captured_logits(f"captured:{path}", 2, 100, 0).shape == (2, 100, 4)
    with pytest.raises(MoeRouteError, match="too few for 3 group"):
        captured_logits(f"captured:{path}", 3, 100, 0)


def test_malformed_spec():
    with pytest.raises(MoeRouteError, match="captured:PATH"):
        check_workload("captured:")
