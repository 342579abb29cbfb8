"""``moeroute capture``: record every MoE layer's router logits of a transformers causal LM over a text."""

from __future__ import annotations

import argparse
from pathlib import Path

from moeroute.core.errors import MoeRouteError

NAME = "capture"
HELP = "run a transformers MoE causal LM over a text and save each layer's router logits (offline)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR_OR_CONFIG",
                   help="a local model directory, or a config JSON (random init, no download)")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text file to run the model over")
    p.add_argument("--out", required=True, metavar="PATH", help="output .safetensors or .pt (keys layer0, layer1, ...)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per forward pass (default 512)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens of the text")
    p.add_argument("--seed", type=int, default=0, help="seed of a random init (config-only models; default 0)")


def run(args: argparse.Namespace) -> int:
    from moeroute.capture.hf import capture_router_logits, load_model, routing_config, save_tensors, tokenize
    from moeroute.core.atomic import atomic_write_text
    from moeroute.workloads.settings import RoutingSettings, settings_metadata, sidecar_path

    if args.max_length < 1:
        raise MoeRouteError(f"--max-length must be >= 1, got {args.max_length}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise MoeRouteError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    text_path = Path(args.text)
    if not text_path.is_file():
        raise MoeRouteError(f"text file not found: {args.text}")
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MoeRouteError(f"{args.text}: cannot read as UTF-8 text ({type(exc).__name__})") from None
    net, tokenizer = load_model(args.model, args.seed)
    ids = tokenize(text, tokenizer, int(net.config.vocab_size))
    if args.max_tokens is not None:
        ids = ids[: args.max_tokens]
    limit = getattr(net.config, "max_position_embeddings", None)
    max_length = min(args.max_length, limit) if isinstance(limit, int) and limit > 0 else args.max_length
    layers = capture_router_logits(net, ids, max_length)
    metadata = {
        "model": str(args.model),
        "model_type": str(getattr(net.config, "model_type", "")),
        "text": str(args.text),
        "tokens": str(ids.numel()),
        "tokenizer": "model" if tokenizer is not None else "utf8-bytes",
        "seed": str(args.seed),
    }
    settings = RoutingSettings(**routing_config(net.config))
    safetensors = args.out.lower().endswith(".safetensors")
    if safetensors:
        metadata.update(settings_metadata(settings))
    save_tensors(layers, args.out, metadata)
    if not safetensors:  # a .pt file holds tensors only: the settings go beside it
        atomic_write_text(sidecar_path(args.out), settings.to_json() + "\n")
    first = next(iter(layers.values()))
    print(f"wrote {args.out}: {len(layers)} layer(s) ({', '.join(layers)}), {first.shape[0]} tokens x {first.shape[1]} experts; "
          f"routing: {settings.describe()}")
    return 0
