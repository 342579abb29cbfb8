"""`moeroute capture` on tiny randomly initialised MoE models built from config JSONs (offline, seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.cli import main
from moeroute.workloads import captured_logits
from moeroute.workloads.files import read_tensors

pytest.importorskip("transformers")

BASE = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
CONFIGS = {
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, **BASE),
    "qwen2_moe": dict(model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      shared_expert_intermediate_size=16, **BASE),
    "olmoe": dict(model_type="olmoe", num_experts=4, num_experts_per_tok=2, **BASE),
    "qwen3_moe": dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      norm_topk_prob=True, **BASE),
    "deepseek_v3": dict(model_type="deepseek_v3", n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
                        moe_intermediate_size=16, first_k_dense_replace=1, n_shared_experts=1, q_lora_rank=None,
                        kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                        routed_scaling_factor=2.5, **{**BASE, "num_hidden_layers": 3, "num_key_value_heads": 4}),
}
SETTINGS = {  # what each family's router does, as the capture must record it
    "mixtral": dict(k=2, score="softmax", renormalize=True),
    "qwen2_moe": dict(k=2, score="softmax", renormalize=False),
    "qwen3_moe": dict(k=2, score="softmax", renormalize=True),
    "olmoe": dict(k=2, score="softmax", renormalize=False),
    "deepseek_v3": dict(k=3, score="sigmoid", groups=4, group_topk=2, renormalize=True, routed_scaling=2.5),
}
TEXT = "The quick brown fox jumps over the lazy dog; the dog sleeps on. " * 10


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def config_file(tmp_path: Path, name: str, **changes) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**CONFIGS[name], **changes}))
    return path


def test_mixtral_capture_matches_output_router_logits(tmp_path, text):
    out = tmp_path / "cap.safetensors"
    cfg = config_file(tmp_path, "mixtral")
    assert main(["capture", "--model", str(cfg), "--text", str(text), "--out", str(out), "--max-length", "200"]) == 0
    layers = read_tensors(str(out))
    n = len(TEXT.encode())
    assert set(layers) == {"layer0", "layer1"}
    assert all(t.shape == (n, 4) and t.dtype == torch.float32 and torch.isfinite(t).all() for t in layers.values())
    assert not torch.equal(layers["layer0"], layers["layer1"])

    # the hooks see exactly what the model reports with output_router_logits=True (same seed -> same weights)
    from moeroute.capture.hf import load_model, tokenize

    net, tok = load_model(str(cfg), seed=0)
    ids = tokenize(TEXT, tok, 256)[:200]
    with torch.no_grad():
        reported = net(input_ids=ids[None], output_router_logits=True).router_logits
    assert torch.allclose(reported[1].float(), layers["layer1"][:200], atol=1e-5)

    # and the file is a workload
    x = captured_logits(f"captured:{out}:layer0", groups=2, tokens=128, seed=0)
    assert x.shape == (2, 128, 4)


@pytest.mark.parametrize("name", ["qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3"])
def test_other_moe_families(tmp_path, text, name):
    out = tmp_path / "cap.pt"
    assert main(["capture", "--model", str(config_file(tmp_path, name)), "--text", str(text), "--out", str(out),
                 "--max-tokens", "100"]) == 0
    layers = read_tensors(str(out))
    experts = 8 if name == "deepseek_v3" else 4
    moe_layers = {"layer1", "layer2"} if name == "deepseek_v3" else {"layer0", "layer1"}  # V3's layer 0 is dense
    assert set(layers) == moe_layers and all(t.shape == (100, experts) for t in layers.values())


@pytest.mark.parametrize("name, suffix", [(n, ".safetensors" if i % 2 else ".pt") for i, n in enumerate(CONFIGS)])
def test_capture_records_the_routing_settings(tmp_path, text, name, suffix):
    from moeroute.workloads.settings import RoutingSettings, read_settings

    out = tmp_path / f"cap{suffix}"
    assert main(["capture", "--model", str(config_file(tmp_path, name)), "--text", str(text), "--out", str(out),
                 "--max-tokens", "64"]) == 0
    metadata = {}
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(out), "pt") as fh:
            metadata = fh.metadata()
    else:
        assert (tmp_path / "cap.pt.routing.json").is_file()
    recorded = read_settings(str(out), metadata)
    want = {"routed_scaling": 1.0, **SETTINGS[name], "model_type": name}
    assert recorded == RoutingSettings(**want)


def test_recorded_settings_are_the_defaults_of_eval_and_sweeps(tmp_path, text, capsys):
    out = tmp_path / "v3.safetensors"
    assert main(["capture", "--model", str(config_file(tmp_path, "deepseek_v3")), "--text", str(text), "--out",
                 str(out), "--max-tokens", "128"]) == 0
    capsys.readouterr()
    # eval: k = 3 from the file; renormalize=true passed to the routers (score=/groups= once routers take them)
    assert main(["eval", "--logits", str(out), "--key", "layer1", "--router", "gshard", "--format", "json"]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out)[0]
    assert row["k"] == 3 and row["router"].startswith("gshard:") and "renormalize=true" in row["router"]
    assert "k=3, score=sigmoid, groups=4, group_topk=2" in captured.err
    # explicit flags and options win
    assert main(["eval", "--logits", str(out), "--key", "layer1", "--k", "2", "--router", "gshard:renormalize=false",
                 "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    # an explicit option wins; the recorded score function and groups still apply (gshard takes them)
    assert row["k"] == 2 and row["router"] == "gshard:group_topk=2,groups=4,renormalize=false,score=sigmoid"
    # sweeps: every layer, the file's k unless the config sets one, the settings in the resolved router
    from moeroute.experiments.sweep.config import load_config
    from moeroute.experiments.sweep.run import run_sweep

    cfg = tmp_path / "v3.toml"
    cfg.write_text(f'routers = ["gshard", "dropless"]\nworkloads = ["captured:{out}:*"]\ntokens = 64\ngroups = 2\n')
    config = load_config(str(cfg))
    assert {p.k for _, p, _ in config.points} == {3} and len(config.points) == 2
    run_sweep(config, tmp_path / "res", progress=False)
    from moeroute.experiments.sweep.store import read_results

    rows = read_results(tmp_path / "res" / "v3.csv")
    assert len(rows) == 4 and all("renormalize=true" in r["router_resolved"] for r in rows)
    assert {r["router"] for r in rows} == {"gshard", "dropless"}  # as the config wrote them
    cfg.write_text(cfg.read_text() + "k = 2\n")
    assert {p.k for _, p, _ in load_config(str(cfg)).points} == {2}


def test_model_directory_with_saved_weights(tmp_path, text):
    from moeroute.capture.hf import load_model

    net, _ = load_model(str(config_file(tmp_path, "mixtral")), seed=3)
    net.save_pretrained(tmp_path / "model")
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert main(["capture", "--model", str(tmp_path / "model"), "--text", str(text), "--out", str(a), "--seed", "9"]) == 0
    assert main(["capture", "--model", str(config_file(tmp_path, "mixtral")), "--text", str(text), "--out", str(b),
                 "--seed", "3"]) == 0
    # the directory's saved weights are used (its --seed is irrelevant) and equal the seed-3 random init
    assert torch.allclose(read_tensors(str(a))["layer0"], read_tensors(str(b))["layer0"], atol=1e-5)


def test_capture_errors(tmp_path, text, capsys):
    dense = tmp_path / "llama.json"
    dense.write_text(json.dumps({**BASE, "model_type": "llama"}))
    assert main(["capture", "--model", str(dense), "--text", str(text), "--out", str(tmp_path / "x.pt")]) == 2
    assert "not an MoE model" in capsys.readouterr().err
    cfg = str(config_file(tmp_path, "mixtral"))
    assert main(["capture", "--model", cfg, "--text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "text file not found" in capsys.readouterr().err
    assert main(["capture", "--model", cfg, "--text", str(text), "--out", str(tmp_path / "x.npy")]) == 2
    assert ".safetensors or .pt" in capsys.readouterr().err
    assert main(["capture", "--model", str(tmp_path / "missing"), "--text", str(text), "--out", str(tmp_path / "x.pt")]) == 2
    assert "model not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 8}')
    assert main(["capture", "--model", str(bad), "--text", str(text), "--out", str(tmp_path / "x.pt")]) == 2
    assert "model_type" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_without_transformers_the_error_says_how_to_install(monkeypatch):
    from moeroute.capture import hf as capture

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(MoeRouteError, match=r"pip install 'moeroute\[capture\]'"):
        capture.load_model(".")
