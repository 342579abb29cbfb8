"""The formats the field records router logits in, each with a small fixture written here: Hugging Face
``output_router_logits`` (a tuple or list of per-layer tensors), nested dicts chosen by a key path, Megatron-LM's
router trace (JSONL per rank plus bfloat16 logits sidecars), large files read lazily, ``captured:PATH:*``; and
every bad file is one line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.cli import main
from moeroute.experiments.sweep.config import load_config
from moeroute.workloads import captured_logits, captured_shape, expand_captured, workload_logits
from moeroute.workloads.files import load_logits, logit_keys, open_logits
from moeroute.workloads.megatron import megatron_routings


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- Hugging Face output_router_logits and nested dicts -------------------------------------------------------


@pytest.mark.parametrize("container", [tuple, list])
def test_hf_output_router_logits_by_index(tmp_path, capsys, container):
    layers = [torch.randn(64, 8) + i for i in range(3)]
    path = tmp_path / "router_logits.pt"
    torch.save(container(layers), path)  # what torch.save(model(..., output_router_logits=True).router_logits) writes
    assert logit_keys(str(path)) == ["0", "1", "2"]
    assert torch.equal(load_logits(str(path), "2"), layers[2])
    x = captured_logits(f"captured:{path}:1", groups=2, tokens=32, seed=0)
    assert torch.equal(x.reshape(-1, 8), layers[1])
    code, out, _ = run(capsys, "eval", "--logits", str(path), "--key", "1", "--router", "gshard", "--format", "json")
    assert code == 0 and json.loads(out)[0]["tokens"] == 64


def test_nested_dict_by_key_path(tmp_path, capsys):
    inner = torch.randn(40, 4)
    path = tmp_path / "nested.pt"
    torch.save({"logits": {"layer0": inner * 0, "layer1": inner}, "router_logits": (inner + 1,), "step": 7}, path)
    assert torch.equal(load_logits(str(path), "logits.layer1"), inner)
    assert torch.equal(load_logits(str(path), "router_logits.0"), inner + 1)
    assert logit_keys(str(path)) == ["logits.layer0", "logits.layer1", "router_logits.0"]
    code, out, _ = run(capsys, "eval", "--logits", str(path), "--key", "logits.layer1", "--format", "json")
    assert code == 0 and json.loads(out)[0]["experts"] == 4
    code, _, err = run(capsys, "eval", "--logits", str(path), "--key", "logits.layer9")
    assert code == 2 and "no tensor named 'logits.layer9'" in err and "logits.layer1" in err and err.count("\n") == 1


# ---- lazy reading of large files ------------------------------------------------------------------------------


def test_safetensors_windows_are_read_without_loading_the_file(tmp_path, monkeypatch):
    data = {f"layer{i}": torch.randn(1000, 16) for i in range(3)}
    path = tmp_path / "big.safetensors"
    save_file(data, str(path))
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("the whole file was loaded")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    spec = f"captured:{path}:layer2"
    assert captured_shape(spec) == (1000, 16)
    x = captured_logits(spec, groups=3, tokens=100, seed=5)
    windows = data["layer2"].reshape(10, 100, 16)
    assert all(any(torch.equal(g, w) for w in windows) for g in x)
    source = open_logits(str(path), "layer1")
    assert torch.equal(source.rows(123, 456), data["layer1"][123:456])


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_grouped_files_read_by_rows_in_every_format(tmp_path, suffix):
    data = torch.randn(5, 20, 4)  # [G', T', E]: rows are read across the stored groups
    path = tmp_path / f"g{suffix}"
    if suffix == ".pt":
        torch.save(data, path)
    elif suffix == ".npy":
        np.save(path, data.numpy())
    else:
        save_file({"x": data}, str(path))
    source = open_logits(str(path))
    assert (source.tokens, source.experts, source.group_tokens) == (100, 4, 20)
    assert torch.equal(source.rows(15, 47), data.reshape(100, 4)[15:47])


def test_bfloat16_logits_are_read_as_float32(tmp_path):
    data = torch.randn(64, 8).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_file({"layer0": data}, str(path))
    x = captured_logits(f"captured:{path}:layer0", 2, 32, 0)
    assert x.dtype == torch.float32 and torch.equal(x.reshape(-1, 8), data.float())


def test_nan_in_a_window_is_refused_when_read(tmp_path):
    data = torch.randn(200, 4)
    data[150, 2] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({"layer0": data}, str(path))
    spec = f"captured:{path}:layer0"
    assert captured_shape(spec) == (200, 4)  # the header is fine
    assert torch.isfinite(open_logits(str(path), "layer0").rows(0, 100)).all()  # rows before the NaN read fine
    with pytest.raises(MoeRouteError, match="NaN"):
        captured_logits(spec, 2, 100, seed=0)


# ---- sweeps: every layer, leftover tokens, max groups ---------------------------------------------------------


def test_star_expands_to_every_layer_and_leftovers_are_noted(tmp_path):
    path = tmp_path / "cap.safetensors"
    save_file({"layer0": torch.randn(250, 8), "layer1": torch.randn(250, 8), "layer10": torch.randn(250, 8),
               "layer1.bias": torch.zeros(8)}, str(path))  # a 1-D tensor is not a layer of logits
    assert expand_captured(f"captured:{path}:*") == [f"captured:{path}:{k}" for k in ("layer0", "layer1", "layer10")]
    cfg_path = tmp_path / "all.toml"
    cfg_path.write_text(textwrap.dedent(f"""
        routers = ["gshard"]
        workloads = ["captured:{path}:*", "gauss"]
        tokens = 100
        groups = 2
        experts = 4
    """))
    cfg = load_config(str(cfg_path))
    assert [p.workload.split(":")[-1] for _, p, _ in cfg.points] == ["layer0", "layer1", "layer10", "gauss"]
    assert any("the last 50 of its 250 tokens fill no group of 100" in n for n in cfg.notes)
    assert workload_logits(cfg.points[2][1].workload, 2, 100, 8, 0).shape == (2, 100, 8)


def test_eval_max_groups_reads_the_seeded_groups(tmp_path, capsys):
    data = torch.randn(1000, 8)
    path = tmp_path / "l.safetensors"
    save_file({"layer0": data}, str(path))
    code, out, err = run(capsys, "eval", "--logits", str(path), "--group-size", "100", "--max-groups", "3",
                         "--seed", "4", "--router", "gshard", "--format", "json")
    assert code == 0 and json.loads(out)[0]["groups"] == 3 and "3 of 10 groups of 100, drawn by seed 4" in err
    code, _, err = run(capsys, "eval", "--logits", str(path), "--max-groups", "3")
    assert code == 2 and "--max-groups needs --group-size" in err


# ---- Megatron-LM router trace ---------------------------------------------------------------------------------


def write_megatron_trace(folder: Path, logits: bool = True, experts: int = 8, topk: int = 2) -> dict:
    """A trace as Megatron's RouterTracer writes it: two ranks, two steps, layers 1 and 3 plus one MTP layer."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    expected: dict = {"ids": {}, "logits": {}}
    for rank in (0, 1):
        offset, sidecar, lines = 0, bytearray(), []
        for step in (0, 1):
            for block, layer, mtp in (("decoder", 1, None), ("decoder", 3, None), ("mtp", 1, 0)):
                n = 5 + rank + step
                lg = torch.randn(n, experts, generator=gen).to(torch.bfloat16)
                top = lg.float().topk(topk, dim=1).indices
                record = {"step": step, "stage": "pre_dispatch", "block": block, "layer": layer, "rank": rank,
                          "num_tokens": n, "topk": topk, "top_indices": top.tolist()}
                if mtp is not None:
                    record["mtp_idx"] = mtp
                if logits:
                    raw = lg.view(torch.int16).numpy().tobytes()
                    record.update(logit_offset=offset, logit_bytes=len(raw), logit_shape=[n, experts])
                    sidecar += raw
                    offset += len(raw)
                lines.append(json.dumps(record))
                key = f"layer{layer}" if mtp is None else f"mtp{mtp}.layer{layer}"
                expected["ids"].setdefault(key, []).append(top)
                expected["logits"].setdefault(key, []).append(lg)
        (folder / f"router_trace_rank{rank}.jsonl").write_text("\n".join(lines) + "\n")
        if logits:
            (folder / f"logits_rank{rank}.bin").write_bytes(bytes(sidecar))
    return {kind: {k: torch.cat(v) for k, v in d.items()} for kind, d in expected.items()}


def test_megatron_trace_routings_and_logits(tmp_path, capsys):
    folder = tmp_path / "trace"
    expected = write_megatron_trace(folder)
    routings = megatron_routings(str(folder))
    assert sorted(routings) == ["layer1", "layer3", "mtp0.layer1"]
    for key, ids in expected["ids"].items():  # rank 0's records first, each rank in step order
        assert torch.equal(routings[key], ids)
    assert logit_keys(str(folder)) == ["layer1", "layer3", "mtp0.layer1"]
    source = open_logits(str(folder), "layer3")
    assert source.dtype == torch.bfloat16 and source.tokens == expected["logits"]["layer3"].shape[0]
    assert torch.equal(source.rows(3, 20), expected["logits"]["layer3"][3:20].float())  # across records and ranks
    x = captured_logits(f"captured:{folder}:layer1", groups=2, tokens=10, seed=0)
    assert x.shape == (2, 10, 8)
    one_rank = megatron_routings(str(folder / "router_trace_rank1.jsonl"))["layer1"]
    assert one_rank.shape[0] == 6 + 7
    code, out, _ = run(capsys, "eval", "--logits", str(folder), "--key", "layer3", "--format", "json")
    assert code == 0 and json.loads(out)[0]["experts"] == 8
    code, out, _ = run(capsys, "eval", "--routing", str(folder), "--layer", "3", "--experts", "8", "--format", "json")
    assert code == 0 and [r["layer"] for r in json.loads(out)] == ["layer3"]


def test_megatron_trace_without_logits_points_to_replay(tmp_path, capsys):
    folder = tmp_path / "trace"
    write_megatron_trace(folder, logits=False)
    code, _, err = run(capsys, "eval", "--logits", str(folder), "--key", "layer1")
    assert code == 2 and "records no logits" in err and "moeroute eval --routing" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "eval", "--routing", str(folder), "--experts", "8", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3


def _break(folder: Path, how: str) -> None:
    trace = folder / "router_trace_rank0.jsonl"
    lines = trace.read_text().splitlines()
    record = json.loads(lines[1])
    if how == "json":
        lines[1] = lines[1][:40]
    elif how == "fields":
        del record["top_indices"]
        lines[1] = json.dumps(record)
    elif how == "shape":
        record["num_tokens"] += 1
        lines[1] = json.dumps(record)
    elif how == "sidecar":
        (folder / "logits_rank0.bin").write_bytes(b"\0" * 10)
    trace.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("how, message", [
    ("json", "router_trace_rank0.jsonl:2: not a JSON record"),
    ("fields", "router_trace_rank0.jsonl:2: not a Megatron router trace record (missing top_indices)"),
    ("shape", "top_indices has shape (5, 2), the record says 6 tokens"),
    ("sidecar", "are not in"),
])
def test_damaged_megatron_traces_are_one_line(tmp_path, capsys, how, message):
    folder = tmp_path / f"trace_{how}"
    write_megatron_trace(folder)
    _break(folder, how)
    code, _, err = run(capsys, "eval", "--logits", str(folder), "--key", "layer1")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_folder_without_a_trace(tmp_path, capsys):
    code, _, err = run(capsys, "eval", "--routing", str(tmp_path))
    assert code == 2 and "no router_trace_rank*.jsonl files" in err and err.count("\n") == 1
